"""Progress for people: each phase with its elapsed time, live on a terminal, line by line in CI logs."""

from __future__ import annotations

import abc
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import Progress as RichProgressBar
from rich.progress import SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["PlainProgress", "Progress", "RichProgress", "make_progress"]


class Progress(abc.ABC):
    """Where vmtest reports what it is doing."""

    @abc.abstractmethod
    @contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        """Report a phase from start to end (or failure), with its elapsed time."""

    @abc.abstractmethod
    def note(self, message: str) -> None:
        """Report a fact worth a line of its own (where the logs are, which port...)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Stop any live display."""


class PlainProgress(Progress):
    """One line per event with the time since start: for CI logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write(f"[{elapsed:7.1f}s] {_printable(text)}\n")
        self.stream.flush()

    @contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        """Print the phase's start, and its end or failure with how long it took."""
        begin = time.monotonic()
        self._line(f"{name}: {description}")
        try:
            yield
        except BaseException:
            self._line(f"{name}: FAILED after {time.monotonic() - begin:.1f}s")
            raise
        self._line(f"{name}: done in {time.monotonic() - begin:.1f}s")

    def note(self, message: str) -> None:
        """Print the message as its own line."""
        self._line(message)


class RichProgress(Progress):
    """A live spinner per phase with its elapsed time, kept on screen when done."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.bar = RichProgressBar(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("[bold]{task.fields[name]:<10}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.bar.start()

    @contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        """Show a spinner for the phase; mark it done or failed when it ends."""
        task: TaskID = self.bar.add_task(_printable(description), total=1, name=name)
        try:
            yield
        except BaseException:
            self.bar.update(task, description=f"[red]FAILED[/red] {_printable(description)}")
            self.bar.stop_task(task)
            raise
        self.bar.update(task, completed=1)

    def note(self, message: str) -> None:
        """Print above the live display."""
        self.console.print(Text(_printable(message)))

    def close(self) -> None:
        """Stop the live display."""
        self.bar.stop()


def _printable(text: str) -> str:
    """Neutralise control characters (guest text may contain terminal escapes)."""
    return "".join(ch if ch.isprintable() or ch == "\t" else f"\\x{ord(ch):02x}" for ch in text)


def make_progress(stream: TextIO | None = None) -> Progress:
    """Rich on a terminal, plain lines otherwise."""
    target = stream or sys.stderr
    if target.isatty():
        return RichProgress(Console(file=target))
    return PlainProgress(target)
