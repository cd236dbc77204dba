"""Fixtures shared by the end-to-end tests: vmtest built as a wheel and installed in a fresh virtualenv.

``installed_vmtest`` (session-scoped) builds the sdist and, from it, the wheel (``python -m build``),
creates a virtualenv outside the source tree, installs the wheel into it (dependencies from pip's
usual index, through pip's cache) and checks that the package imported there is the installed one.
Tests run its ``vmtest`` from an empty directory: nothing of the source tree is on their path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE_TREE = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600.0


@dataclass(frozen=True)
class Dist:
    """The sdist and the wheel built from it."""

    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class InstalledVmtest:
    """A virtualenv with vmtest installed from its wheel, and a way to run its commands."""

    venv: Path
    site_packages: Path
    dist: Dist

    @property
    def bin(self) -> Path:
        """The virtualenv's scripts folder."""
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """This environment without anything that would put the source tree on the path."""
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return {**env, **extra}

    def run(
        self, *args: str, cwd: Path, timeout: float = 900.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (a command of the virtualenv, e.g. ``vmtest``) in ``cwd``; never raises on failure."""
        return subprocess.run(
            list(args),
            cwd=cwd,
            env=env if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _check(command: list[str], timeout: float = INSTALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def vmtest_dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist of this source tree, and the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    _check([sys.executable, "-m", "build", "--outdir", str(out), str(SOURCE_TREE)])
    (sdist,) = out.glob("vmtest-*.tar.gz")
    (wheel,) = out.glob("vmtest-*.whl")
    return Dist(sdist, wheel)


@pytest.fixture(scope="session")
def installed_vmtest(tmp_path_factory: pytest.TempPathFactory, vmtest_dist: Dist) -> InstalledVmtest:
    """A fresh virtualenv outside the source tree with vmtest installed from the wheel (not editable)."""
    venv = tmp_path_factory.mktemp("venv")
    _check([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    _check([python, "-m", "pip", "install", "-q", str(vmtest_dist.wheel)])
    purelib = _check([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout
    installed = InstalledVmtest(venv, Path(purelib.strip()), vmtest_dist)
    where = installed.run(
        python, "-c", "import vmtest; print(vmtest.__file__)", cwd=tmp_path_factory.mktemp("empty")
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.site_packages), where.stdout
    assert sysconfig.get_path("purelib") != str(installed.site_packages)
    return installed
