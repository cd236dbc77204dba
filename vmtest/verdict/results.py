"""Results: each scenario's counter is right, and every worker thread finished all its iterations.

At ``scenario-end`` with ``outcome=done``:

* every ``counter`` has ``value == expected``, and ``expected == threads x iterations`` when the
  scenario's ``params`` name both (the contention scenarios of ``drivers/PROTOCOL.md``);
* the scenarios whose table row promises a counter have one;
* with a ``threads`` parameter, each thread ``t=0..threads-1`` has exactly one ``thread-end``, with
  ``iterations`` equal to the parameter when there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from vmtest.events.protocol import Event
from vmtest.verdict.check import feed_in_order, parse_params
from vmtest.verdict.findings import Finding, FindingLog

__all__ = ["COUNTER_SCENARIOS", "ResultsCheck", "check_results"]

CHECK = "results"
COUNTER_SCENARIOS = frozenset({"kmutex_contention", "fast_mutex_contention", "grt_contention", "to_owned"})
"""Scenarios that must report a ``counter`` (``drivers/PROTOCOL.md``, "Scenarios")."""


class _Scenario:
    __slots__ = ("counters", "start", "thread_ends")

    def __init__(self, start: Event | None) -> None:
        self.start = start
        self.counters: list[Event] = []
        self.thread_ends: dict[str, list[Event]] = {}


class ResultsCheck:
    """Collects each scenario's counters and thread ends, and judges them at its end."""

    name = CHECK

    def __init__(self, limit: int = 20) -> None:
        self._scenarios: dict[str, _Scenario] = {}
        self._log = FindingLog(CHECK, limit)

    def handlers(self) -> Mapping[str, Callable[[Event], None]]:
        """The events this check follows."""
        return {
            "scenario-start": self._start,
            "counter": self._counter,
            "thread-end": self._thread_end,
            "scenario-end": self._end,
        }

    def finish(self) -> list[Finding]:
        """The failures found (scenarios that never ended are the completeness check's)."""
        return self._log.findings()

    def _scenario(self, event: Event) -> _Scenario:
        state = self._scenarios.get(event.scenario)
        if state is None:
            state = self._scenarios[event.scenario] = _Scenario(None)
        return state

    def _start(self, event: Event) -> None:
        self._scenarios[event.scenario] = _Scenario(event)

    def _counter(self, event: Event) -> None:
        state = self._scenario(event)
        if len(state.counters) < 100:
            state.counters.append(event)

    def _thread_end(self, event: Event) -> None:
        ends = self._scenario(event).thread_ends
        if len(ends) < 10_000:
            ends.setdefault(event.thread, []).append(event)

    def _end(self, event: Event) -> None:
        state = self._scenarios.pop(event.scenario, None) or _Scenario(None)
        if event.get("outcome") != "done":
            return
        name = event.scenario
        params = parse_params(state.start.get("params")) if state.start is not None else {}
        threads = _number(params.get("threads"))
        iterations = _number(params.get("iterations"))
        for key in ("threads", "iterations"):
            if key in params and _number(params[key]) is None:
                assert state.start is not None
                self._log.add(name, f"params {key}:{params[key]} is not a number", state.start)
        self._counters(name, state, event, threads, iterations)
        if threads is not None:
            self._thread_ends(name, state, event, threads, iterations)

    def _counters(
        self, name: str, state: _Scenario, end: Event, threads: int | None, iterations: int | None
    ) -> None:
        if not state.counters and name in COUNTER_SCENARIOS:
            self._log.add(name, "no counter was reported before the scenario's end", end)
        for counter in state.counters:
            value, expected = _number(counter.get("value")), _number(counter.get("expected"))
            if value is None or expected is None:
                self._log.add(name, "counter without a numeric value and expected", counter)
                continue
            if value != expected:
                self._log.add(
                    name,
                    f"counter {counter.mutex or ''} is {value}, expected {expected} "
                    f"({'lost' if value < expected else 'extra'} updates: {abs(expected - value)})",
                    counter,
                )
            if threads is not None and iterations is not None and expected != threads * iterations:
                assert state.start is not None
                self._log.add(
                    name,
                    f"counter expected={expected}, but the parameters give threads x iterations = "
                    f"{threads} x {iterations} = {threads * iterations}",
                    counter,
                    state.start,
                )

    def _thread_ends(
        self, name: str, state: _Scenario, end: Event, threads: int, iterations: int | None
    ) -> None:
        expected = {str(index) for index in range(threads)}
        missing = sorted(expected.difference(state.thread_ends), key=int)
        if missing:
            shown = ", ".join(f"t={thread}" for thread in missing[:20])
            self._log.add(
                name,
                f"no thread-end for {shown}{' ...' if len(missing) > 20 else ''} "
                f"(the scenario has {threads} thread{'s' if threads != 1 else ''}, t=0..{threads - 1})",
                *([state.start] if state.start is not None else []),
                end,
            )
        for thread, ends in state.thread_ends.items():
            if thread not in expected:
                self._log.add(
                    name, f"thread-end for t={thread}, but the scenario has t=0..{threads - 1}", ends[0]
                )
            if len(ends) > 1:
                self._log.add(name, f"t={thread} ended {len(ends)} times", *ends[:3])
            done = _number(ends[0].get("iterations"))
            if iterations is not None and done != iterations:
                self._log.add(
                    name,
                    f"t={thread} ended after {ends[0].get('iterations')} iterations, expected {iterations}",
                    ends[0],
                )


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def check_results(events: Iterable[Event]) -> list[Finding]:
    """Counter and thread-end failures among ``events`` (any order; sorted by ``seq`` here). Pure."""
    check = ResultsCheck()
    feed_in_order(check, events)
    return check.finish()
