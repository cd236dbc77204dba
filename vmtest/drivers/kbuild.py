"""Building an out-of-tree Linux kernel module against a guest's kernel headers (Kbuild)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vmtest.errors import DriverError

__all__ = ["build_module"]

BUILD_TIMEOUT = 300.0


def build_module(source: Path, headers: Path, build_dir: Path) -> Path:
    """Build the module in ``source`` (a folder with a Kbuild file) against ``headers`` in ``build_dir``.

    The source is copied first so that the build leaves nothing in the source tree. Returns the
    ``.ko``; raises DriverError with the compiler's output when the build fails.
    """
    if not (source / "Kbuild").is_file() and not (source / "Makefile").is_file():
        raise DriverError(f"{source} has no Kbuild or Makefile: not a kernel module source folder")
    if not (headers / "Makefile").is_file():
        raise DriverError(f"{headers} is not a kernel build directory (no Makefile); rebuild the guest image")
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(source, build_dir)
    command = ["make", "-C", str(headers), f"M={build_dir}", f"-j{os.cpu_count() or 1}", "modules"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise DriverError("`make` is not installed: apt-get install make gcc") from None
    except subprocess.TimeoutExpired:
        raise DriverError(f"building the module in {source} took more than {BUILD_TIMEOUT:.0f}s") from None
    if result.returncode != 0:
        raise DriverError(
            f"building the module in {source} failed", output=(result.stdout + result.stderr)[-4000:]
        )
    modules = sorted(build_dir.glob("*.ko"))
    if len(modules) != 1:
        raise DriverError(f"building {source} produced {len(modules)} modules, expected one")
    return modules[0]
