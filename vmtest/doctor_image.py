"""``vmtest doctor``'s image checks: the image a run would use, resolved by the function the run uses.

The image is found by :func:`vmtest.images.linux.resolve_linux_image` or
:func:`vmtest.images.windows11.resolve_windows_image`, exactly as the guest profile of ``vmtest run``
finds it, so the two cannot disagree about which image is meant or whether it is one. What a Windows
image was built with is read from its manifest (``image.json``): the sha256 of its disk and UEFI
variables at sealing, the licence's expiry, whether it needs a TPM, and the OVMF code it was installed
with; the OVMF files the run will use come from the configuration.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vmtest.config.models import VmtestConfig
from vmtest.doctor import Check, Severity
from vmtest.errors import VmtestError
from vmtest.images.digest import sha256_file
from vmtest.images.linux import BUILD_COMMAND as LINUX_BUILD
from vmtest.images.linux import default_cache_root, resolve_linux_image

__all__ = ["HASH_CACHE_NAME", "LICENCE_WARNING_DAYS", "image_checks"]

LICENCE_WARNING_DAYS = 14
HASH_CACHE_NAME = "doctor-hashes.json"
WINDOWS_BUILD = "vmtest image build windows11"
RUNNER_SETUP = "ci/runner/setup.sh --image FOLDER"
GIB = 1 << 30


def image_checks(config: VmtestConfig, *, today: datetime.date | None = None) -> list[Check]:
    """The configured guest's image, and for Windows its hashes, licence, TPM and firmware."""
    configured: Path | None = getattr(config.guest, "image", None)
    if config.guest.kind == "linux":
        try:
            image = resolve_linux_image(configured)
        except VmtestError as error:
            return [Check("image", False, "error", str(error), LINUX_BUILD)]
        return [Check("image", True, "info", f"Linux image {image.root} (kernel {image.kernel_release})")]
    return _windows_checks(config, configured, today or datetime.date.today())


def _windows_checks(config: VmtestConfig, configured: Path | None, today: datetime.date) -> list[Check]:
    from vmtest.images.windows11 import resolve_windows_image

    try:
        image = resolve_windows_image(configured)
    except VmtestError as error:
        fix = f"build one with `{WINDOWS_BUILD}`, or place a built image folder with {RUNNER_SETUP}"
        return [Check("image", False, "error", str(error), fix)]
    size = image.disk.stat().st_size / GIB
    checks = [Check("image", True, "info", f"Windows image {image.root} ({size:.1f} GiB disk)")]
    checks += [_check_hash(image.root / name, expected) for name, expected in sorted(image.sha256.items())]
    if not image.sha256:
        checks.append(Check("image-hash", False, "info", "the manifest records no sha256", ""))
    checks.append(_check_licence(image.licence_expires, today))
    guest: Any = config.guest
    checks.append(_check_tpm(image.tpm if getattr(guest, "tpm", None) is None else bool(guest.tpm)))
    checks += _check_ovmf(guest, image.ovmf_code, image.efivars)
    return checks


def _check_hash(path: Path, expected: str) -> Check:
    if not path.is_file():
        return Check("image-hash", False, "error", f"{path} is missing", f"rebuild with `{WINDOWS_BUILD}`")
    actual = _cached_sha256(path)
    if actual.lower() != expected.strip().lower():
        return Check(
            "image-hash",
            False,
            "error",
            f"{path} has sha256 {actual}, its image.json says {expected}: the image changed or is damaged",
            f"place the golden image again: {RUNNER_SETUP}",
        )
    return Check("image-hash", True, "info", f"{path.name}: sha256 matches image.json")


def _check_licence(expires: datetime.date | None, today: datetime.date) -> Check:
    fix = "rebuild the image (a fresh evaluation install starts a new 90-day licence) and place it: "
    fix += RUNNER_SETUP
    if expires is None:
        return Check("licence", False, "info", "image.json records no licence expiry", "")
    days = (expires - today).days
    if days <= 0:
        return Check("licence", False, "error", f"the evaluation licence expired on {expires}", fix)
    if days <= LICENCE_WARNING_DAYS:
        return Check(
            "licence", False, "warning", f"the evaluation licence expires in {days} day(s), {expires}", fix
        )
    return Check("licence", True, "info", f"the evaluation licence runs until {expires} ({days} days)")


def _check_tpm(wanted: bool) -> Check:
    path = shutil.which("swtpm")
    if path is not None:
        return Check("swtpm", True, "info", path)
    if wanted:
        return Check(
            "swtpm",
            False,
            "error",
            "the image was built with a TPM (or guest.tpm is true) and swtpm is not installed",
            "apt-get install swtpm swtpm-tools",
        )
    return Check("swtpm", False, "info", "swtpm is not installed (this image needs no TPM)", "")


def _check_ovmf(guest: Any, installed_with: Path, image_vars: Path) -> list[Check]:
    code: Path = guest.ovmf.code
    variables: Path = guest.ovmf.vars or image_vars
    checks: list[Check] = []
    for role, path in (("code (guest.ovmf.code)", code), ("variables", variables)):
        if not path.is_file():
            checks.append(
                Check("ovmf", False, "error", f"UEFI {role} {path} does not exist", "apt-get install ovmf")
            )
    if checks:
        return checks
    if code.resolve() != installed_with.resolve():
        severity: Severity = "warning"
        detail = f"OVMF code {code} is not the {installed_with} the image was installed with"
        return [Check("ovmf", False, severity, detail, "set guest.ovmf.code to the image's firmware")]
    return [Check("ovmf", True, "info", f"{code}, variables {variables}")]


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
