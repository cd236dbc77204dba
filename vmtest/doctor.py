"""``vmtest doctor``: can this host run the configured guest, and if not, what to do about it.

Each check answers one question (is QEMU there and recent enough, can KVM run a guest, is the image
there and intact, ...) with a severity that depends on the configured guest: a Linux guest falls back to
TCG when KVM cannot run it, so a KVM failure is a warning there and an error for a Windows guest. The
exit code is 0 exactly when no check failed with severity ``error``.

The image checks (``doctor_image.py``) resolve the image with the function ``vmtest run`` uses and read
what it was built with from its ``image.json``; the host checks for CI runners (memory, CPUs, the kvm
group, the cache folder) are in ``doctor_host.py``. Both are registered in :func:`run_checks`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from vmtest.config import load_config
from vmtest.config.models import VmtestConfig
from vmtest.errors import EXIT_INFRA, VmtestError
from vmtest.images.linux import default_cache_root, find_linux_image
from vmtest.machine.accel import probe_kvm
from vmtest.machine.profiles import profile_for

__all__ = [
    "Check",
    "Severity",
    "doctor_command",
    "doctor_exit_code",
    "qemu_version",
    "render",
    "run_checks",
]

Severity = Literal["error", "warning", "info"]

PNG_SCREENSHOT_QEMU = (7, 1)  # QMP screendump's "format" argument is "Since 7.1"
KVM_DEVICE = "/dev/kvm"
KVM_CHECK_EXTENSION = 0xAE03  # _IO(KVMIO, 0x03)
KVM_CAP_HYPERV = 44
GIB = 1 << 30
DISK_ERROR_BYTES = 2 * GIB
DISK_WARNING_BYTES = 10 * GIB
VERSION_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    """The answer to one question about the host; ``fix`` says what to do when ``ok`` is false."""

    name: str
    ok: bool
    severity: Severity
    detail: str
    fix: str = ""

    @property
    def blocking(self) -> bool:
        """Whether this check keeps the configured guest from running."""
        return not self.ok and self.severity == "error"


def _passed(name: str, detail: str) -> Check:
    return Check(name, True, "info", detail)


def _is_windows(config: VmtestConfig) -> bool:
    kind: str = config.guest.kind
    return kind != "linux"


# --------------------------------------------------------------------------------------------------
# Programs
# --------------------------------------------------------------------------------------------------


def qemu_version(qemu: str) -> tuple[int, int, int] | None:
    """The version ``qemu --version`` prints, or None if it does not run or prints no version."""
    try:
        result = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version\s+(\d+)\.(\d+)(?:\.(\d+))?", result.stdout)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _check_qemu(qemu: str) -> Check:
    path = shutil.which(qemu)
    if path is None:
        return Check("qemu", False, "error", f"{qemu} is not installed", "apt-get install qemu-system-x86")
    version = qemu_version(path)
    if version is None:
        return Check("qemu", False, "warning", f"`{path} --version` printed no version", "reinstall QEMU")
    shown = ".".join(map(str, version))
    if version[:2] < PNG_SCREENSHOT_QEMU:
        return Check(
            "qemu",
            False,
            "warning",
            f"QEMU {shown} at {path}: screenshots need QEMU >= 7.1 (PNG screendump); runs will have none",
            "install QEMU 7.1 or newer (Debian 12 and Ubuntu 24.04 have it)",
        )
    return _passed("qemu", f"QEMU {shown} at {path}")


def _check_program(name: str, package: str, severity: Severity, purpose: str) -> Check:
    path = shutil.which(name)
    if path is not None:
        return _passed(name, path)
    return Check(name, False, severity, f"{name} is not installed ({purpose})", f"apt-get install {package}")


# --------------------------------------------------------------------------------------------------
# KVM
# --------------------------------------------------------------------------------------------------


def _probe_arguments(config: VmtestConfig) -> tuple[str, Path | None]:
    """The CPU model and probe kernel the session's ``auto`` accelerator would use."""
    try:
        profile = profile_for(config)
    except VmtestError:
        return "host", _built_linux_kernel()
    return profile.cpu_model("kvm"), profile.probe_kernel


def _built_linux_kernel() -> Path | None:
    try:
        return find_linux_image().kernel
    except VmtestError:
        return None


def _check_kvm(config: VmtestConfig) -> Check:
    qemu = config.machine.qemu
    if shutil.which(qemu) is None:
        reason, fix = f"not probed: {qemu} is not installed", "install QEMU first (see the qemu check)"
    else:
        cpu_model, kernel = _probe_arguments(config)
        timeout = config.timeouts.accel_probe
        try:
            probe = asyncio.run(
                probe_kvm(qemu, cpu_model, timeout, kernel=kernel, cache_dir=default_cache_root())
            )
        except OSError as error:
            reason = f"the probe could not start {qemu}: {error}"
        else:
            if probe.usable:
                return _passed("kvm", probe.reason)
            reason = probe.reason
        fix = _kvm_fix(reason)
    if _is_windows(config) or config.machine.accel == "kvm":
        return Check("kvm", False, "error", f"KVM cannot run a guest here: {reason}", fix)
    if config.machine.accel == "tcg":
        return Check("kvm", False, "info", f"KVM cannot run a guest here ({reason}); accel is tcg", fix)
    return Check(
        "kvm", False, "warning", f"{reason}; the guest will run under TCG software emulation (slow)", fix
    )


