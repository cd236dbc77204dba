"""``vmtest run``: the pipeline, its verdict, and every report, with exit codes CI can act on.

Exit codes: 0 every scenario passed, 1 a test failure (a scenario failed, crashed or hung, or the
driver could not be loaded), 2 bad configuration or usage, 3 an infrastructure failure (retry it),
130 interrupted. Whatever happens, the run directory gets its reports.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vmtest.capture.source import printable_lines
from vmtest.config import load_config
from vmtest.config.models import VmtestConfig
from vmtest.errors import EXIT_INFRA, EXIT_TEST_FAILURE, ConfigError, InfraError
from vmtest.events.scenarios import DEFAULT_SCENARIOS
from vmtest.loop import run_main
from vmtest.machine.confine import confinement_warnings
from vmtest.parallel import merge_outcomes, merge_verdicts, run_parallel
from vmtest.pipeline import RunOutcome, RunRequest, run_pipeline
from vmtest.progress import make_progress
from vmtest.report.github import write_github
from vmtest.report.html import LockEdge, write_html
from vmtest.report.junit import write_junit
from vmtest.report.model import FindingReport, RunReport, ScenarioReport
from vmtest.verdict.analyze import judge_lines
from vmtest.verdict.crashes import Crash, crash_from_qmp
from vmtest.verdict.lock_order import lock_edges
from vmtest.verdict.verdict import RunVerdict

__all__ = ["EXIT_INTERRUPTED", "run_command", "shard"]

EXIT_INTERRUPTED = 130


def shard(scenarios: Sequence[str], spec: str | None) -> tuple[str, ...]:
    """The stable share ``I/N`` of ``scenarios``: every N-th one, starting at the I-th, in sorted order."""
    if spec is None:
        return tuple(scenarios)
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"--shard takes I/N, such as 2/4 (got {spec!r})") from None
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {spec}: I must be between 1 and N")
    return tuple(name for position, name in enumerate(sorted(scenarios)) if position % count == index - 1)


def run_command(
    config_path: Path | None,
    *,
    driver: Path | None,
    scenarios: Sequence[str],
    artifacts: Path | None,
    junitxml: Path | None,
    json_output: bool,
    keep_vm: bool,
    shard_spec: str | None,
    warm: bool | None = None,
    jobs: int = 1,
) -> int:
    """Run the pipeline (on ``jobs`` VMs at once), judge it, write the reports, and return the exit code."""
    config = load_config(config_path)
    if artifacts is not None:
        config = config.model_copy(update={"artifacts": artifacts})
    if warm is not None:
        config = config.model_copy(update={"machine": config.machine.model_copy(update={"warm": warm})})
    if jobs < 1 or (jobs > 1 and keep_vm):
        raise ConfigError(f"-j {jobs}: give at least 1 VM, and only 1 with --keep-vm")
    wanted = tuple(name for item in scenarios for name in item.split(",") if name) or config.suite.scenarios
    selected = shard(wanted or DEFAULT_SCENARIOS, shard_spec)
    if not selected:
        print(f"vmtest: shard {shard_spec} has no scenarios; nothing to run", file=sys.stderr)
        return 0
    request = RunRequest(driver=driver, scenarios=selected, keep_vm_for=3600.0 if keep_vm else None)
    progress = make_progress()
    started = time.monotonic()
    try:
        if jobs > 1:
            run = run_main(run_parallel(config, request, progress, jobs))
            outcome = merge_outcomes(run)
            verdict = merge_verdicts([_judge(config, item) for item in run.outcomes])
        else:
            outcome = run_main(run_pipeline(config, request, progress))
            verdict = _judge(config, outcome)
    finally:
        progress.close()
    report = _report(config, outcome, verdict, time.monotonic() - started)
    _write_reports(config, outcome, verdict, report, junitxml)
    code = _exit_code(outcome, verdict)
    if json_output:
        summary = {
            "status": report.status,
            "exit_code": code,
            "run_dir": str(outcome.run_dir),
            **verdict.to_dict(),
        }
        print(json.dumps(summary, indent=2))
    else:
        if verdict.events or not report.message:
            print(verdict.render(), file=sys.stderr)
        else:
            print(f"vmtest: no scenario ran ({len(report.scenarios)} requested)", file=sys.stderr)
        if report.message:
            print(f"vmtest: {printable_lines(report.message)}", file=sys.stderr)
        print(f"vmtest: report: {outcome.run_dir / 'report.html'}", file=sys.stderr)
    return code


def _judge(config: VmtestConfig, outcome: RunOutcome) -> RunVerdict:
    crashes: list[Crash] = []
    shot = str(outcome.screenshots[-1]) if outcome.screenshots else ""
    for data in outcome.crash_data:
        event_data = data.get("data")
        crashes.append(crash_from_qmp(event_data if isinstance(event_data, dict) else {}, screenshot=shot))
    capture = outcome.run_dir / "capture.log"
    try:
        with capture.open(encoding="utf-8", errors="replace") as lines:
            return judge_lines(lines, config.verdict, outcome.requested, crashes)
    except FileNotFoundError:
        return judge_lines([], config.verdict, outcome.requested, crashes)


def _status(outcome: RunOutcome, verdict: RunVerdict) -> tuple[str, str]:
    if outcome.interrupted:
        return "interrupted", f"interrupted during {outcome.phase}"
    if outcome.infra_error is not None:
        return "infrastructure", str(outcome.infra_error)
    if outcome.driver_error is not None:
        detail = f"\n{outcome.driver_error.output}" if outcome.driver_error.output else ""
        return "failed", f"{outcome.phase}: {outcome.driver_error}{detail}"
    return ("passed", "") if verdict.passed else ("failed", "")


def _exit_code(outcome: RunOutcome, verdict: RunVerdict) -> int:
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    if outcome.infra_error is not None:
        return EXIT_INFRA
    if outcome.driver_error is not None or not verdict.passed:
        return EXIT_TEST_FAILURE
    return 0


def _report(config: VmtestConfig, outcome: RunOutcome, verdict: RunVerdict, duration: float) -> RunReport:
    status, message = _status(outcome, verdict)
    scenarios = [
        ScenarioReport(
            item.name,
            item.status,
            tuple(FindingReport(f.check, f.message, f.lines) for f in item.findings)
            + tuple(FindingReport("crash", c.describe()) for c in item.crashes),
        )
        for item in verdict.scenarios
    ]
    driver = str(config.driver.package.name) if config.driver.package else "wdk-mutex tests"
    return RunReport(
        run_dir=outcome.run_dir,
        driver=driver,
        guest=config.guest.kind,
        scenarios=scenarios,
        status=status,
        message=message,
        duration=duration,
        screenshots=outcome.screenshots,
        capture_tail=outcome.capture_tail,
        crashes=[c.to_dict() for c in verdict.crashes],
        warnings=confinement_warnings(config.machine),
    )


def _write_reports(
    config: VmtestConfig, outcome: RunOutcome, verdict: RunVerdict, report: RunReport, junitxml: Path | None
) -> None:
    """Write every report, or none: half a set (a full disk) could claim a success the rest cannot show.

    When one cannot be written, those already written are removed, a short ``verdicts.json`` saying why
    is left if even that fits, and the run ends as an infrastructure failure.
    """
    try:
        _write_report_files(config, outcome, verdict, report, junitxml)
    except OSError as error:
        reports = [outcome.run_dir / name for name in ("verdicts.json", "junit.xml", "report.html")]
        for path in [*reports, *([junitxml] if junitxml is not None else [])]:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        message = f"cannot write the reports: {error.strerror or error}"
        if report.message:
            message += f" (the run had already failed: {report.message.splitlines()[0]})"
        document = {"status": "infrastructure", "message": message, "phase": "report"}
        try:
            reports[0].write_text(json.dumps(document) + "\n", encoding="utf-8")
        except OSError:
            with contextlib.suppress(OSError):
                reports[0].unlink(missing_ok=True)  # rather none than a cut one
        raise InfraError(message, phase="report", artifacts=outcome.run_dir) from None


def _write_report_files(
    config: VmtestConfig, outcome: RunOutcome, verdict: RunVerdict, report: RunReport, junitxml: Path | None
) -> None:
    run_dir = outcome.run_dir
    document = {
        "status": report.status,
        "message": report.message,
        "phase": outcome.phase,
        **({"warnings": report.warnings} if report.warnings else {}),
        **verdict.to_dict(),
    }
    (run_dir / "verdicts.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (run_dir / "config.json").write_text(json.dumps(config.redacted(), indent=2) + "\n", encoding="utf-8")
    write_junit(report, run_dir / "junit.xml")
    if junitxml is not None:
        write_junit(report, junitxml)
    edges = [LockEdge(held, acquired, in_cycle) for held, acquired, in_cycle in lock_edges(outcome.events)]
    write_html(report, outcome.events, edges, run_dir / "report.html")
    write_github(report)
