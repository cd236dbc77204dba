"""`vmtest run` end to end on the Linux self-test guest: verdicts, exit codes, artifacts, reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmtest.images.linux import build_linux_image

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module", autouse=True)
def image() -> None:
    build_linux_image()


def vmtest_run(
    tmp_path: Path, *args: str, config: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vmtest.cli", "run"]
    if config:
        path = tmp_path / "vmtest.yaml"
        path.write_text(config)
        command.append(str(path))
    command += ["--artifacts", str(tmp_path / "runs"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def run_dir(tmp_path: Path) -> Path:
    (only,) = list((tmp_path / "runs").iterdir())
    return only


def test_a_passing_run_writes_every_artifact(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    junit = str(tmp_path / "junit.xml")
    scenarios = "kmutex_contention,irql_errors"
    result = vmtest_run(tmp_path, "--scenario", scenarios, "--junitxml", junit, "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary_json = json.loads(result.stdout)
    assert summary_json["status"] == "passed" and summary_json["counts"] == {"passed": 2}
    run = run_dir(tmp_path)
    expected = ["qemu.log", "serial-console.log", "capture.log", "events.jsonl", "verdicts.json"]
    expected += ["config.json", "junit.xml", "report.html", "qmp-events.jsonl", "vmtest.log"]
    expected += ["qemu-command.txt"]
    for name in expected:
        assert (run / name).is_file(), name
    assert list((run / "screenshots").glob("*-end.png"))
    assert run.stat().st_mode & 0o777 == 0o700
    cases = [case.get("name") for case in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")]
    assert cases == ["kmutex_contention", "irql_errors"]
    assert "| `irql_errors` | ✅ passed |" in summary.read_text()
    first_event = json.loads((run / "events.jsonl").read_text().splitlines()[0])
    assert first_event["ev"] == "run-start" and first_event["source"] == "console"


def test_an_expected_crash_that_is_not_expected_fails_the_scenario(tmp_path: Path) -> None:
    config = "verdict:\n  expected_crashes:\n    neg_wait_at_dispatch: null\n"
    result = vmtest_run(tmp_path, "--scenario", "neg_wait_at_dispatch", "--json", config=config)
    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout)
    (scenario,) = verdict["scenarios"]
    assert scenario["status"] == "crashed"
    assert "scheduling while atomic" in json.dumps(scenario)


def test_a_driver_that_refuses_to_load_is_a_test_failure_with_the_kernel_log(tmp_path: Path) -> None:
    result = vmtest_run(tmp_path, "--scenario", "no_such_scenario")
    assert result.returncode == 1
    assert "loading vmtest_mutex_tests failed" in result.stderr
    assert "Traceback" not in result.stderr
    verdicts = json.loads((run_dir(tmp_path) / "verdicts.json").read_text())
    assert verdicts["status"] == "failed" and verdicts["phase"] == "load"


def test_bad_configuration_exits_2_without_booting(tmp_path: Path) -> None:
    result = vmtest_run(tmp_path, config="machine:\n  cpus: 0\n")
    assert result.returncode == 2
    assert "machine.cpus" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (setup.sh --dev installs it)"
)
def test_html_report_renders_in_headless_chromium_without_console_errors(tmp_path: Path) -> None:
    result = vmtest_run(tmp_path, "--scenario", "lock_order_consistent,neg_lock_inversion")
    assert result.returncode == 0, result.stderr
    report = run_dir(tmp_path) / "report.html"
    profile = tmp_path / "chromium-profile"
    browser = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert browser.returncode == 0, browser.stderr[-2000:]
    dom = browser.stdout
    assert "neg_lock_inversion" in dom and "<svg" in dom and "critical sections" in dom
    console = [line for line in browser.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
