"""``vmtest doctor``'s host checks for a CI runner: memory and CPUs, the kvm group, the cache folder.

* RAM: the guest's ``machine.memory_mib`` plus about 1 GiB for QEMU and the host must fit in the host's
  memory (``/proc/meminfo`` ``MemTotal``); less than that available now is a warning.
* CPUs: ``machine.cpus`` virtual CPUs on fewer host CPUs run, but slowly and with timeouts that fire.
* The kvm group: a user added to ``kvm`` (``ci/runner/setup.sh`` does) gets the group only in processes
  started after that, so a runner service started before keeps failing until it is restarted.
* The cache (``VMTEST_CACHE``): it must exist and be writable by this user (runs write the KVM probe's
  answer, built modules and warm snapshots there; the images in it stay read-only).
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from vmtest.config.models import VmtestConfig
from vmtest.doctor import Check
from vmtest.images.linux import default_cache_root

__all__ = ["HOST_OVERHEAD_MIB", "host_checks", "memory_mib"]

HOST_OVERHEAD_MIB = 1024
MEMINFO = Path("/proc/meminfo")
KVM_DEVICE = Path("/dev/kvm")


def memory_mib(meminfo: str) -> dict[str, int]:
    """``MemTotal`` and ``MemAvailable`` of a ``/proc/meminfo`` text, in MiB."""
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name in ("MemTotal", "MemAvailable") and parts:
            values[name] = int(parts[0]) // 1024
    return values


def host_checks(config: VmtestConfig) -> list[Check]:
    """Memory, CPUs, the kvm group's membership and the cache folder."""
    return [_check_memory(config), _check_cpus(config), _check_kvm_group(), _check_cache()]


def _check_memory(config: VmtestConfig) -> Check:
    needed = config.machine.memory_mib + HOST_OVERHEAD_MIB
    try:
        memory = memory_mib(MEMINFO.read_text(encoding="ascii"))
    except OSError as error:
        return Check("memory", False, "warning", f"cannot read {MEMINFO}: {error.strerror}", "")
    total, available = memory.get("MemTotal", 0), memory.get("MemAvailable", 0)
    detail = f"{total} MiB total, {available} MiB available; the guest needs {needed} MiB with QEMU's share"
    fix = "lower machine.memory_mib, or run on a host with more memory"
    if total < needed:
        return Check("memory", False, "error", detail, fix)
    if available < needed:
        return Check("memory", False, "warning", detail, "stop what else uses memory here, or " + fix)
    return Check("memory", True, "info", detail)


def _check_cpus(config: VmtestConfig) -> Check:
    host = os.cpu_count() or 1
    detail = f"{host} host CPU(s) for machine.cpus {config.machine.cpus}"
    if host < config.machine.cpus:
        return Check("cpus", False, "warning", detail + ": the guest runs slowly", "lower machine.cpus")
    return Check("cpus", True, "info", detail)


def _check_kvm_group() -> Check:
    try:
        group = grp.getgrgid(KVM_DEVICE.stat().st_gid)
    except (OSError, KeyError):
        return Check("kvm-group", True, "info", f"{KVM_DEVICE} has no group to join (see the kvm check)")
    user = pwd.getpwuid(os.getuid()).pw_name
    member = user in group.gr_mem or pwd.getpwuid(os.getuid()).pw_gid == group.gr_gid
    active = group.gr_gid in os.getgroups() or os.getegid() == group.gr_gid or os.geteuid() == 0
    if member and not active:
        return Check(
            "kvm-group",
            False,
            "error",
            f"{user} is in the {group.gr_name} group, but this process was started before it was added",
            "restart the runner service (sudo systemctl restart 'actions.runner.*'), or log in again",
        )
    return Check(
        "kvm-group",
        True,
        "info",
        f"{KVM_DEVICE} group {group.gr_name}: {'active' if active else 'not a member'}",
    )


def _check_cache() -> Check:
    cache = default_cache_root()
    if not cache.is_dir():
        return Check(
            "cache",
            False,
            "error",
            f"the cache folder {cache} (VMTEST_CACHE) does not exist",
            "run ci/runner/setup.sh, or create it and build the images: vmtest image build linux",
        )
    if not os.access(cache, os.W_OK | os.X_OK):
        return Check(
            "cache",
            False,
            "error",
            f"{cache} is not writable by this user",
            "ci/runner/setup.sh --user RUNNER_USER",
        )
    return Check("cache", True, "info", f"{cache} exists and is writable")
