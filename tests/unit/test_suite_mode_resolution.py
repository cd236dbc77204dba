"""Suite modes in the configuration: protocol, text and smoke, what each needs, and the examples."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import vmtest
from vmtest.capture.source import CapturedLine
from vmtest.config import VmtestConfig, load_config
from vmtest.drivers.linux import _init_failure, module_parameters
from vmtest.errors import ConfigError
from vmtest.guest.transport import CommandResult
from vmtest.pipeline import OutputWatch, resolve_mode
from vmtest.verdict.text import TextVerdictConfig, TextVerdictReader

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "vmtest.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("mode", ["protocol", "text", "smoke"])
def test_each_mode_has_an_example_that_loads(mode: str) -> None:
    config = load_config(EXAMPLES / f"linux-{mode}.yaml")
    assert config.suite.mode == mode
    if mode == "text":
        assert config.verdict.text is not None and config.verdict.text.suite == "wdk-mutex-test"


def test_text_mode_needs_the_driver_s_lines(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "suite:\n  mode: text\n")
    assert "suite.mode text reads the driver's own pass/fail lines: describe them in verdict.text" in found


def test_an_exerciser_belongs_to_smoke_mode(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "suite:\n  mode: protocol\n  exerciser: [./x]\n")
    assert "suite.exerciser is run in smoke mode only" in found


def test_unknown_mode_and_bad_quiet_period_are_located(tmp_path: Path) -> None:
    found = problems(tmp_path, "suite:\n  mode: smok\n  quiet_seconds: 0\n")
    assert any(":2:9: suite.mode: Input should be 'protocol', 'text' or 'smoke'" in item for item in found)
    assert any(":3:18: suite.quiet_seconds: Input should be greater than 0" in item for item in found)


def test_defaults_leave_the_mode_to_the_driver(tmp_path: Path) -> None:
    path = tmp_path / "vmtest.yaml"
    path.write_text("driver:\n  expect_entry_failure: true\n")
    config = load_config(path)
    assert config.suite.mode is None and config.suite.quiet_seconds == 10 and config.suite.exerciser == ()
    assert config.driver.expect_entry_failure


# --------------------------------------------------------------------------------------------------
# Which mode a driver gets when the configuration does not say
# --------------------------------------------------------------------------------------------------

MODULES = Path(__file__).resolve().parents[1] / "e2e" / "modules"
BUNDLED = Path(__file__).resolve().parents[2] / "drivers" / "linux-mutex-tests"


def test_the_bundled_driver_and_protocol_modules_run_in_protocol_mode() -> None:
    assert resolve_mode(VmtestConfig()) == "protocol"
    assert resolve_mode(VmtestConfig(), BUNDLED) == "protocol"
    assert resolve_mode(VmtestConfig(), MODULES / "vmtest_faults") == "protocol"  # declares `scenarios`


def test_a_module_vmtest_does_not_know_runs_in_smoke_mode_or_text_mode_with_its_lines() -> None:
    assert resolve_mode(VmtestConfig(), MODULES / "vmtest_quiet") == "smoke"
    assert (
        resolve_mode(VmtestConfig(), MODULES / "vmtest_lifecycle") == "smoke"
    )  # parameters, not `scenarios`
    text = VmtestConfig.model_validate({"verdict": {"text": {"passed": "ok", "failed": "bad"}}})
    assert resolve_mode(text, MODULES / "vmtest_text_pass") == "text"
    smoke = VmtestConfig.model_validate({"suite": {"mode": "smoke"}})
    assert resolve_mode(smoke, BUNDLED) == "smoke"  # the configuration has the last word


def test_a_module_file_is_known_by_its_declared_parameters(tmp_path: Path) -> None:
    not_elf = tmp_path / "my.ko"
    not_elf.write_bytes(b"not an ELF file")
    assert module_parameters(not_elf) == frozenset()
    assert resolve_mode(VmtestConfig(), not_elf) == "smoke"


# --------------------------------------------------------------------------------------------------
# When a text or smoke driver has said all it will say
# --------------------------------------------------------------------------------------------------

UPSTREAM = TextVerdictConfig(
    suite="wdk-mutex-test",
    test_start=r"\[wdk-mutex-test\] \[i\] Starting",
    passed=r"\[wdk-mutex-test\] \[\+\] All tests passed",
    failed=r"\[wdk-mutex-test\] \[-\] Test (?P<name>\S+) failed",
)


def line(text: str) -> CapturedLine:
    return CapturedLine(0.0, "console", text)


def test_the_suite_s_own_line_settles_it() -> None:
    reader = TextVerdictReader(UPSTREAM)
    reader.feed("[ 1.0] [wdk-mutex-test] [i] Starting tests.", 1)
    assert reader.settled() is None
    reader.feed("[ 1.1] [wdk-mutex-test] [-] Test test_kmutex_recursion failed.", 2)
    assert reader.settled() == "suite-result"


def test_every_started_test_ended_settles_it() -> None:
    named = TextVerdictConfig(
        test_start=r"START (?P<name>\w+)", passed=r"PASS (?P<name>\w+)", failed=r"FAIL (?P<name>\w+)"
    )
    reader = TextVerdictReader(named)
    reader.feed("START a", 1)
    reader.feed("START b", 2)
    reader.feed("PASS a", 3)
    assert reader.settled() is None
    reader.feed("FAIL b", 4)
    assert reader.settled() == "tests-ended"


def test_the_watch_ends_on_the_suite_result_once_loading_returned() -> None:
    async def scenario() -> str:
        watch = OutputWatch(UPSTREAM, quiet=3600)
        watch.take(line("[wdk-mutex-test] [i] Starting tests."))
        watch.take(line("[wdk-mutex-test] [+] All tests passed!"))  # printed while insmod still ran
        watch.loaded()
        return await asyncio.wait_for(watch.ended(), 60)

    assert asyncio.run(scenario()) == "suite-result"


def test_the_watch_ends_on_a_quiet_kernel_and_keeps_its_reports() -> None:
    async def scenario() -> tuple[str, list[str]]:
        watch = OutputWatch(None, quiet=0.05)
        watch.take(line("[ 1.0] WARNING: CPU: 0 PID: 1 at my.c:1 f+0x1/0x2 [my]"))
        watch.loaded()
        ended = await asyncio.wait_for(watch.ended(), 60)
        return ended, [report.kind for report in watch.scanner.reports]

    assert asyncio.run(scenario()) == ("quiet", ["warning"])


# --------------------------------------------------------------------------------------------------
# insmod failures: the module's init, or the loader (wordings seen in the guest by the e2e tests)
# --------------------------------------------------------------------------------------------------

INSMOD = "insmod: can't insert '/tmp/vmtest/run/my.ko': "


@pytest.mark.parametrize(
    ("reason", "kernel_log", "expected"),
    [
        ("No such device", "[ 12.4] [wdk-mutex-test] [+] All tests passed!", ("No such device", 19)),
        ("Invalid argument", "", ("Invalid argument", 22)),
        ("Invalid argument", "[ 3.1] my: `many' invalid for parameter `count'", None),
        (
            "unknown symbol in module, or unknown parameter",
            "",
            ("unknown symbol in module, or unknown parameter", 2),
        ),
        ("unknown symbol in module, or unknown parameter", "[ 3.1] my: Unknown symbol f (err -2)", None),
        ("invalid module format", "", None),
        ("File exists", "", None),
    ],
)
def test_an_init_failure_is_told_from_the_loader_s_refusals(
    reason: str, kernel_log: str, expected: tuple[str, int] | None
) -> None:
    result = CommandResult("insmod", 1, b"", (INSMOD + reason + "\n").encode(), 0.1)
    assert _init_failure(result, kernel_log) == expected


# --------------------------------------------------------------------------------------------------
# vmtest.run() before any VM boots
# --------------------------------------------------------------------------------------------------


def test_run_with_an_empty_shard_returns_without_booting(tmp_path: Path) -> None:
    result = vmtest.run(VmtestConfig(), driver=MODULES / "vmtest_quiet", shard="2/2", artifacts=tmp_path)
    assert (result.mode, result.status, result.exit_code, result.run_dir) == ("smoke", "nothing", 0, None)
    assert result.message == "shard 2/2 has nothing to run" and not list(tmp_path.iterdir())


def test_run_refuses_protocol_scenarios_for_a_driver_of_another_mode(tmp_path: Path) -> None:
    quiet = MODULES / "vmtest_quiet"
    with pytest.raises(ConfigError, match="--scenario selects protocol scenarios; this driver runs in smoke"):
        vmtest.run(VmtestConfig(), driver=quiet, scenarios=["kmutex_recursion"], artifacts=tmp_path)