def _kvm_fix(reason: str) -> str:
    if "does not exist" in reason:
        return (
            "enable virtualisation (VT-x/AMD-V) in the firmware, or nested virtualisation on a VM host, "
            "and load kvm_intel or kvm_amd"
        )
    if "kvm group" in reason:
        return "add this user to the kvm group (ci/runner/setup.sh does), then start a new login session"
    return (
        "KVM is there but cannot run this guest (often a nested hypervisor): fix nested virtualisation on "
        "the outer host, or set machine.accel: tcg"
    )


def _check_hyperv(config: VmtestConfig) -> Check:
    severity: Severity = "warning" if _is_windows(config) else "info"
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return Check("kvm-hyperv", False, severity, f"cannot open {KVM_DEVICE}: {error.strerror}", "")
    try:
        supported = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_HYPERV) > 0
    except OSError as error:
        supported = False
        reason = f"KVM_CHECK_EXTENSION failed: {error.strerror}"
    else:
        reason = "the host KVM lacks KVM_CAP_HYPERV"
    finally:
        os.close(fd)
    if supported:
        return _passed("kvm-hyperv", "KVM supports Hyper-V enlightenments (hv-crash reports bugchecks)")
    return Check(
        "kvm-hyperv",
        False,
        severity,
        f"{reason}: QEMU silently ignores hv-* flags, so hv-crash reports no Windows bugcheck code",
        "use a host kernel built with CONFIG_KVM_HYPERV (optional since Linux 6.8); without it a bugcheck "
        "shows only on the kernel debugger and the screen",
    )


# --------------------------------------------------------------------------------------------------
# Files and space
# --------------------------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_disk_space(config: VmtestConfig) -> Iterator[Check]:
    places: dict[int, tuple[list[str], Path]] = {}
    for role, path in (("artifacts", config.artifacts), ("image cache", default_cache_root())):
        existing = _existing_ancestor(path)
        roles, _ = places.setdefault(existing.stat().st_dev, ([], existing))
        roles.append(f"{role} ({path})")
    for roles, existing in places.values():
        free = shutil.disk_usage(existing).free
        detail = f"{free / GIB:.1f} GiB free for {' and '.join(roles)}"
        fix = "free some space, or point artifacts/VMTEST_CACHE at a larger disk"
        if free < DISK_ERROR_BYTES:
            yield Check("disk-space", False, "error", f"{detail}: under {DISK_ERROR_BYTES // GIB} GiB", fix)
        elif free < DISK_WARNING_BYTES:
            yield Check(
                "disk-space", False, "warning", f"{detail}: under {DISK_WARNING_BYTES // GIB} GiB", fix
            )
        else:
            yield _passed("disk-space", detail)


# --------------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------------


def run_checks(config: VmtestConfig) -> list[Check]:
    """Every check, in the order a person would fix them."""
    from vmtest.doctor_confinement import confinement_checks
    from vmtest.doctor_host import host_checks
    from vmtest.doctor_image import image_checks
    from vmtest.doctor_warm import warm_store_checks  # it builds on Check, defined here

    windows_tool: Severity = "warning" if _is_windows(config) else "info"
    return [
        _check_qemu(config.machine.qemu),
        _check_program("qemu-img", "qemu-utils", "error", "every run's disk overlay is made with it"),
        _check_kvm(config),
        _check_hyperv(config),
        _check_program("xorriso", "xorriso", windows_tool, "building Windows images"),
        *host_checks(config),
        *_check_disk_space(config),
        *image_checks(config),
        *confinement_checks(config),
        *warm_store_checks(config),
    ]


def doctor_exit_code(checks: list[Check]) -> int:
    """0 when the configured guest can run (no failed ``error`` check), else vmtest's infrastructure code."""
    return EXIT_INFRA if any(check.blocking for check in checks) else 0


_MARKS = {"error": "FAIL", "warning": "warn", "info": "info"}


def render(checks: list[Check]) -> str:
    """The report for people: one line per check, the fix under every failed one, the outcome last."""
    width = max((len(check.name) for check in checks), default=0)
    lines = []
    for check in checks:
        mark = " ok " if check.ok else _MARKS[check.severity]
        lines.append(f"[{mark}] {check.name.ljust(width)}  {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"       {' ' * width}  fix: {check.fix}")
    errors = sum(check.blocking for check in checks)
    warnings = sum(not check.ok and check.severity == "warning" for check in checks)
    if errors:
        lines.append(f"{errors} error(s), {warnings} warning(s): the configured guest cannot run here")
    else:
        lines.append(f"{warnings} warning(s): the configured guest can run here")
    return "\n".join(lines) + "\n"


def doctor_command(config_path: Path | None, *, json_output: bool, artifacts: Path | None = None) -> int:
    """``vmtest doctor [CONFIG] [--artifacts DIR] [--json]``: print the report and return the exit code.

    ``artifacts`` is where ``vmtest run --artifacts`` will write (its free space is checked there). A
    configuration that does not load raises ConfigError, which the command line turns into exit 2.
    """
    config = load_config(config_path)
    if artifacts is not None:
        config = config.model_copy(update={"artifacts": artifacts})
    checks = run_checks(config)
    code = doctor_exit_code(checks)
    if json_output:
        document = {"ok": code == 0, "exit_code": code, "checks": [asdict(check) for check in checks]}
        print(json.dumps(document, indent=2))
    else:
        print(render(checks), end="")
    return code
