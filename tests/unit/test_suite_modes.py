"""Suite modes in the configuration: protocol, text and smoke, what each needs, and the examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtest.config import load_config
from vmtest.errors import ConfigError

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
