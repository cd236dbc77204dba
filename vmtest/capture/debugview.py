"""DbgPrint from a Windows guest through Sysinternals DebugView, for users who cannot enable kernel debugging.

DbgViewCLI (DebugView 5.02) runs in the guest with kernel capture on and logs to a file; at the end
vmtest stops it, fetches the log and feeds its lines to the capture. The log is kept as it came in
the run directory. Reference: ``windows11-vm.md`` §4.2-4.4. Unconfirmed there, and so configurable:
how a background process survives the SSH command that started it (``start_command``), and the GUI's
log layout (the parser accepts tab-separated and CSV, text in the last column).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from vmtest.capture.source import Capture, CaptureSource
from vmtest.guest.transport import Transport

__all__ = ["DEBUGVIEW_ARGUMENTS", "DebugViewSource", "debugview_text_lines"]

log = logging.getLogger(__name__)

DEBUGVIEW_ARGUMENTS = (
    "--accepteula", "--kernel", "--verbose-kernel", "--no-banner", "--clock-ms", "--format", "csv",
)  # fmt: skip
# `start "" /b PROGRAM ...` asks cmd.exe to start PROGRAM without waiting for it (unconfirmed whether the
# SSH session's end kills it; PsExec-launched commands are unaffected).
DEFAULT_START_COMMAND = ("cmd.exe", "/c", "start", "", "/b")
COMMAND_TIMEOUT = 60.0


def debugview_text_lines(data: bytes) -> Iterator[str]:
    """The Debug Print text of each record in a DebugView log (CSV or tab-separated; text last)."""
    text = data.decode("utf-8-sig", errors="replace")
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if "\t" in raw:
            yield raw.split("\t")[-1]
            continue
        try:
            row = next(csv.reader(io.StringIO(raw)))
        except (csv.Error, StopIteration):
            yield raw
            continue
        yield row[-1] if row else raw


class DebugViewSource(CaptureSource):
    """Starts DbgViewCLI in the guest, and at the end fetches its log into the capture."""

    name = "debugview"

    def __init__(
        self,
        transport: Transport,
        *,
        program: str,
        guest_log: str,
        raw_copy: Path,
        start_command: Sequence[str] = DEFAULT_START_COMMAND,
    ) -> None:
        self.transport = transport
        self.program = program
        self.guest_log = guest_log
        self.raw_copy = raw_copy
        self.start_command = tuple(start_command)
        self._capture: Capture | None = None

    async def start(self, capture: Capture) -> None:
        """Start DbgViewCLI logging kernel output to ``guest_log``; call once the guest is reachable."""
        self._capture = capture
        argv = [*self.start_command, self.program, *DEBUGVIEW_ARGUMENTS, "--log", self.guest_log]
        result = await asyncio.to_thread(self.transport.run, argv, timeout=COMMAND_TIMEOUT)
        result.check("starting DebugView in the guest")

    async def stop(self) -> None:
        """Stop DbgViewCLI, fetch its log, keep it raw, and feed its lines to the capture."""
        capture, self._capture = self._capture, None
        if capture is None:
            return
        stopped = await asyncio.to_thread(
            self.transport.run, [self.program, "--stop"], timeout=COMMAND_TIMEOUT
        )
        if not stopped.ok:
            log.warning("DebugView did not stop cleanly: %s", stopped.text().strip())
        await asyncio.to_thread(self.transport.get, self.guest_log, self.raw_copy, timeout=COMMAND_TIMEOUT)
        now = time.time()
        for text in debugview_text_lines(self.raw_copy.read_bytes()):
            capture.add_line(self.name, text, now)
