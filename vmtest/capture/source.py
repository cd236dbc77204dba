"""Capture sources behind one interface: one stream of timestamped lines plus structured events.

A source (the Linux serial console, the Windows KD host, a DebugView log fetched from the guest) feeds
a :class:`Capture`, which writes the decoded stream to ``capture.log`` in the run directory as it
arrives, keeps a bounded tail for error messages, and passes lines and events on to listeners (the
event reader, the progress display). Each source also keeps its raw bytes in the run directory, so
nothing is lost if decoding fails.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, TextIO

__all__ = ["Capture", "CaptureEvent", "CaptureSource", "CapturedLine", "printable", "printable_lines"]

log = logging.getLogger(__name__)

EventKind = Literal["bugcheck", "panic", "oops", "module-load", "stall"]


@dataclass(frozen=True)
class CapturedLine:
    """One line the guest kernel printed, with the host time it arrived and where it came from."""

    time: float
    source: str
    text: str


@dataclass(frozen=True)
class CaptureEvent:
    """Something structured a source recognised: a bugcheck, a panic, a module load, a stalled link."""

    time: float
    source: str
    kind: EventKind
    summary: str
    detail: Mapping[str, object] = field(default_factory=dict)


def printable(text: str) -> str:
    """Guest text made safe for terminals and logs: control characters shown as escapes."""
    return "".join(ch if ch.isprintable() or ch == "\t" else f"\\x{ord(ch):02x}" for ch in text)


def printable_lines(text: str) -> str:
    """Like :func:`printable`, but the line breaks are kept: for messages that quote guest output."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Capture:
    """The merged capture of one run: ``capture.log`` on disk, a bounded tail, listeners."""

    def __init__(self, log_path: Path, tail_lines: int = 200) -> None:
        self.log_path = log_path
        self.lines_seen = 0
        self.events: list[CaptureEvent] = []
        self._tail: deque[CapturedLine] = deque(maxlen=tail_lines)
        self._file: TextIO | None = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
        self.write_error: OSError | None = None
        """Why ``capture.log`` stopped being written (a full disk), if it did: the log is then incomplete."""
        self._line_listeners: list[Callable[[CapturedLine], None]] = []
        self._event_listeners: list[Callable[[CaptureEvent], None]] = []

    def on_line(self, listener: Callable[[CapturedLine], None]) -> None:
        """Call ``listener`` with every line from now on."""
        self._line_listeners.append(listener)

    def remove_line_listener(self, listener: Callable[[CapturedLine], None]) -> None:
        """Stop calling ``listener``."""
        if listener in self._line_listeners:
            self._line_listeners.remove(listener)

    def on_event(self, listener: Callable[[CaptureEvent], None]) -> None:
        """Call ``listener`` with every structured event from now on."""
        self._event_listeners.append(listener)

    def add_line(self, source: str, text: str, moment: float | None = None) -> None:
        """Record a line from ``source``."""
        line = CapturedLine(time.time() if moment is None else moment, source, text)
        self.lines_seen += 1
        self._tail.append(line)
        self._write(f"{_stamp(line.time)} {source} {printable(text)}\n")
        for listener in self._line_listeners:
            listener(line)

    def add_event(self, event: CaptureEvent) -> None:
        """Record a structured event (it also goes into ``capture.log`` as a marked line)."""
        self.events.append(event)
        self._write(f"{_stamp(event.time)} {event.source} *** {event.kind}: {printable(event.summary)}\n")
        for listener in self._event_listeners:
            listener(event)

    def _write(self, text: str) -> None:
        """Append to ``capture.log``; on a write error (a full disk) stop writing, but keep capturing.

        The listeners (events, verdict, progress) still get every line; ``write_error`` tells the run
        that the log on disk is incomplete.
        """
        if self._file is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as error:
            self.write_error = error
            log.error("cannot write %s, so it stops here: %s", self.log_path, error)
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def tail(self, count: int = 40) -> list[str]:
        """The last ``count`` lines, made printable."""
        return [printable(line.text) for line in list(self._tail)[-count:]]

    def close(self) -> None:
        """Close ``capture.log``."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                self.write_error = self.write_error or error
            self._file = None


class CaptureSource(abc.ABC):
    """Where kernel output comes from for one kind of guest."""

    name: str

    @abc.abstractmethod
    async def start(self, capture: Capture) -> None:
        """Begin feeding ``capture``; called before the guest's CPU runs when the source can be."""

    async def catch_up(self) -> None:  # noqa: B027 (most sources pass lines on as they come)
        """Return once every line the guest emitted before this call is in the capture.

        A source that hands each line over as it arrives (the KD host: the target waits in DbgPrint
        until its packet is acknowledged) has nothing to do.
        """

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop, after flushing what is buffered; idempotent."""
