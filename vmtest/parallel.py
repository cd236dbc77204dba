"""``vmtest run -j N``: the selected scenarios spread over N VMs at once, judged and reported as one run.

A face of :func:`vmtest.pipeline.run` (protocol mode: text and smoke drivers load once, on one VM).

Each VM is a whole pipeline (its own :class:`~vmtest.session.VmSession` and run directory) under one
parent run directory; all of them run in one event loop, the thread that spawns QEMU (its parent-death
signal is tied to it). Ports and sockets never collide: forwards are chosen over QMP with retries,
QMP and the KD link are socket pairs, and the console is a file in the VM's run directory. Each VM's
capture is judged on its own (sequence numbers are per VM); the verdicts and outcomes are then merged
so that the parent directory gets the run's single ``verdicts.json``, JUnit file and HTML report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

from vmtest.config.models import VmtestConfig
from vmtest.machine.rundir import RunDirectory
from vmtest.pipeline import RunOutcome, RunRequest, run_pipeline
from vmtest.progress import Progress
from vmtest.verdict.verdict import RunVerdict

__all__ = ["ParallelRun", "merge_outcomes", "merge_verdicts", "run_parallel", "split"]

_TAIL_PER_VM = 20


def split(scenarios: Sequence[str], jobs: int) -> list[tuple[str, ...]]:
    """Deal ``scenarios`` round-robin into at most ``jobs`` non-empty groups, keeping their order."""
    count = max(1, min(jobs, len(scenarios)))
    return [tuple(scenarios[index::count]) for index in range(count)]


@dataclasses.dataclass(frozen=True)
class ParallelRun:
    """The parent run directory and the outcome of each VM, in the order of :func:`split`'s groups."""

    run_dir: Path
    outcomes: tuple[RunOutcome, ...]


class _Labelled(Progress):
    """Another progress, with the VM's label in front of every phase and note."""

    def __init__(self, inner: Progress, label: str) -> None:
        self.inner = inner
        self.label = label

    @contextlib.contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        """The inner phase, labelled."""
        with self.inner.phase(f"{self.label}/{name}", description):
            yield

    def note(self, message: str) -> None:
        """The inner note, labelled."""
        self.inner.note(f"{self.label}: {message}")


async def run_parallel(
    config: VmtestConfig, request: RunRequest, progress: Progress, jobs: int
) -> ParallelRun:
    """Run ``request.scenarios`` on up to ``jobs`` VMs at once, each in a run directory of one parent."""
    parent = RunDirectory.create(config.artifacts, "run").path
    child_config = config.model_copy(update={"artifacts": parent})
    groups = split(request.scenarios, jobs)
    progress.note(f"run directory: {parent} ({len(groups)} VMs)")
    outcomes = await asyncio.gather(
        *(
            run_pipeline(
                child_config,
                dataclasses.replace(request, scenarios=group),
                _Labelled(progress, f"vm{number}"),
            )
            for number, group in enumerate(groups, 1)
        )
    )
    return ParallelRun(parent, tuple(outcomes))


def merge_verdicts(verdicts: Sequence[RunVerdict]) -> RunVerdict:
    """One verdict from the VMs' verdicts: every scenario, finding, crash and note, events summed."""
    return RunVerdict(
        scenarios=tuple(item for verdict in verdicts for item in verdict.scenarios),
        findings=tuple(item for verdict in verdicts for item in verdict.findings),
        crashes=tuple(item for verdict in verdicts for item in verdict.crashes),
        notes=tuple(item for verdict in verdicts for item in verdict.notes),
        events=sum(verdict.events for verdict in verdicts),
    )


def merge_outcomes(run: ParallelRun) -> RunOutcome:
    """One outcome for the reports, in the parent directory: the first error of each kind wins."""
    outcomes = run.outcomes
    failed = next((o for o in outcomes if o.infra_error or o.driver_error or o.interrupted or o.hung), None)
    tail: list[str] = []
    for number, outcome in enumerate(outcomes, 1):
        tail += [f"vm{number}: {line}" for line in outcome.capture_tail[-_TAIL_PER_VM:]]
    return RunOutcome(
        run_dir=run.run_dir,
        mode=outcomes[0].mode,
        requested=tuple(name for outcome in outcomes for name in outcome.requested),
        events=[event for outcome in outcomes for event in outcome.events],
        protocol_problems=[problem for outcome in outcomes for problem in outcome.protocol_problems],
        capture_events=[event for outcome in outcomes for event in outcome.capture_events],
        crash_data=[data for outcome in outcomes for data in outcome.crash_data],
        screenshots=[shot for outcome in outcomes for shot in outcome.screenshots],
        capture_tail=tail,
        infra_error=next((o.infra_error for o in outcomes if o.infra_error is not None), None),
        driver_error=next((o.driver_error for o in outcomes if o.driver_error is not None), None),
        interrupted=any(outcome.interrupted for outcome in outcomes),
        hung=any(outcome.hung for outcome in outcomes),
        phase=failed.phase if failed is not None else outcomes[-1].phase,
        phases={
            f"vm{number}/{phase}": result
            for number, outcome in enumerate(outcomes, 1)
            for phase, result in outcome.phases.items()
        },
        ended_by=", ".join(dict.fromkeys(outcome.ended_by for outcome in outcomes if outcome.ended_by)),
    )
