"""Read protocol events out of captured kernel output, one line at a time, whatever captured it.

The input is any text: vmtest's own ``capture.log``, a DebugView log (tab-separated or its CSV export),
a KD capture, a Linux console log. Protocol lines are found wherever ``VMTEST1`` stands in a line, so
prefixes (DebugView columns, timestamps) and foreign kernel output in between do not matter; line
endings may be LF or CRLF.

A line a transport broke in two is rejoined: when a protocol line is malformed or incomplete (a
required key missing, an unknown ``ev``, or the line ends inside the ``VMTEST1`` prefix itself) and the
next line has no protocol prefix and no capture prefix of its own, the reader tries the two joined
(directly, then with a space between), looking at most ``max_parts - 1`` lines ahead; only a join that
yields a complete event is taken. Lines that stay malformed become :class:`ProtocolProblem` s, never
exceptions.

The reader streams: it keeps no line beyond the small per-scenario tails used to show "the last lines
seen" when a scenario hangs, and a parse cache of the distinct event bodies it met (bounded). Events
whose bodies are the same (all but ``seq``) share one ``fields`` mapping: it is read-only, as
:class:`~vmtest.events.protocol.Event` types it.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal, TextIO

from vmtest.events.protocol import PREFIX, Event, ProtocolError, parse_line

__all__ = [
    "REQUIRED_KEYS",
    "EventReader",
    "ProtocolProblem",
    "open_capture",
]

log = logging.getLogger(__name__)

_LOCK_KEYS = frozenset({"sc", "t", "m", "k", "irql"})
REQUIRED_KEYS: Mapping[str, frozenset[str]] = {
    "run-start": frozenset({"driver", "proto"}),
    "scenario-start": frozenset({"sc", "params"}),
    "mutex": frozenset({"sc", "m", "k"}),
    "acquire": _LOCK_KEYS,
    "acquired": _LOCK_KEYS,
    "release": _LOCK_KEYS,
    "call": frozenset({"sc", "t", "op", "irql", "r"}),
    "counter": frozenset({"sc", "m", "value", "expected"}),
    "thread-end": frozenset({"sc", "t", "iterations"}),
    "scenario-end": frozenset({"sc", "outcome"}),
    "run-end": frozenset({"scenarios"}),
}
"""The keys each event must carry (``drivers/PROTOCOL.md``, "Events"), besides ``seq`` and ``ev``."""

ProblemKind = Literal["malformed", "incomplete", "unknown-event"]

_PARTIAL_PREFIXES = tuple(PREFIX[:n] for n in range(1, len(PREFIX)))
# A capture record of its own: a printk stamp, a DebugView row (tab or CSV), an ISO host time.
_CAPTURE_PREFIX = re.compile(r"\s*\[\s*\d+\.\d+\]|\d+\t|\d+,\"|\d{4}-\d\d-\d\dT\d")
_SEQ = re.compile(r"\bseq=(\d+)")
_QUOTED_LINE = re.compile(r"(?::| in) '.*'$")  # ProtocolError quotes the line; the problem shows it anyway
_CACHE_LIMIT = 16384
_MAX_PROBLEM_SEQS = 100_000
_START, _END = 1, 2
_OK, _INCOMPLETE, _MALFORMED, _UNKNOWN = 0, 1, 2, 3
_make = object.__new__
_fill = object.__setattr__


@dataclass(frozen=True)
class ProtocolProblem:
    """A line with the protocol prefix that is not a usable event, or an event of an unknown kind."""

    lineno: int
    line: str
    message: str
    kind: ProblemKind = "malformed"
    seq: int | None = None
    """The line's ``seq`` when it could be read, so the lost-line check does not count it twice."""

    def where(self) -> str:
        """``line N: <text>`` for reports."""
        return f"line {self.lineno}: {self.line.strip()}"


# A parse-cache entry: ev, fields, msg, sc, scenario flag, status, problem message.
_Entry = tuple[str, Mapping[str, str], "str | None", str, int, int, str]


