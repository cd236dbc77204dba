"""When each scenario ran: its spans from ``scenario-start`` to ``scenario-end``, by line and by ``seq``.

The verdict uses it to know which scenarios ran and how they ended, and to attribute things that
happened at a position in the capture (a crash, a malformed line) to the scenario running there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vmtest.events.protocol import Event

__all__ = ["Span", "Timeline"]


@dataclass
class Span:
    """One run of a scenario, from its start (or its first event, if the start line was lost) to its end."""

    name: str
    start_line: int
    start: Event | None = None
    end_line: int | None = None
    end: Event | None = None
    outcome: str = ""
    """``done``, ``skipped`` or ``error`` from ``scenario-end`` (``passed``/``failed`` for text verdicts)."""
    message: str = ""

    @property
    def ended(self) -> bool:
        """Whether the scenario reached its end."""
        return self.end_line is not None

    def contains(self, lineno: int | None) -> bool:
        """Whether the scenario was running at capture line ``lineno`` (None: after the last line)."""
        if lineno is None:
            return self.end_line is None
        return self.start_line <= lineno and (self.end_line is None or lineno <= self.end_line)


class Timeline:
    """Scenario spans, fed with events in ``seq`` order (and text-verdict results)."""

    name = "timeline"

    def __init__(self) -> None:
        self.spans: dict[str, list[Span]] = {}
        self.run_ends: list[tuple[Event, int]] = []
        """Each ``run-end`` with the number of scenario starts seen in its driver load."""
        self._started_in_run = 0

    def handlers(self) -> Mapping[str, Callable[[Event], None]]:
        """Which events this follows (not the per-lock ones: other events of a scenario suffice)."""
        return {
            "run-start": self._run_start,
            "scenario-start": self._start,
            "scenario-end": self._end,
            "mutex": self._seen,
            "call": self._seen,
            "counter": self._seen,
            "thread-end": self._seen,
            "run-end": self._run_end,
        }

    def add(self, span: Span) -> None:
        """Add a span made elsewhere (a test found by a text verdict)."""
        self.spans.setdefault(span.name, []).append(span)

    def last(self, name: str) -> Span | None:
        """The most recent span of ``name``."""
        spans = self.spans.get(name)
        return spans[-1] if spans else None

    def running_at(self, lineno: int | None) -> str | None:
        """The scenario running at ``lineno``: of those started before and not ended, the last started."""
        best: Span | None = None
        for spans in self.spans.values():
            for span in spans:
                if span.contains(lineno) and (best is None or span.start_line > best.start_line):
                    best = span
        return best.name if best is not None else None

    def _run_start(self, event: Event) -> None:
        self._started_in_run = 0

    def _start(self, event: Event) -> None:
        self._started_in_run += 1
        self.add(Span(event.scenario, event.lineno, start=event))

    def _end(self, event: Event) -> None:
        span = self.last(event.scenario)
        if span is None or span.ended:
            span = Span(event.scenario, event.lineno)
            self.add(span)
        span.end_line = event.lineno
        span.end = event
        span.outcome = event.get("outcome")
        span.message = event.msg or ""

    def _seen(self, event: Event) -> None:
        name = event.scenario
        if name and name not in self.spans:  # its scenario-start never came: the span starts here
            self.add(Span(name, event.lineno))

    def _run_end(self, event: Event) -> None:
        self.run_ends.append((event, self._started_in_run))
