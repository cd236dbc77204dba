"""``vmtest doctor``: can this host run the configured guest, and if not, what to do about it.

Each check answers one question (is QEMU there and recent enough, can KVM run a guest, is the image
there and intact, ...) with a severity that depends on the configured guest: a Linux guest falls back to
TCG when KVM cannot run it, so a KVM failure is a warning there and an error for a Windows guest. The
exit code is 0 exactly when no check failed with severity ``error``.

The Windows guest model is read through ``config.guest.kind`` and ``getattr`` only, so this module does
not depend on it. A Windows image may have a metadata file next to it (``<image>.json``, see
:func:`windows_metadata_path`) with ``sha256`` (the image's hash) and ``licence_expires`` (ISO date on
which the evaluation licence runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from vmtest.config import load_config
from vmtest.config.models import VmtestConfig
from vmtest.errors import EXIT_INFRA, VmtestError
from vmtest.images.digest import sha256_file
from vmtest.images.linux import BUILD_COMMAND, LinuxImage, default_cache_root, find_linux_image
from vmtest.machine.accel import probe_kvm
from vmtest.machine.profiles import profile_for

__all__ = [
    "LICENCE_WARNING_DAYS",
    "Check",
    "Severity",
    "doctor_command",
    "doctor_exit_code",
    "qemu_version",
    "render",
    "run_checks",
    "windows_image_checks",
    "windows_metadata_path",
]

Severity = Literal["error", "warning", "info"]

PNG_SCREENSHOT_QEMU = (7, 1)  # QMP screendump's "format" argument is "Since 7.1"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
KVM_DEVICE = "/dev/kvm"
KVM_CHECK_EXTENSION = 0xAE03  # _IO(KVMIO, 0x03)
KVM_CAP_HYPERV = 44
GIB = 1 << 30
DISK_ERROR_BYTES = 2 * GIB
DISK_WARNING_BYTES = 10 * GIB
LICENCE_WARNING_DAYS = 14
HASH_CACHE_NAME = "doctor-hashes.json"
RUNNER_SETUP = "ci/runner/setup.sh --image PATH"
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


def _check_ovmf(config: VmtestConfig) -> Check:
    missing = [str(path) for path in (OVMF_CODE, OVMF_VARS) if not path.is_file()]
    if not missing:
        return _passed("ovmf", f"{OVMF_CODE.name} and {OVMF_VARS.name} in {OVMF_CODE.parent}")
    severity: Severity = "error" if _is_windows(config) else "info"
    return Check(
        "ovmf", False, severity, f"UEFI firmware missing: {', '.join(missing)}", "apt-get install ovmf"
    )


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
# Images
# --------------------------------------------------------------------------------------------------


def _check_linux_image(config: VmtestConfig) -> Check:
    configured: Path | None = getattr(config.guest, "image", None)
    try:
        image = LinuxImage.load(configured) if configured is not None else find_linux_image()
    except VmtestError as error:
        return Check("image", False, "error", str(error), BUILD_COMMAND)
    return _passed("image", f"Linux image {image.root} (kernel {image.kernel_release})")


def windows_metadata_path(image: Path) -> Path:
    """Where the metadata of a Windows image lives: next to it, ``win11.qcow2`` -> ``win11.json``."""
    return image.with_suffix(".json")


def windows_image_checks(image: Path, *, today: datetime.date | None = None) -> list[Check]:
    """The image exists, matches the hash in its metadata, and its evaluation licence has time left."""
    if not image.is_file():
        return [Check("image", False, "error", f"Windows image {image} does not exist", RUNNER_SETUP)]
    checks = [_passed("image", f"Windows image {image} ({image.stat().st_size / GIB:.1f} GiB)")]
    metadata_path = windows_metadata_path(image)
    if not metadata_path.is_file():
        checks.append(
            Check(
                "image-metadata",
                False,
                "info",
                f"no {metadata_path.name} next to the image: its hash and licence expiry are not checked",
                RUNNER_SETUP,
            )
        )
        return checks
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        if not isinstance(metadata, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        return [
            *checks,
            Check("image-metadata", False, "warning", f"cannot read {metadata_path}: {error}", ""),
        ]
    checks.append(_check_hash(image, metadata.get("sha256")))
    checks.append(_check_licence(metadata.get("licence_expires"), today or datetime.date.today()))
    return checks


def _check_hash(image: Path, expected: object) -> Check:
    if not isinstance(expected, str) or not expected:
        return Check("image-hash", False, "info", "the metadata records no sha256", RUNNER_SETUP)
    actual = _cached_sha256(image)
    if actual.lower() != expected.strip().lower():
        return Check(
            "image-hash",
            False,
            "error",
            f"{image} has sha256 {actual}, its metadata says {expected}: the image changed or is damaged",
            f"copy the golden image again: {RUNNER_SETUP}",
        )
    return _passed("image-hash", f"sha256 {actual} matches the metadata")


def _check_licence(expires: object, today: datetime.date) -> Check:
    fix = "rebuild the golden image (a fresh evaluation install starts a new 90-day licence), then place it: "
    fix += RUNNER_SETUP
    if expires is None:
        return Check("licence", False, "info", "the metadata records no licence_expires", "")
    try:
        date = datetime.date.fromisoformat(str(expires)[:10])
    except ValueError:
        return Check("licence", False, "warning", f"licence_expires {expires!r} is not an ISO date", "")
    days = (date - today).days
    if days <= 0:
        return Check("licence", False, "error", f"the evaluation licence expired on {date}", fix)
    if days <= LICENCE_WARNING_DAYS:
        return Check(
            "licence", False, "warning", f"the evaluation licence expires in {days} day(s), {date}", fix
        )
    return _passed("licence", f"the evaluation licence runs until {date} ({days} days)")


def _cached_sha256(path: Path) -> str:
    """The file's sha256, rehashed only when its size or modification time changed since last time."""
    cache_file = default_cache_root() / HASH_CACHE_NAME
    try:
        cache: dict[str, Any] = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    info = path.stat()
    key = str(path.resolve())
    stamp = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    entry = cache.get(key)
    if isinstance(entry, dict) and {name: entry.get(name) for name in stamp} == stamp:
        return str(entry["sha256"])
    digest = sha256_file(path)
    cache[key] = {**stamp, "sha256": digest}
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, cache_file)
    return digest


