"""Four ``vmtest run`` at once on one host, into one artifacts folder: no collisions, every verdict right."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from faultlib import ROOT, Finished, Record, leftovers, vmtest_run

from vmtest.images.linux import LinuxImage

pytestmark = pytest.mark.e2e

MUTEX_MODULE = ROOT / "drivers" / "linux-mutex-tests"


def test_four_runs_at_once_do_not_collide(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    # (name, driver, scenarios, module mode, expected exit code, expected scenario statuses)
    cases: list[Case] = [
        ("pass-1", faults_ko, "fault_a", "pass", 0, {"fault_a": "passed"}),
        ("pass-2", faults_ko, "fault_a,fault_b", "pass", 0, {"fault_a": "passed", "fault_b": "passed"}),
        ("panic", faults_ko, "fault_a,fault_b", "panic", 1, {"fault_a": "crashed", "fault_b": "not_run"}),
        ("mutex", MUTEX_MODULE, "kmutex_contention", None, 0, {"kmutex_contention": "passed"}),
    ]
    row = record(
        "four `vmtest run` at once",
        "four runs started together into one --artifacts folder: two passing, one panicking (faults"
        " module), one wdk-mutex scenario built from source",
        "four distinct run directories and SSH ports; each verdict and exit code its own; no QEMU left",
    )
    artifacts = tmp_path / "runs"
    finished: dict[str, Finished] = {}
    with contextlib.ExitStack() as stack:
        runs = [
            stack.enter_context(vmtest_run(command(case, tmp_path, image, artifacts), artifacts=artifacts))
            for case in cases
        ]
        for case, run in zip(cases, runs, strict=True):
            finished[case[0]] = run.finish(timeout=420)
    run_dirs = {name: result.run_dir for name, result in finished.items()}
    ports = {
        name: json.loads((run_dir / "guest.json").read_text())["port"]
        for name, run_dir in run_dirs.items()
        if run_dir is not None
    }
    outcomes = {}
    for name, result in finished.items():
        summary = json.loads(result.stdout)
        statuses = {item["name"]: item["status"] for item in summary["scenarios"]}
        outcomes[name] = (result.returncode, statuses, summary["run_dir"])
    right = [
        name
        for name, _driver, _scenarios, _mode, code, statuses in cases
        if outcomes[name][:2] == (code, statuses)
    ]
    left = [line for run_dir in run_dirs.values() for line in leftovers(run_dir)]
    row.observed = (
        f"{len(set(run_dirs.values()))} run directories, {len(set(ports.values()))} ports; verdicts right:"
        f" {len(right)} of 4 ({', '.join(f'{n}: exit {o[0]}' for n, o in outcomes.items())});"
        f" processes left: {len(left)}"
    )
    assert len(set(run_dirs.values())) == 4 and None not in run_dirs.values()
    assert len(set(ports.values())) == 4
    assert all(outcomes[name][2] == str(run_dirs[name]) for name in outcomes)
    assert sorted(right) == sorted(case[0] for case in cases), outcomes
    assert not left


Case = tuple[str, Path, str, "str | None", int, dict[str, str]]


def command(case: Case, tmp_path: Path, image: LinuxImage, artifacts: Path) -> list[str]:
    name, driver, scenarios, mode, _code, _statuses = case
    config = tmp_path / f"{name}.yaml"
    text = f"guest:\n  image: {image.root}\nsuite:\n  threads: 2\n  iterations: 50\n"
    if mode is not None:
        text += f"driver:\n  parameters:\n    mode: {mode}\n"
    config.write_text(text)
    args = ["run", str(config), "--driver", str(driver), "--scenario", scenarios, "--json"]
    return [*args, "--artifacts", str(artifacts)]
