"""The ``seq`` check: put events in their true order, and find lost and repeated lines.

Every event line of one driver load carries ``seq`` = 1, 2, ... N (``drivers/PROTOCOL.md``, "The
sequence number"): a gap is a lost line, a repeat a duplicated one. Lines may reach the capture out of
order (``seq`` is taken under the lock, the print happens after), so this check is also the stage that
sorts the stream: events wait in a heap until the next ``seq`` arrives; when more than ``window`` events
are waiting, the missing numbers are declared lost. A capture shorter than the window is therefore
simply sorted; a longer one needs memory for the window only, never for the whole log.

A ``run-start`` with ``seq=1`` after other events starts a new driver load: numbering restarts (only a
copy of it right after the first is a repeated line).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from vmtest.events.protocol import Event
from vmtest.verdict.findings import Finding, FindingLog, compact_ranges

__all__ = ["SequenceCheck", "check_sequence"]

CHECK = "sequence"
_RECENT = 1 << 12  # how far back a repeated line is recognised as a copy of the original
_MASK = _RECENT - 1
_MAX_GAPS = 100_000  # gaps remembered to tell a late line from a repeat; beyond, only counted


class _Gap:
    """Lost numbers ``low..high`` of one driver load, between two events."""

    __slots__ = ("after", "before", "high", "low", "run")

    def __init__(self, run: int, low: int, high: int, before: Event | None, after: Event | None) -> None:
        self.run = run
        self.low = low
        self.high = high
        self.before = before
        self.after = after

    def scenarios(self) -> list[str]:
        """Where the loss happened: the scenario of the events around it ("" when none)."""
        names = [
            event.scenario for event in (self.before, self.after) if event is not None and event.scenario
        ]
        return sorted(set(names)) or [""]


class SequenceCheck:
    """Sorts events by ``seq`` within a bounded window, passing each to the handlers of its kind.

    It also finds the gaps and repeats.
    """

    name = CHECK

    def __init__(
        self,
        handlers: Mapping[str, Sequence[Callable[[Event], None]]],
        window: int = 65536,
        limit: int = 20,
    ) -> None:
        self._handlers = handlers
        self._window = window
        self._next = 1
        self._heap: list[tuple[int, int, Event]] = []
        self._pushed = 0
        self._recent: list[Event | None] = [None] * _RECENT
        self._run = 1
        self._gaps: list[_Gap] = []
        self._gap_lows: list[int] = []  # of the current run, for telling late lines from repeats
        self._gap_highs: list[int] = []
        self._gap_limit = 10 * limit
        self._gap_count = 0
        self._repeats = FindingLog(CHECK, limit)

    def push_all(self, events: Iterable[Event]) -> int:
        """Take every event of ``events`` (capture order); returns how many. The hot loop of a verdict."""
        handlers = self._handlers
        recent = self._recent
        count = 0
        for event in events:
            count += 1
            seq = event.seq
            if seq == self._next and not self._heap:  # the common case: in order, nothing waiting
                self._next = seq + 1
                recent[seq & _MASK] = event
                for handler in handlers.get(event.ev, ()):
                    handler(event)
            else:
                self.push(event)
                recent = self._recent  # a new driver load starts a new ring
        return count

    def push(self, event: Event) -> None:
        """Take the next event in capture order; events leave in ``seq`` order."""
        seq = event.seq
        if seq == self._next and not self._heap:
            self._next = seq + 1
            self._recent[seq & _MASK] = event
            for handler in self._handlers.get(event.ev, ()):
                handler(event)
            return
        if (
            seq == 1
            and event.ev == "run-start"
            and self._next > 1
            and not (self._next == 2 and self._is_repeat(event))
        ):
            self._drain(force=True)
            self._new_run()
        if seq < self._next:
            self._late(event)
            return
        self._pushed += 1
        heapq.heappush(self._heap, (seq, self._pushed, event))
        self._drain(force=False)

    def finish(self, excused: Collection[int] = ()) -> list[Finding]:
        """Flush the window and return the findings.

        Lost ``seq`` values in ``excused`` are not counted: those lines reached the capture but were
        malformed, and are reported as protocol problems instead.
        """
        self._drain(force=True)
        return self._gap_findings(excused) + self._repeats.findings()

    def _drain(self, *, force: bool) -> None:
        heap = self._heap
        while heap:
            seq, _, event = heap[0]
            if seq < self._next:
                heapq.heappop(heap)
                self._late(event)
                continue
            if seq > self._next:
                if not force and len(heap) <= self._window:
                    return
                self._gap(self._next, seq - 1, event)
            heapq.heappop(heap)
            self._next = seq + 1
            self._recent[seq & _MASK] = event
            for handler in self._handlers.get(event.ev, ()):
                handler(event)

    def _new_run(self) -> None:
        self._run += 1
        self._next = 1
        self._recent = [None] * _RECENT
        self._gap_lows = []
        self._gap_highs = []

    def _gap(self, low: int, high: int, after: Event) -> None:
        self._gap_count += 1
        if len(self._gap_lows) < _MAX_GAPS:
            self._gap_lows.append(low)
            self._gap_highs.append(high)
        if len(self._gaps) < self._gap_limit:
            before = self._recent[(low - 1) & _MASK]
            if before is not None and before.seq != low - 1:
                before = None
            self._gaps.append(_Gap(self._run, low, high, before, after))
        self._next = high + 1

    def _is_repeat(self, event: Event) -> bool:
        original = self._recent[event.seq & _MASK]
        return original is not None and original.seq == event.seq and _same(original, event)

    def _late(self, event: Event) -> None:
        """An event whose ``seq`` was already passed: a repeat, or a line later than the window."""
        seq = event.seq
        original = self._recent[seq & _MASK]
        scenario = event.scenario
        if original is not None and original.seq == seq:
            if _same(original, event):
                self._repeats.add(
                    scenario, f"seq {seq} repeated: the same line was captured twice", original, event
                )
            else:
                self._repeats.add(scenario, f"seq {seq} used by two different events", original, event)
            return
        at = bisect_right(self._gap_lows, seq) - 1
        if at >= 0 and seq <= self._gap_highs[at]:
            self._repeats.add(
                scenario,
                f"seq {seq} arrived after {self._window} later events: too late to be ordered, "
                "counted as lost",
                event,
            )
            return
        self._repeats.add(scenario, f"seq {seq} repeated (the first one was too long ago to quote)", event)

    def _gap_findings(self, excused: Collection[int]) -> list[Finding]:
        lost: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        quotes: defaultdict[str, list[Event]] = defaultdict(list)
        runs = self._run > 1
        holes = sorted(excused)
        for gap in self._gaps:
            pieces = _without(gap.low, gap.high, holes)
            if not pieces:
                continue
            for name in gap.scenarios():
                key = f"{name}\0{gap.run}" if runs else name
                lost[key].extend(pieces)
                if len(quotes[key]) < 6:
                    quotes[key].extend(event for event in (gap.before, gap.after) if event is not None)
        findings = []
        for key, ranges in lost.items():
            name, _, run = key.partition("\0")
            count = sum(high - low + 1 for low, high in ranges)
            where = f" (driver load {run})" if run else ""
            message = (
                f"{count} line{'s' if count != 1 else ''} lost{where}: seq {compact_ranges(ranges)} never "
                "reached the capture (quoted: the events around the gaps)"
            )
            unique = list({(event.lineno, event.seq): event for event in quotes[key]}.values())
            findings.append(Finding(CHECK, message, tuple(event.where() for event in unique), name))
        if self._gap_count > len(self._gaps):
            more = self._gap_count - len(self._gaps)
            findings.append(Finding(CHECK, f"... and {more} more gaps in the sequence numbers", (), ""))
        return findings


def _same(first: Event, second: Event) -> bool:
    return first.ev == second.ev and first.fields == second.fields and first.msg == second.msg


def _without(low: int, high: int, holes: list[int]) -> list[tuple[int, int]]:
    """The range ``low..high`` minus the (sorted) ``holes``, as ranges."""
    pieces = []
    for hole in holes[bisect_left(holes, low) : bisect_right(holes, high)]:
        if hole > low:
            pieces.append((low, hole - 1))
        low = hole + 1
    if low <= high:
        pieces.append((low, high))
    return pieces


def check_sequence(events: list[Event] | tuple[Event, ...], excused: Collection[int] = ()) -> list[Finding]:
    """Lost and repeated lines among ``events`` (any order): the pure form of :class:`SequenceCheck`."""
    check = SequenceCheck({}, window=max(16, len(events)))
    for event in events:
        check.push(event)
    return check.finish(excused)
