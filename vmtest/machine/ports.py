"""Host ports for forwards: always on 127.0.0.1, chosen so that concurrent runs do not collide."""

from __future__ import annotations

import socket

__all__ = ["LOOPBACK", "free_loopback_port"]

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Another process may still take it before QEMU binds it; callers add the forward through QMP and
    retry with a new port when QEMU reports the port as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port
