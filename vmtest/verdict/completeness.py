"""Completeness: every requested scenario started and ended; otherwise it hung, or never ran.

A scenario that started and has no ``scenario-end`` hung (unless a crash explains it: the verdict
decides that); its report quotes the last lines seen while it ran. One that never started did not run.
A ``run-end`` whose ``scenarios=N`` disagrees with the scenario starts of its driver load is reported
too (a lost ``scenario-start``, or a driver that ran something it did not announce).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from vmtest.verdict.findings import Finding, quote
from vmtest.verdict.timeline import Timeline

__all__ = ["check_completeness"]

CHECK = "completeness"


def check_completeness(
    timeline: Timeline,
    names: Iterable[str],
    tails: Mapping[str, Sequence[tuple[int, str]]],
) -> tuple[dict[str, Finding], list[Finding]]:
    """Per scenario that hung or never ran, the finding; and the run-level findings. Pure."""
    per_scenario: dict[str, Finding] = {}
    for name in names:
        spans = timeline.spans.get(name)
        if not spans:
            per_scenario[name] = Finding(CHECK, "not run: no scenario-start for it in the capture", (), name)
            continue
        open_spans = [span for span in spans if not span.ended]
        if open_spans:
            span = open_spans[-1]
            started = f"started at line {span.start_line}" if span.start_line else "started"
            lines = tuple(quote(item) for item in tails.get(name, ()))
            message = f"hang: {started} but never ended (no scenario-end before the capture ended)"
            if lines:
                message += "; the last lines seen while it ran are quoted"
            per_scenario[name] = Finding(CHECK, message, lines, name)
    run_level = [
        Finding(
            CHECK,
            f"run-end says {event.get('scenarios')} scenarios, but {started} scenario-start lines were seen "
            "in this driver load",
            (event.where(),),
        )
        for event, started in timeline.run_ends
        if event.int("scenarios", -1) != started
    ]
    return per_scenario, run_level
