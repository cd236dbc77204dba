"""The verdict of a run: every check over the events, crashes and completeness, per scenario.

:class:`Judge` streams: events go in as they are read (in any order), through the ``seq`` window of
:mod:`vmtest.verdict.sequence`, to the checks, which keep only the state they need. :func:`judge` is
the same as one pure call. Neither does any I/O.

A scenario's status, most telling first:

* ``crashed``: a crash happened while it ran (a negative control that expects that crash passes);
* ``hang``: it started and never ended;
* ``not_run``: it never started;
* ``skipped`` / ``error``: the driver said so at its end;
* ``failed``: a check found something (a negative control fails when its check finds nothing);
* ``passed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vmtest.events.protocol import Event
from vmtest.events.reader import ProtocolProblem
from vmtest.verdict.completeness import check_completeness
from vmtest.verdict.config import VerdictConfig
from vmtest.verdict.contracts import ContractsCheck
from vmtest.verdict.crashes import Crash
from vmtest.verdict.exclusion import ExclusionCheck
from vmtest.verdict.findings import Finding, printable
from vmtest.verdict.lock_order import LockOrderCheck
from vmtest.verdict.results import ResultsCheck
from vmtest.verdict.sequence import SequenceCheck
from vmtest.verdict.text import TextResult
from vmtest.verdict.timeline import Span, Timeline

__all__ = ["Judge", "RunVerdict", "ScenarioVerdict", "Status", "judge"]

Status = Literal["passed", "failed", "crashed", "hang", "not_run", "skipped", "error"]
PASSING: frozenset[str] = frozenset({"passed", "skipped"})


@dataclass(frozen=True)
class ScenarioVerdict:
    """One scenario's outcome, what was found wrong, and notes that explain without failing."""

    name: str
    status: Status
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()
    crashes: tuple[Crash, ...] = ()

    @property
    def passed(self) -> bool:
        """Passed or skipped."""
        return self.status in PASSING

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "status": self.status,
            "findings": [finding.to_dict() for finding in self.findings],
            "notes": list(self.notes),
            "crashes": [crash.to_dict() for crash in self.crashes],
        }


