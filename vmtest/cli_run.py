"""``vmtest run``: the command-line face of :func:`vmtest.pipeline.run`, with exit codes CI can act on.

Exit codes: 0 every scenario (or test) passed, 1 a test failure (a scenario failed, crashed or hung,
or the driver could not be loaded), 2 bad configuration or usage, 3 an infrastructure failure (retry
it), 130 interrupted. Whatever happens, the run directory gets its reports.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from vmtest.capture.source import printable_lines
from vmtest.errors import ConfigError
from vmtest.events.scenarios import run_order
from vmtest.pipeline import EXIT_INTERRUPTED, run

__all__ = ["EXIT_INTERRUPTED", "run_command", "shard"]


def shard(scenarios: Sequence[str], spec: str | None) -> tuple[str, ...]:
    """The stable share ``I/N`` of ``scenarios``: every N-th one, starting at the I-th.

    The scenarios keep the order given (the catalogue's, when none were named), except that those the
    catalogue marks ``last`` move to the end: a bugcheck there cannot lose the others, in a whole run
    (no ``spec``) and in each shard alike.
    """
    ordered = run_order(scenarios)
    if spec is None:
        return ordered
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"--shard takes I/N, such as 2/4 (got {spec!r})") from None
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {spec}: I must be between 1 and N")
    return tuple(name for position, name in enumerate(ordered) if position % count == index - 1)


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
    """Run the pipeline (on ``jobs`` VMs at once), print its verdict, and return the exit code."""
    result = run(
        config_path,
        driver=driver,
        scenarios=scenarios,
        artifacts=artifacts,
        jobs=jobs,
        warm=warm,
        shard=shard_spec,
        junitxml=junitxml,
        keep_vm=keep_vm,
    )
    if result.run_dir is None:
        print(f"vmtest: {result.message}; nothing to run", file=sys.stderr)
        return result.exit_code
    verdict = result.verdict
    if json_output:
        summary = {
            "status": result.status,
            "exit_code": result.exit_code,
            "run_dir": str(result.run_dir),
            "mode": result.mode,
            "ended_by": result.ended_by,
            "phases": dict(result.phases),
            **verdict.to_dict(),
        }
        print(json.dumps(summary, indent=2))
    else:
        if verdict.events or verdict.scenarios or not result.message:
            print(verdict.render("scenarios" if result.mode == "protocol" else "tests"), file=sys.stderr)
        else:
            print(f"vmtest: nothing ran ({result.mode} mode)", file=sys.stderr)
        if result.message:
            # A driver's own lines can pass while its run failed (it did not load): say which one counts.
            failed = result.status == "failed" and verdict.passed and verdict.scenarios
            overruled = "run FAILED: " if failed else ""  # infrastructure and interrupts name their phase
            print(f"vmtest: {overruled}{printable_lines(result.message)}", file=sys.stderr)
        html = result.reports.get("html", result.run_dir / "report.html")
        print(f"vmtest: report: {html}", file=sys.stderr)
    return result.exit_code
