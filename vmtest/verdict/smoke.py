"""The verdict of a smoke test: the driver loaded, its exerciser ran, it unloaded, and the kernel kept quiet.

One test, named after the driver. It fails when loading or unloading failed (with what the kernel
said), when the exerciser exited with an error, when the kernel printed a report (see
:mod:`vmtest.verdict.kernel_reports`: each is quoted), or when the guest crashed (a Windows bugcheck,
a panic QEMU reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmtest.verdict.crashes import Crash
from vmtest.verdict.findings import Finding, printable
from vmtest.verdict.kernel_reports import KernelReport
from vmtest.verdict.verdict import RunVerdict, ScenarioVerdict, Status

__all__ = ["ExerciserResult", "smoke_verdict"]

_OUTPUT_LINES = 20


@dataclass(frozen=True)
class ExerciserResult:
    """How the exerciser ended: its command, exit code, and output."""

    command: str
    exit_code: int
    output: str


def smoke_verdict(
    name: str,
    *,
    reports: Sequence[KernelReport],
    crashes: Sequence[Crash] = (),
    driver_error: str = "",
    driver_output: str = "",
    exerciser: ExerciserResult | None = None,
    notes: Sequence[str] = (),
    dropped_reports: int = 0,
) -> RunVerdict:
    """The verdict of one smoke test of the driver ``name``; pure."""
    findings: list[Finding] = []
    if driver_error:
        findings.append(Finding("load", driver_error, _lines(driver_output), name))
    if exerciser is not None and exerciser.exit_code != 0:
        message = f"the exerciser `{exerciser.command}` exited with {exerciser.exit_code}"
        findings.append(Finding("exerciser", message, _lines(exerciser.output), name))
    for report in reports:
        findings.append(Finding("kernel-report", report.describe(), tuple(report.lines), name))
    if dropped_reports:
        findings.append(Finding("kernel-report", f"... and {dropped_reports} more kernel reports", (), name))
    for crash in crashes:
        lines = (f"line {crash.lineno}: {crash.line}",) if crash.lineno else ()
        findings.append(Finding("crash", f"the guest crashed: {crash.describe()}", lines, name))
    status: Status = "crashed" if crashes else "failed" if findings else "passed"
    scenario = ScenarioVerdict(
        name, status, tuple(findings), tuple(printable(note) for note in notes), tuple(crashes)
    )
    return RunVerdict((scenario,), crashes=tuple(crashes))


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line for line in text.strip().splitlines()[-_OUTPUT_LINES:] if line.strip())
