"""DbgPrint from a Windows guest through Sysinternals DebugView, for users who cannot enable kernel debugging.

DbgViewCLI (DebugView 5.02) runs in the guest with kernel capture on and logs to a file; at the end
vmtest stops it, fetches the log and feeds its lines to the capture. The log is kept as it came in
the run directory. Reference: ``windows11-vm.md`` §4.2-4.4 (and its corrected §4.3).

Starting it over SSH: Win32-OpenSSH puts the session's processes in a job object that kills them all
when the session's first process exits, by design (PowerShell/Win32-OpenSSH issues #1195 and #2452,
https://github.com/PowerShell/Win32-OpenSSH/issues/1195), so ``cmd /c start "" /b dbgviewcli ...`` dies
with the command that started it. A process created through WMI's ``Win32_Process.Create`` is created
by the WMI service, outside that job (the workaround given in Win32-OpenSSH #1642): that is the default
here. vmtest then checks the process is running (``tasklist`` by its PID) before the driver loads.
``start_command`` remains as a configurable prefix for guests where another way is known to work.

``--no-win32`` keeps user-mode OutputDebugString out of the kernel capture (the option name as
windows11-vm.md §4.3 gives it; one field report saw kernel lines vanish with it on an ARM64 guest, so
``no_win32`` is a setting, and an empty log says so).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from vmtest.capture.source import Capture, CaptureSource
from vmtest.errors import GuestCommandFailed
from vmtest.guest.transport import CommandResult, Transport

__all__ = [
    "DEBUGVIEW_ARGUMENTS",
    "DebugViewSource",
    "debugview_text_lines",
    "parse_tasklist_pids",
    "parse_wmi_create",
    "wmi_create_command",
]

log = logging.getLogger(__name__)

DEBUGVIEW_ARGUMENTS = (
    "--accepteula", "--kernel", "--verbose-kernel", "--no-banner", "--clock-ms", "--format", "csv",
)  # fmt: skip
NO_WIN32 = "--no-win32"
COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 15.0
POLL_INTERVAL = 0.5

# Win32_Process.Create's ReturnValue (Microsoft Learn, "Create method of the Win32_Process class"):
_WMI_CREATE_ERRORS = {
    2: "access denied",
    3: "insufficient privilege",
    8: "unknown failure",
    9: "path not found",
    21: "invalid parameter",
}
_WMI_RESULT = re.compile(r"ReturnValue=(?P<code>\d+)\s+ProcessId=(?P<pid>\d*)")
_SEQUENCE = re.compile(r"^\s*\d+\s*$")
_TEXT_COLUMNS = ("message", "text", "debug print", "output")


def _csv_records(text: str) -> list[list[str]] | None:
    """The records of a DbgViewCLI CSV log, without a header row; None if ``text`` is not that CSV.

    A record has at least two fields and starts with its sequence number; a first row that does not
    (but is followed by one that does) is a header.
    """
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error:
        return None
    if not rows:
        return []
    header: list[str] | None = None
    if not _SEQUENCE.match(rows[0][0]) and len(rows[0]) >= 2:
        header, rows = rows[0], rows[1:]
    if not all(len(row) >= 2 and _SEQUENCE.match(row[0]) for row in rows):
        return None
    if header is not None:
        names = [cell.strip().lower() for cell in header]
        column = next((names.index(name) for name in _TEXT_COLUMNS if name in names), None)
        if column is not None:
            return [[row[column]] if column < len(row) else [""] for row in rows]
    return rows


def debugview_text_lines(data: bytes) -> Iterator[str]:
    """The Debug Print text of each record in a DebugView log.

    DbgViewCLI's ``--format csv`` is parsed as CSV first (a message may hold commas, quotes or tabs; a
    header row is skipped, its text column used when it names one); anything else is the GUI's
    tab-separated log (sequence number, time, text). The text is the last field.
    """
    text = data.decode("utf-8-sig", errors="replace")
    records = _csv_records(text)
    if records is not None:
        for record in records:
            yield record[-1]
        return
    for raw in text.splitlines():
        if raw.strip():
            yield raw.split("\t")[-1]


def wmi_create_command(command_line: str) -> list[str]:
    """PowerShell that starts ``command_line`` through WMI, outside the SSH session's job.

    It prints ``ReturnValue=<n> ProcessId=<pid>``; the script goes as -EncodedCommand (base64 of UTF-16LE,
    ``powershell.exe -?``), so no shell quoting applies to it.
    """
    literal = command_line.replace("'", "''")
    script = (
        "$r = Invoke-CimMethod -ClassName Win32_Process -MethodName Create "
        f"-Arguments @{{CommandLine='{literal}'}}; "
        "Write-Output ('ReturnValue=' + $r.ReturnValue + ' ProcessId=' + $r.ProcessId)"
    )
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return ["powershell.exe", "-NoLogo", "-NoProfile", "-NonInteractive", "-EncodedCommand", encoded]


def parse_wmi_create(output: str) -> int:
    """The PID Win32_Process.Create reported; ValueError naming its ReturnValue when it failed."""
    match = _WMI_RESULT.search(output)
    if match is None:
        raise ValueError(f"no ReturnValue in the output: {output.strip()[-300:]!r}")
    code = int(match["code"])
    if code != 0 or not match["pid"]:
        raise ValueError(f"Win32_Process.Create returned {code} ({_WMI_CREATE_ERRORS.get(code, 'unknown')})")
    return int(match["pid"])


def parse_tasklist_pids(output: str) -> set[int]:
    """PIDs in ``tasklist /FO CSV /NH`` output (image name, PID, session name, session#, memory).

    Any other line (the INFO line when nothing matches, in the guest's language) names none.
    """
    pids: set[int] = set()
    for row in csv.reader(io.StringIO(output)):
        if len(row) >= 2 and row[1].strip().isdigit():
            pids.add(int(row[1]))
    return pids


def _quote(argument: str) -> str:
    """One argument of a Windows command line (CommandLineToArgvW rules, for our plain arguments)."""
    return f'"{argument}"' if not argument or any(c in argument for c in ' \t"') else argument


class DebugViewSource(CaptureSource):
    """Starts DbgViewCLI in the guest outside the SSH session's job, and at the end fetches its log."""

    name = "debugview"

    def __init__(
        self,
        transport: Transport,
        *,
        program: str,
        guest_log: str,
        raw_copy: Path,
        start_command: Sequence[str] | None = None,
        no_win32: bool = True,
        start_timeout: float = START_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.transport = transport
        self.program = program
        self.guest_log = guest_log
        self.raw_copy = raw_copy
        self.start_command = None if start_command is None else tuple(start_command)
        self.no_win32 = no_win32
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.pid: int | None = None
        self._capture: Capture | None = None

    @property
    def arguments(self) -> list[str]:
        """DbgViewCLI's arguments: kernel capture to ``guest_log`` in CSV."""
        extra = [NO_WIN32] if self.no_win32 else []
        return [*DEBUGVIEW_ARGUMENTS, *extra, "--log", self.guest_log]

    async def start(self, capture: Capture) -> None:
        """Start DbgViewCLI and check it runs; call once the guest is reachable."""
        self._capture = capture
        # Only one process can hold the kernel capture; a leftover one starves the new one silently.
        await self._run([self.program, "--stop"])
        if self.start_command is not None:
            result = await self._run([*self.start_command, self.program, *self.arguments])
            result.check("starting DebugView in the guest")
            return
        command_line = " ".join(_quote(part) for part in (self.program, *self.arguments))
        result = await self._run(wmi_create_command(command_line))
        try:
            self.pid = parse_wmi_create(result.text())
        except ValueError as error:
            raise GuestCommandFailed(
                f"starting DebugView ({self.program}) in the guest through WMI failed: {error}"
            ) from None
        await self._wait_running(self.pid)
        log.info("DebugView runs in the guest as PID %d, outside the SSH session", self.pid)

    async def _wait_running(self, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        argv = ["tasklist", "/FI", f"PID eq {pid}", "/FO", "CSV", "/NH"]
        while True:
            result = await self._run(argv)
            if pid in parse_tasklist_pids(result.text()):
                return
            if time.monotonic() >= deadline:
                raise GuestCommandFailed(
                    f"DebugView (PID {pid}) is not running {self.start_timeout:g} s after WMI started it: "
                    f"run {self.program} {' '.join(self.arguments)} in the guest by hand to see why"
                )
            await asyncio.sleep(self.poll_interval)

    async def _wait_gone(self, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        argv = ["tasklist", "/FI", f"PID eq {pid}", "/FO", "CSV", "/NH"]
        while pid in parse_tasklist_pids((await self._run(argv)).text()):
            if time.monotonic() >= deadline:
                log.warning(
                    "DebugView (PID %d) still runs %g s after --stop; fetching its log anyway",
                    pid,
                    self.start_timeout,
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def stop(self) -> None:
        """Stop DbgViewCLI, fetch its log, keep it raw, and feed its lines to the capture."""
        capture, self._capture = self._capture, None
        if capture is None:
            return
        stopped = await self._run([self.program, "--stop"])
        if not stopped.ok:
            log.warning("DebugView did not stop cleanly: %s", stopped.text().strip())
        if self.pid is not None:  # --stop only signals it (Sysinternals, DebugView): let it flush and exit
            await self._wait_gone(self.pid)
        await asyncio.to_thread(self.transport.get, self.guest_log, self.raw_copy, timeout=COMMAND_TIMEOUT)
        now = time.time()
        count = 0
        for text in debugview_text_lines(self.raw_copy.read_bytes()):
            capture.add_line(self.name, text, now)
            count += 1
        if count == 0 and self.no_win32:
            log.warning(
                "the DebugView log is empty; one field report saw kernel lines vanish with --no-win32: "
                "try debugview.no_win32: false"
            )

    async def _run(self, argv: Sequence[str]) -> CommandResult:
        return await asyncio.to_thread(self.transport.run, argv, timeout=COMMAND_TIMEOUT)
