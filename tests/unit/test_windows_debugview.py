"""DebugView in the guest: started outside the SSH session's job, checked running, its CSV log parsed.

The scripted guest acts out what Win32-OpenSSH documents: every process started from a session's
command joins the session's job object and is killed when that command (the session's first process)
exits (PowerShell/Win32-OpenSSH #1195, #2452); a process WMI creates (Win32_Process.Create) is not in
the job and survives (#1642). tasklist's answers are tests/data/windows samples.
"""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scripted_windows import ScriptedWindows

from vmtest.capture.debugview import (
    DebugViewSource,
    debugview_text_lines,
    parse_tasklist_pids,
    parse_wmi_create,
)
from vmtest.capture.source import Capture
from vmtest.errors import GuestCommandFailed

DATA = Path(__file__).resolve().parents[1] / "data" / "windows"
PROGRAM = r"C:\vmtest\tools\dbgviewcli.exe"
GUEST_LOG = r"C:\vmtest\dbgview.csv"
LINE = "VMTEST1 seq=4 ev=acquire sc=kmutex_contention t=0 m=counter k=kmutex irql=0"
LOG = f'Line,Time,Message\r\n1,"0.001","Driver loaded, hello"\r\n2,"0.002","{LINE}"\r\n'.encode()


@dataclass
class SshWindows(ScriptedWindows):
    """A Windows guest behind Win32-OpenSSH: session children die with the session's command."""

    running: dict[int, list[str]] = field(default_factory=dict)
    next_pid: int = 4242

    def _spawn(self, argv: list[str]) -> int:
        pid, self.next_pid = self.next_pid, self.next_pid + 4
        self.running[pid] = argv
        return pid

    def answer(self, argv: list[str]) -> tuple[int, bytes]:
        if argv[:5] == ["cmd.exe", "/c", "start", "", "/b"]:
            pid = self._spawn(argv[5:])
            del self.running[pid]  # the session's command returned: the job object kills its children
            return 0, b""
        if argv[0] == "powershell.exe":
            script = base64.b64decode(argv[argv.index("-EncodedCommand") + 1]).decode("utf-16-le")
            assert "Invoke-CimMethod -ClassName Win32_Process -MethodName Create" in script
            command_line = re.search(r"CommandLine='((?:[^']|'')*)'", script)
            assert command_line is not None
            pid = self._spawn(command_line[1].replace("''", "'").split())  # created by WMI: no job
            return 0, f"ReturnValue=0 ProcessId={pid}\r\n".encode()
        if argv[0] == "tasklist":
            pid = int(argv[2].split()[-1])
            if pid in self.running:
                row = (DATA / "tasklist_csv_noheader_running.txt").read_bytes()
                return 0, row.replace(b'"4242"', f'"{pid}"'.encode())
            return 0, (DATA / "tasklist_no_match.txt").read_bytes()
        if argv == [PROGRAM, "--stop"]:
            if self.running:
                self.running.clear()
                self.files[GUEST_LOG] = LOG
            return 0, b""
        return 9009, b"not recognized\r\n"


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def source(guest: SshWindows, tmp_path: Path, **options: object) -> DebugViewSource:
    return DebugViewSource(
        guest, program=PROGRAM, guest_log=GUEST_LOG, raw_copy=tmp_path / "debugview.csv",
        poll_interval=0.0, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def test_debugview_runs_outside_the_ssh_session_and_its_log_is_captured(tmp_path: Path) -> None:
    guest = SshWindows()
    capture = Capture(tmp_path / "capture.log")
    debugview = source(guest, tmp_path)
    run(debugview.start(capture))
    assert debugview.pid in guest.running, "the capture must outlive the command that started it"
    argv = guest.running[debugview.pid]
    assert argv[0] == PROGRAM and "--kernel" in argv and "--no-win32" in argv
    assert argv[-2:] == ["--log", GUEST_LOG]
    run(debugview.stop())
    capture.close()
    assert capture.tail() == ["Driver loaded, hello", LINE]
    assert (tmp_path / "debugview.csv").read_bytes() == LOG


def test_the_old_start_prefix_dies_with_the_session_and_is_not_the_default(tmp_path: Path) -> None:
    guest = SshWindows()
    run(source(guest, tmp_path, start_command=("cmd.exe", "/c", "start", "", "/b")).start(Capture(
        tmp_path / "capture.log")))  # fmt: skip
    assert guest.running == {}  # what #1195 describes: nothing is left capturing
    assert source(SshWindows(), tmp_path).start_command is None


def test_no_win32_can_be_turned_off(tmp_path: Path) -> None:
    guest = SshWindows()
    debugview = source(guest, tmp_path, no_win32=False)
    run(debugview.start(Capture(tmp_path / "capture.log")))
    assert debugview.pid is not None and "--no-win32" not in guest.running[debugview.pid]


def test_a_capture_that_does_not_run_is_an_error_naming_it(tmp_path: Path) -> None:
    class Dies(SshWindows):
        def _spawn(self, argv: list[str]) -> int:
            return 7  # WMI created it, but it exited at once

    with pytest.raises(GuestCommandFailed, match=r"DebugView \(PID 7\) is not running"):
        run(source(Dies(), tmp_path, start_timeout=0.0).start(Capture(tmp_path / "capture.log")))


def test_wmi_and_tasklist_answers() -> None:
    assert parse_wmi_create("ReturnValue=0 ProcessId=4242\r\n") == 4242
    with pytest.raises(ValueError, match="returned 9 \\(path not found\\)"):
        parse_wmi_create("ReturnValue=9 ProcessId=\r\n")
    assert parse_tasklist_pids((DATA / "tasklist_csv_noheader_running.txt").read_text()) == {4242}
    assert parse_tasklist_pids((DATA / "tasklist_no_match.txt").read_text()) == set()


# -------------------------------------------------------------------------------------------- log formats


def test_csv_is_parsed_before_tabs_are_split() -> None:
    data = f'1,"0.001","tab\tinside, and ""quotes"""\r\n2,"0.002","{LINE}"\r\n'.encode()
    assert list(debugview_text_lines(data)) == ['tab\tinside, and "quotes"', LINE]


def test_a_header_row_is_skipped_and_names_the_text_column() -> None:
    data = f'Line,Message,Time\r\n1,"hello",0.1\r\n2,"{LINE}",0.2\r\n'.encode()
    assert list(debugview_text_lines(data)) == ["hello", LINE]


def test_a_multi_line_csv_field_stays_one_record() -> None:
    data = b'1,"0.1","first\r\nsecond"\r\n'
    assert list(debugview_text_lines(data)) == ["first\r\nsecond"]


def test_the_guis_tab_separated_log_still_parses() -> None:
    data = f"00000001\t0.00000000\tDriver loaded, ok\r\n00000002\t0.00104230\t{LINE}\r\n".encode()
    assert list(debugview_text_lines(data)) == ["Driver loaded, ok", LINE]


def test_a_missing_program_is_named_when_wmi_cannot_start_it(tmp_path: Path) -> None:
    class NoProgram(SshWindows):
        def answer(self, argv: list[str]) -> tuple[int, bytes]:
            if argv[0] == "powershell.exe":
                return 0, b"ReturnValue=9 ProcessId=\r\n"  # Win32_Process.Create: 9 = path not found
            return super().answer(argv)

    with pytest.raises(
        GuestCommandFailed, match=r"dbgviewcli\.exe\) in the guest through WMI failed: .*path not found"
    ):
        run(source(NoProgram(), tmp_path).start(Capture(tmp_path / "capture.log")))
