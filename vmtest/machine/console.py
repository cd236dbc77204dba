"""A text serial console read live: a bounded tail for error messages, and waits for marker strings.

QEMU writes the port straight into a file in the run directory (a ``file`` chardev), so nothing is
lost even if vmtest dies, and the guest's output costs it one write per byte and nothing more: a
socket in between, with a reader to wake, made a printk-heavy driver ~1.7x slower under TCG. This
reader follows that file as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["SerialConsole"]

_RECENT_BYTES = 64 * 1024
_MAX_LINE = 16 * 1024
_READ_SIZE = 1024 * 1024
POLL_INTERVAL = 0.02
"""How long the reader sleeps at the end of the file before looking again (the added latency)."""
_DRAIN_WAIT = 2.0


class SerialConsole:
    """Reads one serial port; keeps the last lines and wakes waiters when a marker goes by."""

    def __init__(self, role: str, tail_lines: int = 200) -> None:
        self.role = role
        self.closed = asyncio.Event()
        self._lines: deque[str] = deque(maxlen=tail_lines)
        self._partial = b""
        self._recent = b""
        self._waiters: list[tuple[bytes, asyncio.Future[None]]] = []
        self._line_listeners: list[Callable[[str], None]] = []
        self._catching_up: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._writer_alive: Callable[[], bool] = lambda: False

    def follow(self, path: Path, writer_alive: Callable[[], bool], *, start: int = 0) -> None:
        """Start reading ``path`` at byte ``start``, until ``writer_alive()`` is false and it is read out."""
        file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the reading task)
        file.seek(start)
        self._writer_alive = writer_alive
        self._task = asyncio.create_task(self._follow(file), name=f"serial-{self.role}")

    async def caught_up(self) -> None:
        """Return once everything written to the port before this call is read and passed on as lines."""
        if self.closed.is_set():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._catching_up.append(future)
        await future

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

    async def _follow(self, file: BinaryIO) -> None:
        try:
            while True:
                if chunk := file.read(_READ_SIZE):
                    self._take(chunk)
                    await asyncio.sleep(0)  # let the rest of vmtest run during a long burst
                    continue
                if not self._writer_alive():  # QEMU exited: all it wrote is in the file, read it out
                    while chunk := file.read(_READ_SIZE):
                        self._take(chunk)
                    break
                self._release_waiters()  # a read that began after they asked found the end
                await asyncio.sleep(POLL_INTERVAL)
        except OSError:
            pass
        finally:
            file.close()
            self.closed.set()
            self._release_waiters()

    def _release_waiters(self) -> None:
        waiting, self._catching_up = self._catching_up, []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    def _take(self, chunk: bytes) -> None:
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
        for raw in _cut(complete):
            line = raw.rstrip(b"\r").decode(errors="replace")
            self._lines.append(line)
            for listener in self._line_listeners:
                listener(line)

    async def close(self) -> None:
        """Stop reading: once the file is read out if its writer has exited, else at once."""
        if self._task is None:
            return
        if not self._writer_alive():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed.wait(), _DRAIN_WAIT)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _cut(lines: list[bytes]) -> Iterator[bytes]:
    """``lines``, each longer than ``_MAX_LINE`` bytes cut into pieces of at most that many."""
    for line in lines:
        for start in range(0, max(len(line), 1), _MAX_LINE):
            yield line[start : start + _MAX_LINE]
