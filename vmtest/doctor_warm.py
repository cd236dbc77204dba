"""``vmtest doctor`` checks of the warm store: can QEMU map a snapshot's RAM, and is there room for it.

A warm entry holds a file as large as the guest's memory (``machine.memory_mib``), sparse where the
guest never wrote. Its placement is ``machine.warm_store`` (default ``<cache>/warm``): it must be
writable by vmtest and have room for at least one such file; ``/dev/shm`` (tmpfs) keeps it in memory,
a local disk keeps it across reboots and the page cache still serves restores. Neither check blocks a
run: without them a warm run boots cold (or uses snapshot copies), saying why in its log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vmtest.config.models import VmtestConfig
from vmtest.doctor import Check
from vmtest.errors import VmtestError
from vmtest.images.linux import default_cache_root
from vmtest.machine.mapped import mapping_support, store_root
from vmtest.machine.process import find_qemu

__all__ = ["warm_store_checks"]

MIB = 1 << 20
_HEADROOM = 1.25  # the RAM file, the frozen disks and one entry being replaced beside it


def warm_store_checks(config: VmtestConfig) -> list[Check]:
    """Whether warm starts can map the RAM with this QEMU, and whether the store has room for an entry."""
    return [_check_mapping(config), _check_store(config)]


def _check_mapping(config: VmtestConfig) -> Check:
    try:
        reason = mapping_support(find_qemu(config.machine.qemu))
    except (VmtestError, OSError) as error:
        reason = str(error)
    if reason is None:
        return Check("warm-mapping", True, "info", "QEMU restores warm snapshots by mapping their RAM file")
    return Check(
        "warm-mapping",
        False,
        "warning",
        f"warm starts cannot map the RAM ({reason}); they copy whole snapshots instead (slower)",
        "install QEMU 5.0 or newer",
    )


def _check_store(config: VmtestConfig) -> Check:
    root = store_root(config.machine, default_cache_root())
    existing = _existing_ancestor(root)
    needed = int(config.machine.memory_mib * MIB * _HEADROOM)
    free = shutil.disk_usage(existing).free
    fix = "set machine.warm_store to a filesystem with room (a local disk, or /dev/shm if memory allows)"
    where = f"warm store {root} ({_filesystem(existing)})"
    if not os.access(existing, os.W_OK):
        return Check("warm-store", False, "warning", f"{where}: {existing} is not writable", fix)
    detail = f"{where}: {free / MIB:.0f} MiB free, an entry needs up to {needed / MIB:.0f} MiB"
    if free < needed:
        return Check("warm-store", False, "warning", f"{detail}: not enough", fix)
    return Check("warm-store", True, "info", detail)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/self/mounts), or ``unknown``."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind
