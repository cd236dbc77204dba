"""Capture: the merged stream and its log, kernel-line classification, DebugView log parsing."""

from __future__ import annotations

from pathlib import Path

from vmtest.capture.console import classify_kernel_line
from vmtest.capture.debugview import debugview_text_lines
from vmtest.capture.source import Capture, CaptureEvent

LINE = "VMTEST1 seq=4 ev=acquire sc=kmutex_contention t=0 m=counter k=kmutex irql=0"


def test_capture_writes_timestamped_printable_lines_and_keeps_a_bounded_tail(tmp_path: Path) -> None:
    capture = Capture(tmp_path / "capture.log", tail_lines=3)
    seen: list[str] = []
    capture.on_line(lambda line: seen.append(line.text))
    for number in range(5):
        capture.add_line("console", f"line {number}", 1_700_000_000.0 + number)
    capture.add_line("console", "escape \x1b[31mred\x1b[0m bell \x07")
    capture.add_event(CaptureEvent(1_700_000_010.0, "console", "panic", "Fatal exception"))
    capture.close()
    text = (tmp_path / "capture.log").read_text()
    assert text.splitlines()[0] == "2023-11-14T22:13:20.000000Z console line 0"
    assert "escape \\x1b[31mred\\x1b[0m bell \\x07" in text
    assert "\x1b" not in text
    assert text.splitlines()[-1].endswith("console *** panic: Fatal exception")
    assert capture.tail() == ["line 3", "line 4", "escape \\x1b[31mred\\x1b[0m bell \\x07"]
    assert capture.lines_seen == 6 and len(seen) == 6


def test_kernel_panic_and_bug_lines_are_recognised() -> None:
    assert classify_kernel_line("[   3.1] Kernel panic - not syncing: sysrq triggered crash") == (
        "panic",
        "sysrq triggered crash",
    )
    assert classify_kernel_line("[   5.0] BUG: scheduling while atomic: insmod/99/0x00000002") == (
        "oops",
        "BUG: scheduling while atomic: insmod/99/0x00000002",
    )
    assert classify_kernel_line("[   5.0] e1000: eth0 NIC Link is Up") is None


def test_debugview_tab_separated_log() -> None:
    # windows11-vm.md §4.2: sequence number, time, Debug Print text; tab-separated
    data = f"00000001\t0.00000000\tDriver loaded\r\n00000002\t0.00104230\t{LINE}\r\n".encode()
    assert list(debugview_text_lines(data)) == ["Driver loaded", LINE]


def test_debugview_csv_log_with_bom_and_commas_in_text() -> None:
    # windows11-vm.md §4.3: DbgViewCLI --format csv
    data = ('\ufeff1,"0.00100000","hello, world"\r\n2,"0.00110000","' + LINE + '"\r\n').encode("utf-8")
    assert list(debugview_text_lines(data)) == ["hello, world", LINE]
