"""``vmtest analyze`` as a user runs it: exit codes, the human report, JSON, and no traceback on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "verdicts"


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmtest.cli", "analyze", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_clean_capture_exits_0_with_a_report() -> None:
    result = analyze(DATA / "clean_run_debugview.log")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("vmtest verdict: PASSED (9 scenarios: 8 passed, 1 skipped; 111 events)")
    assert "  PASSED   kmutex_contention" in result.stdout


def test_a_failure_exits_1_and_quotes_the_lines() -> None:
    result = analyze(DATA / "overlap.log")
    assert result.returncode == 1
    assert "exclusion violated: t=1 acquired counter (kmutex) while t=0 held it" in result.stdout
    assert "line 9: [    3.000900] VMTEST1 seq=7 ev=acquired" in result.stdout


def test_json_output() -> None:
    result = analyze(
        DATA / "crash_windows_kd.log", "--json", "--scenario", "kmutex_contention,fast_mutex_contention"
    )
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False
    assert [(item["name"], item["status"]) for item in data["scenarios"]] == [
        ("kmutex_contention", "crashed"),
        ("fast_mutex_contention", "not_run"),
    ]
    (crash,) = data["crashes"]
    assert crash["code"] == "0xd1" and crash["name"] == "DRIVER_IRQL_NOT_LESS_OR_EQUAL"
    assert crash["driver"] == "wdk_mutex_tests.sys" and crash["lineno"] == 9


def test_repeated_scenario_options_name_what_must_have_run() -> None:
    result = analyze(DATA / "overlap.log", "--scenario", "kmutex_contention", "--scenario", "grt_errors")
    assert result.returncode == 1
    assert "NOT RUN  grt_errors" in result.stdout


def test_a_text_verdict_config_runs_the_upstream_driver_unchanged() -> None:
    config = DATA / "upstream_wdk_mutex_tests.yaml"
    assert analyze(DATA / "text_upstream_passed.log", "--config", config).returncode == 0
    failed = analyze(DATA / "text_upstream_failed.log", "--config", config)
    assert failed.returncode == 1 and "FAILED   test_to_owned" in failed.stdout


def test_other_sections_of_a_full_configuration_are_ignored(tmp_path: Path) -> None:
    config = tmp_path / "vmtest.yaml"
    config.write_text("machine:\n  cpus: 2\nverdict:\n  tail_lines: 3\n")
    assert analyze(DATA / "clean_run_debugview.log", "--config", config).returncode == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("verdict:\n  text:\n    passed: 'ok (?P<name>'\n    failed: 'x'\n", ":3:13: verdict.text.passed:"),
        ("verdict:\n  text:\n    passed: 'ok (?P<name>'\n    failed: 'x'\n", "invalid regular expression"),
        ("verdict:\n  bogus: 1\n", ":2:3: verdict.bogus: unknown setting"),
        ("verdict: [1, 2\n", "invalid YAML"),
        (
            "verdict:\n  expected_crashes:\n    neg_wait_at_dispatch:\n      stop_codes: [NOT_A_CODE]\n",
            "unknown stop code",
        ),
        ("verdict:\n  expected_findings:\n    x: [lockorder]\n", "unknown check lockorder"),
    ],
)
def test_a_bad_config_exits_2_without_a_traceback(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "analyze.yaml"
    config.write_text(text)
    result = analyze(DATA / "overlap.log", "--config", config)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and not result.stdout


def test_stop_codes_may_be_given_as_numbers_or_names(tmp_path: Path) -> None:
    config = tmp_path / "analyze.yaml"
    config.write_text(
        "verdict:\n  expected_crashes:\n    neg_wait_at_dispatch:\n      stop_codes: [0xA, 0xD1]\n"
    )
    result = analyze(DATA / "neg_wait_at_dispatch_windows.log", "--config", config)
    assert result.returncode == 1, "0xB8 is no longer accepted"
    assert "crashed, but not with a crash this negative control accepts" in result.stdout
    config.write_text(
        "verdict:\n  expected_crashes:\n    neg_wait_at_dispatch:\n"
        "      stop_codes: [ATTEMPTED_SWITCH_FROM_DPC]\n"
    )
    assert analyze(DATA / "neg_wait_at_dispatch_windows.log", "--config", config).returncode == 0


@pytest.mark.parametrize("target", ["missing.log", "."])
def test_a_missing_or_unreadable_capture_exits_2(tmp_path: Path, target: str) -> None:
    result = analyze(tmp_path / target)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "not found" in result.stderr or "directory" in result.stderr


def test_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = analyze(DATA / "overlap.log", "--config", tmp_path / "nope.yaml")
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    result = analyze()
    assert result.returncode == 2 and "usage:" in result.stderr


def test_an_empty_capture_is_a_failure_not_a_pass(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("just some kernel output\n")
    result = analyze(empty)
    assert result.returncode == 1 and "no scenario found" in result.stdout


def test_terminal_escapes_in_the_capture_never_reach_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "escapes.log"
    line = "VMTEST1 seq=1 ev=scenario-end sc=to_owned outcome=error msg=\x1b]0;pwned\x07 \x1b[2J gone"
    log.write_text(line + "\n")
    for args in ((), ("--json",)):
        result = analyze(log, *args)
        assert result.returncode == 1
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b]0;pwned\\x07" in analyze(log).stdout