def _check_images(config: VmtestConfig) -> list[Check]:
    if not _is_windows(config):
        return [_check_linux_image(config)]
    image: Path | None = getattr(config.guest, "image", None)
    if image is None:
        return [Check("image", False, "error", "the configuration names no Windows image (guest.image)", "")]
    return windows_image_checks(image)


# --------------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------------


def run_checks(config: VmtestConfig) -> list[Check]:
    """Every check, in the order a person would fix them."""
    from vmtest.doctor_warm import warm_store_checks  # it builds on Check, defined here

    windows_tool: Severity = "warning" if _is_windows(config) else "info"
    return [
        _check_qemu(config.machine.qemu),
        _check_program("qemu-img", "qemu-utils", "error", "every run's disk overlay is made with it"),
        _check_kvm(config),
        _check_hyperv(config),
        _check_ovmf(config),
        _check_program("swtpm", "swtpm swtpm-tools", windows_tool, "the TPM of Windows guests"),
        _check_program("xorriso", "xorriso", windows_tool, "building Windows images"),
        *_check_disk_space(config),
        *warm_store_checks(config),
        *_check_images(config),
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


def doctor_command(config_path: Path | None, *, json_output: bool) -> int:
    """``vmtest doctor [CONFIG] [--json]``: print the report and return the exit code.

    A configuration that does not load raises ConfigError, which the command line turns into exit 2.
    """
    checks = run_checks(load_config(config_path))
    code = doctor_exit_code(checks)
    if json_output:
        document = {"ok": code == 0, "exit_code": code, "checks": [asdict(check) for check in checks]}
        print(json.dumps(document, indent=2))
    else:
        print(render(checks), end="")
    return code