@dataclass(frozen=True)
class RunVerdict:
    """The verdict of a whole run: per scenario, plus what belongs to no scenario."""

    scenarios: tuple[ScenarioVerdict, ...]
    findings: tuple[Finding, ...] = ()
    """Run-level findings: lost lines, malformed lines, crashes outside any scenario."""
    crashes: tuple[Crash, ...] = ()
    notes: tuple[str, ...] = ()
    events: int = 0

    @property
    def passed(self) -> bool:
        """Whether every scenario passed (or was skipped) and nothing is wrong at run level."""
        return bool(self.scenarios) and not self.findings and all(item.passed for item in self.scenarios)

    def counts(self) -> dict[str, int]:
        """How many scenarios have each status."""
        counts: dict[str, int] = {}
        for item in self.scenarios:
            counts[item.status] = counts.get(item.status, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "passed": self.passed,
            "counts": self.counts(),
            "events": self.events,
            "scenarios": [item.to_dict() for item in self.scenarios],
            "findings": [finding.to_dict() for finding in self.findings],
            "crashes": [crash.to_dict() for crash in self.crashes],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """The verdict as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def render(self, noun: str = "scenarios") -> str:
        """A short human report; ``noun`` names what was judged (scenarios, or a text driver's tests)."""
        counts = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in self.counts().items())
        head = "PASSED" if self.passed else "FAILED"
        out = [
            f"vmtest verdict: {head} ({len(self.scenarios)} {noun}: {counts or 'none'}; {self.events} events)"
        ]
        for item in self.scenarios:
            out.append(f"  {item.status.upper().replace('_', ' '):8} {item.name}")
            out += _render_findings(item.findings, "      ")
            out += [f"      note: {note}" for note in item.notes]
        if self.findings:
            out.append("  run:")
            out += _render_findings(self.findings, "      ")
        out += [f"  note: {note}" for note in self.notes]
        return "\n".join(out)


def _render_findings(findings: Iterable[Finding], indent: str) -> list[str]:
    out = []
    for finding in findings:
        out.append(f"{indent}{finding.check}: {finding.message}")
        out += [f"{indent}  {line}" for line in finding.lines]
    return out


class Judge:
    """Feeds events through the ``seq`` window to every check; :meth:`finish` gives the verdict."""

    def __init__(self, options: VerdictConfig | None = None) -> None:
        self.options = options or VerdictConfig()
        limit = self.options.findings_per_check
        self.timeline = Timeline()
        self._exclusion = ExclusionCheck(limit)
        self._checks = (self._exclusion, LockOrderCheck(), ResultsCheck(limit), ContractsCheck(limit))
        table: dict[str, list[Any]] = {}
        for part in (self.timeline, *self._checks):
            for kind, handler in part.handlers().items():
                table.setdefault(kind, []).append(handler)
        handlers = {kind: tuple(handlers) for kind, handlers in table.items()}
        self._sequence = SequenceCheck(handlers, window=self.options.reorder_window, limit=limit)
        self.events = 0

    def feed(self, event: Event) -> None:
        """Take one event (any order)."""
        self.events += 1
        self._sequence.push(event)

    def feed_all(self, events: Iterable[Event]) -> None:
        """Take every event of an iterable (a reader's stream)."""
        self.events += self._sequence.push_all(events)

    def still_held(self) -> dict[str, list[str]]:
        """Per scenario, the locks held when the events ended (notes for scenarios that did not end)."""
        return self._exclusion.still_held()

    def finish(
        self,
        *,
        requested: Sequence[str] = (),
        crashes: Sequence[Crash] = (),
        problems: Sequence[ProtocolProblem] = (),
        problem_count: int | None = None,
        problem_seqs: Iterable[int] = (),
        tails: Mapping[str, Sequence[tuple[int, str]]] | None = None,
        text_results: Sequence[TextResult] = (),
    ) -> RunVerdict:
        """The verdict, once every event was fed (call it once).

        ``problems`` are the reader's protocol problems (of ``problem_count`` in all), ``problem_seqs``
        the ``seq`` of every malformed line, ``tails`` its last lines per scenario.
        """
        excused = {*problem_seqs, *(problem.seq for problem in problems if problem.seq is not None)}
        findings = self._sequence.finish(excused)
        for check in self._checks:
            findings += check.finish()
        for result in text_results:
            self.timeline.add(_text_span(result))
        return _Verdict(self, requested, crashes, tails or {}, text_results).build(
            findings, problems, problem_count
        )


class _Verdict:
    """Puts the findings, crashes and spans together per scenario."""

    def __init__(
        self,
        judge: Judge,
        requested: Sequence[str],
        crashes: Sequence[Crash],
        tails: Mapping[str, Sequence[tuple[int, str]]],
        text_results: Sequence[TextResult],
    ) -> None:
        self.judge = judge
        self.held = judge.still_held()
        self.options = judge.options
        self.timeline = judge.timeline
        self.requested = list(dict.fromkeys(requested))
        self.crashes = _merged(crashes)
        self.tails = tails
        self.texts = {result.name: result for result in text_results}
        self.by_scenario: dict[str, list[Finding]] = {}
        self.notes: dict[str, list[str]] = {}
        self.run_findings: list[Finding] = []
        self.run_notes: list[str] = []

    def build(
        self, findings: list[Finding], problems: Sequence[ProtocolProblem], problem_count: int | None
    ) -> RunVerdict:
        for finding in findings:
            self._file(finding)
        self._problems(problems, problem_count)
        crashes_of = self._attribute_crashes()
        names = list(dict.fromkeys([*self.requested, *self.timeline.spans, *self.by_scenario]))
        names = [name for name in names if name]
        incomplete, run_level = check_completeness(self.timeline, names, self.tails)
        self.run_findings += run_level
        unrequested = set(names) - set(self.requested) if self.requested else set()
        verdicts = []
        for name in names:
            notes = self.notes.setdefault(name, [])
            notes += self.held.get(name, [])
            if name in unrequested:
                notes.append("not requested, but it ran")
            verdicts.append(self._scenario(name, incomplete.get(name), crashes_of.get(name, [])))
        if not names:
            self.run_findings.append(
                Finding(
                    "completeness", "no scenario found: the capture has no vmtest events and no text verdicts"
                )
            )
        return RunVerdict(
            tuple(verdicts),
            tuple(self.run_findings),
            tuple(self.crashes),
            tuple(printable(note) for note in self.run_notes),
            self.judge.events,
        )

    def _file(self, finding: Finding) -> None:
        if finding.scenario:
            self.by_scenario.setdefault(finding.scenario, []).append(finding)
        else:
            self.run_findings.append(finding)

    def _problems(self, problems: Sequence[ProtocolProblem], problem_count: int | None) -> None:
        for problem in problems:
            name = self.timeline.running_at(problem.lineno) or ""
            if problem.kind == "unknown-event":
                note = f"ignored an event of an unknown kind ({problem.message}): {problem.where()}"
                (self.notes.setdefault(name, []) if name else self.run_notes).append(note)
                continue
            self._file(
                Finding(
                    "protocol", f"{problem.kind} protocol line: {problem.message}", (problem.where(),), name
                )
            )
        shown = len(problems)
        if problem_count is not None and problem_count > shown:
            self.run_findings.append(
                Finding("protocol", f"... and {problem_count - shown} more protocol problems")
            )

    def _attribute_crashes(self) -> dict[str, list[Crash]]:
        """Each crash fails the scenario running when it happened (by its position in the capture)."""
        crashes_of: dict[str, list[Crash]] = {}
        for crash in self.crashes:
            name = self.timeline.running_at(crash.lineno)
            if name is None:
                lines = (f"line {crash.lineno}: {crash.line}",) if crash.lineno else ()
                self.run_findings.append(
                    Finding("crash", f"the guest crashed outside any scenario: {crash.describe()}", lines)
                )
            else:
                crashes_of.setdefault(name, []).append(crash)
        return crashes_of

    def _scenario(self, name: str, incomplete: Finding | None, crashes: list[Crash]) -> ScenarioVerdict:
        findings, missing = self._expected_findings(name, self.by_scenario.get(name, []), self.notes[name])
        notes = self.notes[name]
        expected_crash = self.options.expected_crashes.get(name)
        if crashes:
            unexpected = [
                crash for crash in crashes if expected_crash is None or not expected_crash.accepts(crash)
            ]
            for crash in crashes:
                if crash in unexpected:
                    findings.append(_crash_finding(name, crash, expected_crash is not None))
                else:
                    assert expected_crash is not None
                    how = (
                        "negative control: crashed as expected"
                        if expected_crash.required
                        else "crashed as allowed here"
                    )
                    notes.append(f"{how}: {crash.describe()}")
            status: Status = "crashed" if unexpected else "failed" if findings else "passed"
            return _verdict(name, status, findings, notes, crashes)
        span = self.timeline.last(name)
        if incomplete is not None or span is None:
            if span is None and self.crashes:
                notes.append("the guest had crashed before it could start")
            findings = [incomplete, *findings] if incomplete is not None else findings
            return _verdict(name, "not_run" if span is None else "hang", findings, notes, ())
        end = (span.end.where(),) if span.end is not None else ()
        if span.outcome == "skipped":
            notes.append(f"skipped: {span.message or 'no reason given'}")
            return _verdict(name, "failed" if findings else "skipped", findings, notes, ())
        if span.outcome == "error":
            error = Finding(
                "completeness", f"the driver could not run it: {span.message or 'no reason given'}", end, name
            )
            return _verdict(name, "error", [error, *findings], notes, ())
        if expected_crash is not None and expected_crash.required:
            message = (
                f"negative control: expected {expected_crash.describe()}, but the scenario ended normally"
            )
            findings.append(Finding("crash", message, end, name))
        findings += missing
        text = self.texts.get(name)
        if text is not None and text.outcome == "failed":
            lines = tuple(f"line {lineno}: {line.strip()}" for lineno, line in text.lines)
            findings.insert(0, Finding("text", "the driver reported this test failed", lines, name))
        return _verdict(name, "failed" if findings else "passed", findings, notes, ())

    def _expected_findings(
        self, name: str, findings: list[Finding], notes: list[str]
    ) -> tuple[list[Finding], list[Finding]]:
        """A negative control's expected findings become notes; missing ones become failures."""
        checks = self.options.expected_findings.get(name)
        if not checks:
            return list(findings), []
        kept = []
        for finding in findings:
            if finding.check in checks:
                notes.append(f"negative control: {finding.check} found it, as expected: {finding.message}")
            else:
                kept.append(finding)
        found = {finding.check for finding in findings}
        missing = [
            Finding(
                check,
                f"negative control: expected the {check} check to find a failure here; it found none",
                (),
                name,
            )
            for check in checks
            if check not in found
        ]
        return kept, missing


def _verdict(
    name: str, status: Status, findings: list[Finding], notes: list[str], crashes: Sequence[Crash]
) -> ScenarioVerdict:
    return ScenarioVerdict(
        name, status, tuple(findings), tuple(printable(note) for note in notes), tuple(crashes)
    )


def _crash_finding(name: str, crash: Crash, negative_control: bool) -> Finding:
    what = (
        "crashed, but not with a crash this negative control accepts"
        if negative_control
        else "the guest crashed"
    )
    lines = (f"line {crash.lineno}: {crash.line}",) if crash.lineno else ()
    return Finding("crash", f"{what}: {crash.describe()}", lines, name)


def _merged(crashes: Sequence[Crash]) -> list[Crash]:
    """One crash reported twice (QEMU's stop code and KD's banner) counts once, with both's details."""
    merged: list[Crash] = []
    for crash in crashes:
        twin = next(
            (
                index
                for index, seen in enumerate(merged)
                if crash.code is not None
                and seen.code == crash.code
                and {seen.source, crash.source} == {"kd", "qemu-hv"}
            ),
            None,
        )
        if twin is None:
            merged.append(crash)
            continue
        seen = merged[twin]
        kd, hv = (seen, crash) if seen.source == "kd" else (crash, seen)
        merged[twin] = Crash(
            "kd",
            kd.code,
            kd.params or hv.params,
            kd.driver or hv.driver,
            kd.message or hv.message,
            kd.screenshot or hv.screenshot,
            kd.lineno,
            kd.line,
        )
    return merged


def _text_span(result: TextResult) -> Span:
    return Span(result.name, result.start_line, end_line=result.end_line, outcome=result.outcome)


def judge(
    events: Iterable[Event],
    requested: Sequence[str] = (),
    crashes: Sequence[Crash] = (),
    options: VerdictConfig | None = None,
    *,
    problems: Sequence[ProtocolProblem] = (),
    tails: Mapping[str, Sequence[tuple[int, str]]] | None = None,
    text_results: Sequence[TextResult] = (),
) -> RunVerdict:
    """The verdict of a run; pure: no I/O.

    From its events (any order), the scenarios asked for (empty: those seen), the crashes reported, and
    optionally the reader's protocol problems and tails and the text verdicts' results. A reader's
    problems and tails are complete only once its stream is consumed: to judge while streaming, use
    :class:`Judge` (``feed_all``, then ``finish``).
    """
    referee = Judge(options)
    referee.feed_all(events)
    return referee.finish(
        requested=requested, crashes=crashes, problems=problems, tails=tails, text_results=text_results
    )
