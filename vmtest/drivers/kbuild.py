"""Building an out-of-tree Linux kernel module against a guest's kernel headers (Kbuild).

With a cache folder, a module built before from the same source files, headers and compiler is
reused (Kbuild takes ~1.5 s under load even when nothing changed): the key is the sha256 of every
source file's path and content, the headers' path and their Makefile's and ``.config``'s size and
time, and the ``gcc`` and ``make`` binaries' size and time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vmtest.errors import DriverError

__all__ = ["build_key", "build_module"]

log = logging.getLogger(__name__)

BUILD_TIMEOUT = 300.0
KEPT_BUILDS = 20
"""How many built modules the cache keeps (the newest; a module is ~0.5 MB)."""
_KEY_FORMAT = 1


def build_module(source: Path, headers: Path, build_dir: Path, *, cache: Path | None = None) -> Path:
    """Build the module in ``source`` (a folder with a Kbuild file) against ``headers`` in ``build_dir``.

    The source is copied first so that the build leaves nothing in the source tree. Returns the
    ``.ko``; raises DriverError with the compiler's output when the build fails. With ``cache``, a
    module built before from the same inputs is copied into ``build_dir`` instead, and a new build
    is kept there for the next time.
    """
    if not (source / "Kbuild").is_file() and not (source / "Makefile").is_file():
        raise DriverError(f"{source} has no Kbuild or Makefile: not a kernel module source folder")
    if not (headers / "Makefile").is_file():
        raise DriverError(f"{headers} is not a kernel build directory (no Makefile); rebuild the guest image")
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(source, build_dir)
    entry = cache / build_key(source, headers) if cache is not None else None
    if entry is not None:
        cached = sorted(entry.glob("*.ko"))
        if len(cached) == 1:
            log.info("module unchanged since it was built (%s): reusing it", entry)
            return Path(shutil.copy2(cached[0], build_dir / cached[0].name))
    module = _make(source, headers, build_dir)
    if entry is not None:
        _keep(module, entry)
    return module


def build_key(source: Path, headers: Path) -> str:
    """The cache key of building ``source`` against ``headers`` (see the module's docstring)."""
    files = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        files[path.relative_to(source).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    tools = {name: _stamp(shutil.which(name)) for name in ("gcc", "make")}
    material = {
        "format": _KEY_FORMAT,
        "files": files,
        "headers": str(headers.resolve()),
        "headers_files": {name: _stamp(str(headers / name)) for name in ("Makefile", ".config")},
        "tools": tools,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def _stamp(path: str | None) -> list[int] | None:
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _keep(module: Path, entry: Path) -> None:
    """Store ``module`` as the cache entry ``entry``, atomically; a failure only costs the next build."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        shutil.copy2(module, staging / module.name)
        try:
            staging.rename(entry)
        except OSError:  # another run stored the same build first
            shutil.rmtree(staging, ignore_errors=True)
        entries = [path for path in entry.parent.iterdir() if not path.name.startswith(".")]
        for old in sorted(entries, key=lambda path: path.stat().st_mtime_ns)[:-KEPT_BUILDS]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        log.warning("the built module could not be kept in %s: %s", entry.parent, error)


def _make(source: Path, headers: Path, build_dir: Path) -> Path:
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
