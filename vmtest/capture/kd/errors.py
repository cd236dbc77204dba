"""KD host errors.

Protocol trouble is never an exception (bad frames are dropped, stalls are events): only failing to
reach the target is.
"""

from __future__ import annotations

from vmtest.errors import InfraError

__all__ = ["KdConnectError", "KdError"]


class KdError(InfraError):
    """Base class of the KD host's errors."""


class KdConnectError(KdError):
    """The KD socket (a QEMU chardev: unix path or TCP) could not be opened."""
