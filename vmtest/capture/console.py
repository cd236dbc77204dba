"""The Linux guest's kernel log, read live from its serial console at full log level.

The raw bytes are already in the run directory (QEMU writes the port into ``serial-console.log``);
this source turns lines into the capture stream and recognises panics and kernel bugs as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

from vmtest.capture.source import Capture, CaptureEvent, CaptureSource
from vmtest.machine.console import SerialConsole

__all__ = ["LinuxConsoleSource", "classify_kernel_line"]

STOP_CATCH_UP = 2.0
"""How long stopping waits for the console to read what was written before (it reads every 20 ms)."""

_PANIC = re.compile(r"Kernel panic - not syncing: (?P<reason>.*)")
_OOPS = re.compile(
    r"(?P<what>BUG: [^\r\n]*|Oops: [^\r\n]*|WARNING: CPU: [^\r\n]*|general protection fault[^\r\n]*"
    r"|Unable to handle kernel [^\r\n]*)"
)


def classify_kernel_line(text: str) -> tuple[str, str] | None:
    """``("panic", reason)`` or ``("oops", what)`` when a kernel log line reports one, else None."""
    panic = _PANIC.search(text)
    if panic:
        return "panic", panic.group("reason").strip()
    oops = _OOPS.search(text)
    if oops:
        return "oops", oops.group("what").strip()
    return None


class LinuxConsoleSource(CaptureSource):
    """Feeds the capture from a Linux guest's serial console."""

    name = "console"

    def __init__(self, console: SerialConsole) -> None:
        self.console = console
        self._capture: Capture | None = None

    async def start(self, capture: Capture) -> None:
        """Follow the console from now on (the console itself was attached before the guest ran)."""
        self._capture = capture
        self.console.add_line_listener(self._line)

    async def catch_up(self) -> None:
        """Return once the console file is read up to where it was at the call."""
        await self.console.caught_up()

    def _line(self, text: str) -> None:
        capture = self._capture
        if capture is None:
            return
        now = time.time()
        capture.add_line(self.name, text, now)
        found = classify_kernel_line(text)
        if found is not None:
            kind, summary = found
            capture.add_event(CaptureEvent(now, self.name, "panic" if kind == "panic" else "oops", summary))

    async def stop(self) -> None:
        """Stop following the console, once it has passed on what QEMU wrote so far (a panic's last words)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.console.caught_up(), STOP_CATCH_UP)
        self.console.remove_line_listener(self._line)
        self._capture = None