class EventReader:
    """Streams events out of captured lines; keeps protocol problems and per-scenario tails.

    Use :meth:`read` for a whole capture (it flushes at the end), or :meth:`feed` line by line and
    :meth:`close` at the end. Lines that are not protocol lines go to ``on_other_line(text, lineno)``
    (a crash scanner, a text-verdict reader).
    """

    def __init__(
        self,
        *,
        tail: int = 8,
        max_parts: int = 3,
        max_problems: int = 200,
        on_other_line: Callable[[str, int], None] | None = None,
    ) -> None:
        self.lineno = 0
        """Lines read so far (the number of the last one)."""
        self.problems: list[ProtocolProblem] = []
        """The first ``max_problems`` problems; ``problem_count`` counts them all."""
        self.problem_count = 0
        self.problem_seqs: set[int] = set()
        """``seq`` values of malformed protocol lines (their loss is explained by the problem)."""
        self._tail = tail
        self._max_parts = max(1, max_parts)
        self._max_problems = max_problems
        self._on_other = on_other_line
        self._cache: dict[object, _Entry] = {}
        self._tails: dict[str, deque[tuple[int, str]]] = {}
        self._open: list[str] = []
        self._held: list[tuple[int, str]] = []
        self._joined = ""

    # -- reading ---------------------------------------------------------------------------------

    def read(self, lines: Iterable[str]) -> Iterator[Event]:
        """Every event in ``lines`` (a whole capture), in line order; flushes a pending split at the end."""
        return chain(self._events(lines), _Later(self.close))

    def feed(self, line: str) -> list[Event]:
        """The events completed by one more line (usually zero or one)."""
        return list(self._events((line,)))

    def close(self) -> list[Event]:
        """End of the capture: a line still waiting for its continuation is judged as it stands."""
        return self._give_up() if self._held else []

    def tails(self) -> dict[str, tuple[tuple[int, str], ...]]:
        """Per scenario, the last lines seen while it ran: ``(line number, text)``, oldest first."""
        return {name: tuple(lines) for name, lines in self._tails.items()}

    def _events(self, lines: Iterable[str]) -> Iterator[Event]:
        # The hot loop: a protocol line whose body (everything after seq) was seen before costs two
        # finds, a few slices and one dict lookup. Anything unusual goes to the slow paths below.
        cache = self._cache
        tails = self._tails
        lead = PREFIX + "seq="
        skip = len(lead)
        lineno = self.lineno
        try:
            for raw in lines:
                lineno += 1
                line = raw.rstrip("\r\n")
                if self._held:
                    yield from self._continue(line, lineno)
                    continue
                start = line.find(lead)
                if start < 0:
                    if PREFIX in line:
                        yield from self._slow(line, lineno)
                    else:
                        self._other(line, lineno)
                    continue
                start += skip
                space = line.find(" ", start)
                seq_text = line[start:space]
                if space < 0 or not (seq_text.isdecimal() and seq_text.isascii()):
                    yield from self._slow(line, lineno)
                    continue
                rest = line[space + 1 :]
                key: object = rest
                if rest.endswith('"'):  # maybe a quoted CSV column: the quote belongs to the capture
                    key = (line[start - skip - 1 : start - skip] == '"', rest)
                entry = cache.get(key)
                if entry is None:
                    entry = self._entry(key, line, lineno)
                ev, fields, msg, scenario, flag, status, _ = entry
                if status:
                    yield from self._slow(line, lineno)
                    continue
                event = _make(Event)
                _fill(
                    event,
                    "__dict__",
                    {
                        "seq": int(seq_text),
                        "ev": ev,
                        "fields": fields,
                        "msg": msg,
                        "line": line,
                        "lineno": lineno,
                    },
                )
                if scenario:
                    lines_of = tails.get(scenario)
                    if lines_of is None:
                        lines_of = tails[scenario] = deque(maxlen=self._tail)
                    lines_of.append((lineno, line))
                    if flag:
                        self._track(scenario, flag)
                yield event
        finally:
            self.lineno = lineno

    # -- the slow paths ----------------------------------------------------------------------------

    def _entry(self, key: object, line: str, lineno: int) -> _Entry:
        """Parse a body not seen before and remember what it is."""
        status, event, message = self._judge(line, lineno)
        if event is None:
            entry: _Entry = ("", {}, None, "", 0, status, message)
        else:
            flag = _START if event.ev == "scenario-start" else _END if event.ev == "scenario-end" else 0
            entry = (event.ev, event.fields, event.msg, event.scenario, flag, status, message)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = entry
        return entry

    @staticmethod
    def _judge(line: str, lineno: int) -> tuple[int, Event | None, str]:
        """Parse ``line``: its status, the event (unless malformed), and what is wrong with it."""
        try:
            event = parse_line(line, lineno)
        except ProtocolError as error:
            return _MALFORMED, None, _QUOTED_LINE.sub("", str(error))
        if event is None:  # a join that did not complete a split prefix
            return _MALFORMED, None, "no protocol prefix"
        required = REQUIRED_KEYS.get(event.ev)
        if required is None:
            return _UNKNOWN, event, f"unknown event kind ev={event.ev}"
        missing = required.difference(event.fields)
        if missing:
            return _INCOMPLETE, event, f"ev={event.ev} without {', '.join(sorted(missing))}"
        return _OK, event, ""

    def _slow(self, line: str, lineno: int) -> list[Event]:
        """A protocol line the fast path did not take: parse it fully; hold it if it may be split."""
        status, event, _ = self._judge(line, lineno)
        if status == _OK:
            assert event is not None
            return [self._emit(event)]
        self._held = [(lineno, line)]
        self._joined = line
        if self._max_parts == 1:
            return self._give_up()
        return []

    def _process(self, line: str, lineno: int) -> list[Event]:
        """One line already counted, the slow way (lines taken up again after a failed join)."""
        if self._held:
            return self._continue(line, lineno)
        if PREFIX in line:
            return self._slow(line, lineno)
        self._other(line, lineno)
        return []

    def _other(self, line: str, lineno: int) -> None:
        """A line without the protocol prefix: maybe the first half of a split prefix, else foreign."""
        if self._max_parts > 1 and line.endswith(_PARTIAL_PREFIXES):
            self._held = [(lineno, line)]
            self._joined = line
            return
        self._foreign(line, lineno)

    def _foreign(self, line: str, lineno: int) -> None:
        """Foreign text: it belongs to the tails of the scenarios running, and to the line listener."""
        for name in self._open:
            lines_of = self._tails.get(name)
            if lines_of is not None:
                lines_of.append((lineno, line))
        if self._on_other is not None:
            self._on_other(line, lineno)

    def _continue(self, line: str, lineno: int) -> list[Event]:
        """A line after a held one: its continuation, or proof that there is none."""
        parts = sum(1 for _, text in self._held if text.strip())
        if not line.strip():
            if len(self._held) < 2 * self._max_parts:  # blank lines in between are skipped, boundedly
                self._held.append((lineno, line))
                return []
        elif PREFIX not in line and not _CAPTURE_PREFIX.match(line):
            first_lineno = self._held[0][0]
            for joined in (self._joined + line, f"{self._joined} {line}"):
                status, event, _ = self._judge(joined, first_lineno)
                if status == _OK:
                    assert event is not None
                    log.debug(
                        "line %d: rejoined a protocol line split over %d lines", first_lineno, parts + 1
                    )
                    self._held = []
                    self._joined = ""
                    return [self._emit(event)]
            if parts + 1 < self._max_parts:
                self._held.append((lineno, line))
                self._joined += line
                return []
        return self._give_up() + self._process(line, lineno)

    def _give_up(self) -> list[Event]:
        """The held line has no continuation: judge it alone, then take the lines after it as they are."""
        (lineno, first), *after = self._held
        self._held = []
        self._joined = ""
        events: list[Event] = []
        if PREFIX in first:
            status, event, message = self._judge(first, lineno)
            if status == _UNKNOWN and event is not None:
                self._problem(lineno, first, message, "unknown-event", event.seq)
                events.append(self._emit(event))
            else:
                seq = event.seq if event is not None else _seq_of(first)
                kind: ProblemKind = "incomplete" if status == _INCOMPLETE else "malformed"
                self._problem(lineno, first, message, kind, seq)
        else:
            self._foreign(first, lineno)
        for number, text in after:
            events.extend(self._process(text, number))
        return events

    def _emit(self, event: Event) -> Event:
        """Bookkeeping for an event that took a slow path."""
        scenario = event.scenario
        if scenario:
            lines_of = self._tails.get(scenario)
            if lines_of is None:
                lines_of = self._tails[scenario] = deque(maxlen=self._tail)
            lines_of.append((event.lineno, event.line))
            if event.ev in ("scenario-start", "scenario-end"):
                self._track(scenario, _START if event.ev == "scenario-start" else _END)
        return event

    def _track(self, scenario: str, flag: int) -> None:
        """Keep the list of scenarios running at this point of the capture (for foreign-line tails)."""
        if flag == _START:
            if scenario not in self._open:
                self._open.append(scenario)
        elif scenario in self._open:
            self._open.remove(scenario)

    def _problem(self, lineno: int, line: str, message: str, kind: ProblemKind, seq: int | None) -> None:
        self.problem_count += 1
        if seq is not None and kind != "unknown-event" and len(self.problem_seqs) < _MAX_PROBLEM_SEQS:
            self.problem_seqs.add(seq)
        if len(self.problems) < self._max_problems:
            self.problems.append(ProtocolProblem(lineno, line, message, kind, seq))


class _Later:
    """An iterable made only when iterated: the events a reader flushes after the last line."""

    def __init__(self, produce: Callable[[], list[Event]]) -> None:
        self._produce = produce

    def __iter__(self) -> Iterator[Event]:
        return iter(self._produce())


def _seq_of(line: str) -> int | None:
    """The ``seq`` of a malformed protocol line, if it can still be read."""
    at = line.find(PREFIX)
    match = _SEQ.match(line, at + len(PREFIX)) if at >= 0 else None
    return int(match.group(1)) if match else None


def open_capture(path: Path) -> TextIO:
    """Open a capture file for reading lines: UTF-8 (or UTF-16 with a BOM, as some Windows tools save).

    Undecodable bytes are replaced, never fatal. Lines end at LF only, so a stray CR inside a line does
    not split it. Raises OSError when the file cannot be opened.
    """
    with path.open("rb") as probe:
        head = probe.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif len(head) >= 4 and head[1] == 0 and head[3] == 0 and head[0] and head[2]:
        encoding = "utf-16-le"  # UTF-16 without a BOM: every other byte of ASCII text is NUL
    else:
        encoding = "utf-8"
    return path.open(encoding=encoding, errors="replace", newline="\n")
