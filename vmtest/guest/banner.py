"""Readiness by SSH banner: a forwarded port accepts TCP before the guest listens, so read the banner."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["read_ssh_banner", "wait_for_ssh_banner"]

_RETRY_PAUSE = 0.25


async def read_ssh_banner(host: str, port: int, timeout: float) -> str | None:
    """Connect once and return the server's ``SSH-`` identification line, or None if there is none yet."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    text = line.decode(errors="replace").strip()
    return text if text.startswith("SSH-") else None


async def wait_for_ssh_banner(host: str, port: int, *, attempt_timeout: float = 3.0) -> str:
    """Poll until an SSH server answers with its banner; the caller bounds the whole wait."""
    while True:
        banner = await read_ssh_banner(host, port, attempt_timeout)
        if banner is not None:
            return banner
        await asyncio.sleep(_RETRY_PAUSE)
