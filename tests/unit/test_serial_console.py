"""The serial console follows the file QEMU writes: lines, markers, catching up, and reading out at exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vmtest.capture.console import LinuxConsoleSource
from vmtest.capture.source import Capture
from vmtest.machine.console import SerialConsole


class Writer:
    """Stands in for QEMU's file chardev: appends bytes to the port's file, and can exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.alive = True
        path.touch()

    def write(self, data: bytes) -> None:
        with self.path.open("ab") as file:
            file.write(data)


def test_lines_arrive_whole_from_pieces_and_markers_wake_waiters(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        writer = Writer(tmp_path / "serial-console.log")
        console = SerialConsole("console")
        seen: list[str] = []
        console.add_line_listener(seen.append)
        console.follow(writer.path, lambda: writer.alive)
        ready = console.marker("GUEST-READY")
        writer.write(b"[    0.1] booting\r\n[    0.2] GUEST-")
        await asyncio.sleep(0.1)
        assert not ready.done()  # half a marker is no marker
        writer.write(b"READY\r\npartial")
        await asyncio.wait_for(ready, 2)
        writer.alive = False
        await console.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen == ["[    0.1] booting", "[    0.2] GUEST-READY"]


def test_caught_up_returns_after_everything_written_before_it_is_passed_on(tmp_path: Path) -> None:
    async def scenario() -> int:
        writer = Writer(tmp_path / "serial-console.log")
        console = SerialConsole("console")
        seen: list[str] = []
        console.add_line_listener(seen.append)
        console.follow(writer.path, lambda: writer.alive)
        await console.caught_up()  # nothing written yet: the first read that finds the end releases it
        writer.write(b"".join(b"line %d\n" % number for number in range(5000)))
        await asyncio.wait_for(console.caught_up(), 5)
        count = len(seen)
        writer.alive = False
        await console.close()
        return count

    assert asyncio.run(scenario()) == 5000


def test_after_the_writer_exits_the_file_is_read_out_and_the_console_closes(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], bool]:
        writer = Writer(tmp_path / "serial-console.log")
        console = SerialConsole("console")
        seen: list[str] = []
        console.add_line_listener(seen.append)
        console.follow(writer.path, lambda: writer.alive)
        await console.caught_up()
        writer.write(b"Kernel panic - not syncing: last words\n")
        writer.alive = False  # exits in the same instant: the reader must still read what was written
        await asyncio.wait_for(console.closed.wait(), 2)
        await console.caught_up()  # a closed console has nothing more to read: returns at once
        await console.close()
        return seen, console.closed.is_set()

    seen, closed = asyncio.run(scenario())
    assert seen == ["Kernel panic - not syncing: last words"]
    assert closed


def test_closing_while_the_writer_runs_does_not_wait_for_it(tmp_path: Path) -> None:
    async def scenario() -> bool:
        writer = Writer(tmp_path / "serial-console.log")
        console = SerialConsole("console")
        console.follow(writer.path, lambda: writer.alive)
        await console.caught_up()
        # QEMU still runs (a failed shutdown): close stops reading now instead of waiting to read out
        await asyncio.wait_for(console.close(), 1)
        return console.closed.is_set()

    assert asyncio.run(scenario())


def test_stopping_the_capture_first_passes_on_what_was_already_written(tmp_path: Path) -> None:
    """A panic: QEMU reports it over QMP right after the guest printed its last words into the file."""

    async def scenario() -> str:
        writer = Writer(tmp_path / "serial-console.log")
        console = SerialConsole("console")
        capture = Capture(tmp_path / "capture.log")
        source = LinuxConsoleSource(console)
        console.follow(writer.path, lambda: writer.alive)
        await source.start(capture)
        await console.caught_up()
        writer.write(b"Kernel panic - not syncing: sysrq triggered crash\n")
        await source.stop()  # at once, as the session does when the crash event arrives
        writer.alive = False
        await console.close()
        capture.close()
        return (tmp_path / "capture.log").read_text()

    text = asyncio.run(scenario())
    assert "console Kernel panic - not syncing: sysrq triggered crash" in text
    assert "console *** panic: sysrq triggered crash" in text
