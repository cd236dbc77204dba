"""The guest misbehaves: a kernel panic in the middle of a scenario, a scenario that never ends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from faultlib import Record, leftovers, vmtest_run

from vmtest.images.linux import LinuxImage

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_faults_module(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, scenarios: str, extra: str
) -> tuple[Any, dict[str, str]]:
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {image.root}\n{extra}")
    artifacts = tmp_path / "runs"
    args = ["run", str(config), "--driver", str(faults_ko), "--scenario", scenarios]
    with vmtest_run([*args, "--artifacts", str(artifacts)], artifacts=artifacts) as run:
        finished = run.finish(timeout=240)
    verdicts = finished.verdicts()
    statuses = {str(item["name"]): str(item["status"]) for item in verdicts["scenarios"]}  # type: ignore[attr-defined]
    return finished, statuses


def test_guest_panic_mid_scenario_crashes_it_and_the_rest_did_not_run(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    row = record(
        "guest kernel panic mid-scenario",
        "faults module (mode=panic): scenario-start of fault_a, then panic(); fault_a,fault_b,fault_c asked",
        "exit 1; fault_a crashed (with the panic message); fault_b and fault_c not run; no QEMU left",
    )
    extra = "driver:\n  parameters:\n    mode: panic\n"
    finished, statuses = run_faults_module(tmp_path, image, faults_ko, "fault_a,fault_b,fault_c", extra)
    assert finished.run_dir is not None
    left = leftovers(finished.run_dir)
    verdict = finished.verdicts()
    crash_text = str(verdict["scenarios"][0])
    row.observed = (
        f"exit {finished.returncode}; {', '.join(f'{k} {v}' for k, v in statuses.items())}; panic message in"
        f" the verdict: {'panic on purpose' in crash_text}; processes left: {len(left)}"
    )
    assert finished.returncode == 1, finished.stderr
    assert statuses == {"fault_a": "crashed", "fault_b": "not_run", "fault_c": "not_run"}
    assert "vmtest_faults: panic on purpose in fault_a" in crash_text
    assert "Traceback" not in finished.stderr
    assert not left


def test_hung_scenario_hits_its_deadline_with_a_screenshot_and_a_report(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    deadline = 8
    row = record(
        "scenario hangs (no output, insmod never returns)",
        f"faults module (mode=hang: init sleeps until a signal); timeouts.scenarios: {deadline}",
        "deadline fires; screenshots/*hang*.png; VM torn down; report written; fault_a hang; exit 1",
    )
    extra = f"driver:\n  parameters:\n    mode: hang\ntimeouts:\n  scenarios: {deadline}\n"
    finished, statuses = run_faults_module(tmp_path, image, faults_ko, "fault_a,fault_b", extra)
    run_dir = finished.run_dir
    assert run_dir is not None
    shots = sorted(run_dir.glob("screenshots/*hang*.png"))
    stopped = re.search(r"QEMU stopped by (.+?) \(exit status", (run_dir / "vmtest.log").read_text())
    left = leftovers(run_dir)
    verdict = finished.verdicts()
    row.observed = (
        f"exit {finished.returncode} after {finished.elapsed:.0f} s; {statuses}; status {verdict['status']};"
        f" screenshots: {[shot.name for shot in shots]}; QEMU stopped by"
        f" {stopped.group(1) if stopped else '?'}; report.html: {(run_dir / 'report.html').is_file()};"
        f" processes left: {len(left)}"
    )
    assert finished.returncode == 1, finished.stderr
    assert statuses == {"fault_a": "hang", "fault_b": "not_run"}
    assert verdict["status"] == "failed" and verdict["phase"] == "load"
    assert shots and shots[0].read_bytes().startswith(PNG_SIGNATURE)
    assert stopped is not None
    assert (run_dir / "report.html").is_file() and (run_dir / "junit.xml").is_file()
    assert f"not done within {deadline}s" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not left
