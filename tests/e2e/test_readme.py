"""The README's "Use vmtest in your driver repository", run as written against the built package.

Every shell block of that section runs here with bash, in an empty directory, with these substitutions
only: the git repository's address becomes a local clone of this source tree (tagged as the README
says), and the wheel file the README installs is copied into the directory first. Blocks after the
install run in the shell the README leaves activated (its virtualenv's bin first on PATH). Each
``vmtest.yaml`` of the section is validated, and the protocol one is run and its report read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

import vmtest

if TYPE_CHECKING:
    from conftest import Dist

pytestmark = pytest.mark.e2e

SOURCE_TREE = Path(__file__).resolve().parents[2]
SECTION = "## Use vmtest in your driver repository"
GIT_ADDRESS = "https://github.com/OWNER/vmtest"
ROLES = ("install-from-tag", "install-from-wheel", "setup", "run", "report")
MODES = ("protocol", "text", "smoke")


@dataclass(frozen=True)
class Readme:
    """The section's shell blocks by what they do, and its configuration files by mode."""

    shell: dict[str, str]
    configs: dict[str, str]


def _role(block: str) -> str:
    roles = [
        role
        for role, marker in (
            ("install-from-tag", "git+"),
            ("install-from-wheel", ".whl"),
            ("setup", "vmtest image build"),
            ("run", "vmtest run"),
            ("report", "verdicts.json"),
        )
        if marker in block
    ]
    assert len(roles) == 1, f"a README shell block no test knows how to run:\n{block}"
    return roles[0]


@pytest.fixture(scope="module")
def readme() -> Readme:
    text = (SOURCE_TREE / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    shell: dict[str, str] = {}
    configs: dict[str, str] = {}
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.M | re.S):
        if language == "sh":
            role = _role(body)
            assert role not in shell, f"two README blocks do {role}"
            shell[role] = body
        elif language == "yaml":
            mode = yaml.safe_load(body)["suite"]["mode"]
            assert mode not in configs, f"two README configurations for mode {mode}"
            configs[mode] = body
        else:
            pytest.fail(f"a README block in {language or 'no language'} that no test runs:\n{body}")
    assert set(shell) == set(ROLES) and set(configs) == set(MODES)
    return Readme(shell, configs)


def _clean_env() -> dict[str, str]:
    """This environment without the source tree's virtualenv (the README's user has none)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not Path(p).is_relative_to(SOURCE_TREE)]
    env["PATH"] = os.pathsep.join(path)
    return env


def _activated(workspace: Path) -> dict[str, str]:
    """What ``. .venv/bin/activate`` leaves in the shell the README goes on in."""
    env = _clean_env()
    env["VIRTUAL_ENV"] = str(workspace / ".venv")
    env["PATH"] = f"{workspace / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def bash(
    block: str, cwd: Path, env: dict[str, str], timeout: float = 900.0
) -> subprocess.CompletedProcess[str]:
    """Run a README block as a script: it stops at the first command that fails."""
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _installed_file(workspace: Path) -> Path:
    python = workspace / ".venv" / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import vmtest; print(vmtest.__file__)"],
        cwd=workspace,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(where.stdout.strip())


@pytest.fixture(scope="module")
def workspace(readme: Readme, vmtest_dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A driver repository where the README's wheel install block ran."""
    here = tmp_path_factory.mktemp("driver-repo")
    shutil.copy(vmtest_dist.wheel, here / vmtest_dist.wheel.name)
    result = bash(readme.shell["install-from-wheel"], here, _clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return here


def test_the_readme_names_this_version(readme: Readme, vmtest_dist: Dist) -> None:
    assert f"{GIT_ADDRESS}@v{vmtest.__version__}" in readme.shell["install-from-tag"]
    assert vmtest_dist.wheel.name in readme.shell["install-from-wheel"]


def test_install_from_a_git_tag(readme: Readme, tmp_path: Path) -> None:
    clone = tmp_path / "vmtest.git"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(SOURCE_TREE), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "tag", "-f", f"v{vmtest.__version__}"], check=True)
    # pip's requirement parser wants a host in a VCS URL, and git takes localhost for a local path
    block = readme.shell["install-from-tag"].replace(GIT_ADDRESS, f"file://localhost{clone}")
    repo = tmp_path / "driver-repo"
    repo.mkdir()
    result = bash(block, repo, _clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    installed = _installed_file(repo)
    assert installed.is_relative_to(repo / ".venv"), installed
    assert (installed.parent / "_bundled" / "drivers" / "linux-mutex-tests" / "Kbuild").is_file()


def test_install_from_a_wheel_then_set_up(readme: Readme, workspace: Path) -> None:
    assert _installed_file(workspace).is_relative_to(workspace / ".venv")
    result = bash(readme.shell["setup"], workspace, _activated(workspace))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"vmtest {vmtest.__version__}" in result.stdout
    assert "Linux image ready" in result.stderr or "is already built" in result.stderr, result.stderr


def _validate_command(readme: Readme) -> str:
    (line,) = [line for line in readme.shell["run"].splitlines() if line.startswith("vmtest validate")]
    return line


@pytest.mark.parametrize("mode", MODES)
def test_each_modes_configuration_is_valid(readme: Readme, workspace: Path, mode: str) -> None:
    folder = workspace / mode
    folder.mkdir()
    (folder / "vmtest.yaml").write_text(readme.configs[mode], encoding="utf-8")
    result = bash(_validate_command(readme), folder, _activated(workspace))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vmtest.yaml: valid" in result.stdout


def _run_and_read(readme: Readme, workspace: Path, folder: Path, config: str) -> None:
    """Run the README's run and report blocks in ``folder`` on ``config`` and the bundled mutex driver."""
    folder.mkdir()
    (folder / "vmtest.yaml").write_text(config, encoding="utf-8")
    package = yaml.safe_load(config)["driver"]["package"]
    bundled = _installed_file(workspace).parent / "_bundled" / "drivers" / "linux-mutex-tests"
    shutil.copytree(bundled, folder / package)
    env = _activated(workspace)
    ran = bash(readme.shell["run"], folder, env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (folder / "junit.xml").is_file()
    report = bash(readme.shell["report"], folder, env)
    assert report.returncode == 0, report.stdout + report.stderr
    for name in ("verdicts.json", "report.html", "capture.log", "junit.xml"):
        assert name in report.stdout.split(), name
    assert '"status": "passed"' in report.stdout


def test_the_protocol_configuration_runs_and_its_report_reads(readme: Readme, workspace: Path) -> None:
    _run_and_read(readme, workspace, workspace / "protocol-run", readme.configs["protocol"])
