"""Suite modes end to end, with real modules in the Linux guest: text, smoke, and entry points that fail.

Every run here is judged by what ended its wait for the driver's output (``ended_by`` in
``verdicts.json``): the suite's own result line (text mode) or the quiet period after loading returned
(smoke), never the scenario timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmtest
from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.drivers.kbuild import build_module
from vmtest.errors import DriverError, EntryPointFailed
from vmtest.facade import BackgroundSession
from vmtest.images.linux import LinuxImage, build_linux_image
from vmtest.progress import PlainProgress

pytestmark = pytest.mark.e2e
pytest_plugins = ["pytester"]

MODULES = Path(__file__).parent / "modules"
TEXT_VERDICT = r"""
verdict:
  text:
    suite: wdk-mutex-test
    test_start: '\[wdk-mutex-test\] \[i\] Starting'
    passed: '\[wdk-mutex-test\] \[\+\] All tests passed'
    failed: '\[wdk-mutex-test\] \[-\] Test (?P<name>\S+) failed'
"""
TEXT_CONFIG = "suite:\n  mode: text\n  quiet_seconds: 5\n" + TEXT_VERDICT


@pytest.fixture(scope="module")
def image() -> LinuxImage:
    return build_linux_image()


def vmtest_run(tmp_path: Path, *args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vmtest.cli", "run"]
    if config:
        path = tmp_path / "vmtest.yaml"
        path.write_text(config)
        command.append(str(path))
    command += ["--artifacts", str(tmp_path / "runs"), "--json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)


def only_run(tmp_path: Path) -> Path:
    (run,) = list((tmp_path / "runs").iterdir())
    return run


def verdicts(run: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((run / "verdicts.json").read_text())
    return document


def test_text_mode_passes_on_the_driver_s_own_line_and_ends_there(tmp_path: Path, image: LinuxImage) -> None:
    result = vmtest_run(tmp_path, "--driver", str(MODULES / "vmtest_text_pass"), config=TEXT_CONFIG)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["mode"] == "text" and summary["status"] == "passed"
    assert summary["ended_by"] == "suite-result"  # not the quiet period, not the scenario timeout
    assert [(item["name"], item["status"]) for item in summary["scenarios"]] == [("wdk-mutex-test", "passed")]
    run = only_run(tmp_path)
    assert "the wait for the driver's output ended by: suite-result" in (run / "vmtest.log").read_text()
    cases = {case.get("name"): case for case in ET.parse(run / "junit.xml").getroot().iter("testcase")}
    assert list(cases) == ["wdk-mutex-test"] and cases["wdk-mutex-test"].find("failure") is None
    assert summary["phases"]["unload"] == "passed"


def test_text_mode_failing_twin_fails_naming_the_test(tmp_path: Path, image: LinuxImage) -> None:
    driver = str(MODULES / "vmtest_text_fail")
    result = vmtest_run(tmp_path, "--driver", driver, "--warm", config=TEXT_CONFIG)
    assert result.returncode == 1, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["ended_by"] == "suite-result"
    statuses = {item["name"]: item["status"] for item in summary["scenarios"]}
    assert statuses == {"wdk-mutex-test": "failed", "test_kmutex_recursion": "failed"}
    (failed,) = [item for item in summary["scenarios"] if item["name"] == "test_kmutex_recursion"]
    assert "Test test_kmutex_recursion failed." in "\n".join(failed["findings"][0]["lines"])
    cases = {
        case.get("name"): case
        for case in ET.parse(only_run(tmp_path) / "junit.xml").getroot().iter("testcase")
    }
    assert cases["test_kmutex_recursion"].find("failure") is not None


def test_smoke_is_the_default_for_an_unknown_module_and_ends_after_the_quiet_period(
    tmp_path: Path, image: LinuxImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./vmtest.yaml: no configuration at all
    result = vmtest.run(driver=MODULES / "vmtest_quiet", artifacts=tmp_path / "runs")
    assert (result.mode, result.status, result.exit_code) == ("smoke", "passed", 0), result.message
    assert result.ended_by == "quiet"
    assert [(item.name, item.status) for item in result.verdict.scenarios] == [("vmtest_quiet", "passed")]
    phases = ["prepare", "accel", "boot", "ready", "connect", "deploy", "load", "capture", "unload", "remove"]
    assert list(result.phases) == phases
    assert set(result.phases.values()) == {"passed"}
    assert set(result.reports) == {"verdicts", "config", "junit", "html"}
    assert all(path.is_file() for path in result.reports.values())
    assert verdicts(result.run_dir or tmp_path)["ended_by"] == "quiet"


def test_smoke_fails_on_a_warning_and_quotes_it(tmp_path: Path, image: LinuxImage) -> None:
    config = "suite:\n  mode: smoke\n  quiet_seconds: 3\n  exerciser: [./exercise.sh, hello]\n"
    result = vmtest_run(tmp_path, "--driver", str(MODULES / "vmtest_warns"), "-j", "2", config=config)
    assert result.returncode == 1, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["ended_by"] == "quiet" and summary["phases"]["unload"] == "passed"
    (smoke,) = summary["scenarios"]
    assert smoke["name"] == "vmtest_warns" and smoke["status"] == "failed"
    (finding,) = smoke["findings"]
    assert finding["check"] == "kernel-report"
    assert "kernel warning report" in finding["message"] and "WARNING: CPU:" in finding["message"]
    assert any("vmtest_warns: a warning on purpose" in line for line in finding["lines"])
    assert "one VM, not 2" in result.stderr + result.stdout
    assert "vmtest_warns: a warning on purpose" in (only_run(tmp_path) / "report.html").read_text()


def test_an_entry_point_that_fails_by_design_is_judged_from_its_output(
    tmp_path: Path, image: LinuxImage
) -> None:
    config = TEXT_CONFIG + "driver:\n  expect_entry_failure: true\n"
    result = vmtest_run(tmp_path, "--driver", str(MODULES / "vmtest_text_entry"), config=config)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["ended_by"] == "suite-result"
    assert "unload" not in summary["phases"] and summary["phases"]["load"] == "passed"
    (note,) = summary["notes"]
    assert "the entry point failed, as driver.expect_entry_failure says it would" in note
    assert "init function returned an error (No such device): init returned -ENODEV (-19)" in note


def test_an_entry_point_failure_not_expected_is_a_load_error(tmp_path: Path, image: LinuxImage) -> None:
    result = vmtest_run(tmp_path, "--driver", str(MODULES / "vmtest_text_entry"), config=TEXT_CONFIG)
    assert result.returncode == 1, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed" and summary["phases"]["load"] == "failed"
    document = verdicts(only_run(tmp_path))
    assert document["message"].startswith(
        "load: loading vmtest_text_entry failed: the module's init function"
    )


def test_a_shard_without_the_driver_s_one_load_runs_nothing(tmp_path: Path) -> None:
    result = vmtest_run(tmp_path, "--driver", str(MODULES / "vmtest_quiet"), "--shard", "2/2")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "shard 2/2 has nothing to run; nothing to run" in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------------
# What insmod and the kernel say for each kind of load failure, in the real guest
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def booted(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundSession]:
    config = VmtestConfig(artifacts=tmp_path_factory.mktemp("runs"), guest=LinuxGuestConfig(image=image.root))
    booted = BackgroundSession(config, PlainProgress(), label="modes")
    try:
        booted.start()
        yield booted
    finally:
        booted.close()


def load_error(
    booted: BackgroundSession, image: LinuxImage, tmp_path: Path, module: str, **params: Any
) -> DriverError:
    ko = build_module(MODULES / module, image.headers, tmp_path / module)
    drivers = booted.guest.drivers
    driver = booted.call(drivers.deploy, ko)
    try:
        with pytest.raises(DriverError) as caught:
            booted.call(drivers.load, driver, params)
    finally:
        booted.call(drivers.remove, driver)
    return caught.value


def test_init_failure_is_the_entry_point_s_with_its_errno(
    booted: BackgroundSession, image: LinuxImage, tmp_path: Path
) -> None:
    error = load_error(booted, image, tmp_path, "vmtest_text_entry")
    assert isinstance(error, EntryPointFailed) and error.code == -19
    assert "can't insert" in error.output and "No such device" in error.output
    assert "[wdk-mutex-test] [+] All tests passed!" in error.output  # what init printed, from the kernel log


def test_loader_refusals_are_not_the_entry_point_s(
    booted: BackgroundSession, image: LinuxImage, tmp_path: Path
) -> None:
    unknown_symbol = load_error(booted, image, tmp_path, "vmtest_unknown_symbol")
    assert not isinstance(unknown_symbol, EntryPointFailed)
    assert "Unknown symbol vmtest_no_such_symbol" in unknown_symbol.output
    bad_value = load_error(booted, image, tmp_path, "vmtest_lifecycle", count="many")
    assert not isinstance(bad_value, EntryPointFailed)
    assert "invalid for parameter" in bad_value.output
    unknown_parameter = load_error(booted, image, tmp_path, "vmtest_lifecycle", no_such_knob=1)
    assert not isinstance(unknown_parameter, EntryPointFailed)
    not_a_module = tmp_path / "fake.ko"
    not_a_module.write_bytes(b"not an ELF file" * 100)
    drivers = booted.guest.drivers
    driver = booted.call(drivers.deploy, not_a_module)
    with pytest.raises(DriverError) as caught:
        booted.call(drivers.load, driver, {})
    assert not isinstance(caught.value, EntryPointFailed)
    booted.call(drivers.remove, driver)
    init_error = load_error(booted, image, tmp_path, "vmtest_lifecycle", init_result=-22)
    assert isinstance(init_error, EntryPointFailed) and init_error.code == -22


# --------------------------------------------------------------------------------------------------
# The pytest plugin in text and smoke modes
# --------------------------------------------------------------------------------------------------

PLUGIN_TESTS = """
def test_the_driver_s_own_verdict(run_driver, vmtest_vm):
    assert vmtest_vm.mode == "text"
    result = run_driver()
    assert [(item.name, item.status) for item in result.verdict.scenarios] == [("wdk-mutex-test", "passed")]
    again = run_driver()  # a second load of the same driver is judged on its own lines
    assert again.passed and len(again.verdict.scenarios) == 1, again.report()
"""


def test_the_pytest_plugin_runs_a_text_driver(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: LinuxImage
) -> None:
    monkeypatch.setenv("VMTEST_CACHE", str(image.root.parent.parent))  # pytester's fresh HOME
    config = TEXT_CONFIG + f"driver:\n  package: {MODULES / 'vmtest_text_pass'}\n"
    pytester.makefile(".yaml", vmtest=config)
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("--vmtest-artifacts", str(tmp_path / "runs"))
    result.assert_outcomes(passed=1)
