"""A text serial console read live: a bounded tail for error messages, and waits for marker strings.

QEMU itself writes every byte of the port to the run directory (the chardev's ``logfile``), so
nothing is lost even if vmtest dies; this reader only looks at the stream as it goes by.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable

__all__ = ["SerialConsole"]

_RECENT_BYTES = 64 * 1024
_MAX_LINE = 16 * 1024


class SerialConsole:
    """Reads one serial port; keeps the last lines and wakes waiters when a marker goes by."""

    def __init__(self, role: str, tail_lines: int = 200) -> None:
        self.role = role
        self.bytes_seen = 0
        self.closed = asyncio.Event()
        self._lines: deque[str] = deque(maxlen=tail_lines)
        self._partial = b""
        self._recent = b""
        self._waiters: list[tuple[bytes, asyncio.Future[None]]] = []
        self._line_listeners: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None

    async def attach(self, sock: socket.socket) -> None:
        """Start reading ``sock`` (our end of the serial port's socket pair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._writer = writer
        self._task = asyncio.create_task(self._read(reader), name=f"serial-{self.role}")

    def add_line_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener`` with every complete line from now on."""
        self._line_listeners.append(listener)

    def remove_line_listener(self, listener: Callable[[str], None]) -> None:
        """Stop calling ``listener``."""
        if listener in self._line_listeners:
            self._line_listeners.remove(listener)

    def marker(self, text: str, *, include_recent: bool = True) -> asyncio.Future[None]:
        """A future that completes when ``text`` goes by (or went by in the last 64 KiB, if asked)."""
        needle = text.encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if include_recent and needle in self._recent:
            future.set_result(None)
        else:
            self._waiters.append((needle, future))
        return future

    def tail(self, count: int = 40) -> list[str]:
        """The last ``count`` lines, with the partial line in progress if any."""
        lines = list(self._lines)
        if self._partial:
            lines.append(self._partial.decode(errors="replace"))
        return lines[-count:]

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                self._take(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def _take(self, chunk: bytes) -> None:
        self.bytes_seen += len(chunk)
        window = self._recent[-1024:] + chunk
        self._recent = (self._recent + chunk)[-_RECENT_BYTES:]
        for needle, future in list(self._waiters):
            if needle in window and not future.done():
                future.set_result(None)
                self._waiters.remove((needle, future))
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > _MAX_LINE:
            complete.append(self._partial)
            self._partial = b""
        for raw in complete:
            line = raw.rstrip(b"\r").decode(errors="replace")
            self._lines.append(line)
            for listener in self._line_listeners:
                listener(line)

    async def close(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            self._writer.close()
