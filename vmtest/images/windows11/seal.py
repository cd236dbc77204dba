"""Sealing a Windows image: commit the install into its disk, keep its UEFI variables, write ``image.json``.

The manifest records what was configured (never the password), the SSH host key, the build time,
sha256 of the disk and the evaluation licence's start and expiry. The work folder is renamed into
place only then, so a half-built image is never taken for one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from typing import Any

from vmtest.errors import ImageError
from vmtest.images.digest import sha256_file
from vmtest.images.keys import CLIENT_KEY_PATH, CLIENT_PUBLIC_KEY_PATH
from vmtest.images.manifest import MANIFEST_NAME
from vmtest.images.windows11.answer_iso import DEBUG_PRINT_FILTER, READY_TASK
from vmtest.images.windows11.host import SLOW, run
from vmtest.images.windows11.image import IMAGE_KIND, MANIFEST_FORMAT, WindowsImage
from vmtest.images.windows11.markers import MARKERS, ProvisionLog
from vmtest.images.windows11.plan import DISK_PATH, GUEST_FOLDER, WindowsImagePlan
from vmtest.machine.profiles.windows11 import KD_BAUD_RATE, KD_DEBUG_PORT, TPM_STATE

__all__ = ["seal_image"]

EVALUATION_DAYS = 90  # windows11-vm.md §6.1

# Layout of a built image, relative to its folder (the disk: DISK_PATH).
EFIVARS_PATH = "efivars.fd"
TPM_PATH = "tpm"
HOST_PUBLIC_KEY_PATH = "keys/ssh_host_ed25519_key.pub"


def seal_image(
    plan: WindowsImagePlan, report: ProvisionLog, accel: str, built_at: datetime.datetime, seconds: float
) -> WindowsImage:
    """Commit the install into the work folder's disk, write ``image.json``, move it into place; the image."""
    work = plan.work_dir
    disk_overlay, vars_overlay = plan.run_dir.overlay(0), plan.run_dir.overlay(1)
    run(["qemu-img", "commit", "-q", disk_overlay], timeout=SLOW)
    run(
        ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", vars_overlay, work / EFIVARS_PATH],
        timeout=SLOW,
    )
    disk_overlay.unlink()
    vars_overlay.unlink()
    info = json.loads(run(["qemu-img", "info", "--output=json", work / DISK_PATH]))
    if info.get("backing-filename") or info.get("format") != "qcow2":
        raise ImageError(f"{work / DISK_PATH} is not a standalone qcow2 after the commit: {info}")
    tpm_state = plan.run_dir.path / TPM_STATE
    if plan.options.tpm and tpm_state.is_dir():
        shutil.copytree(tpm_state, work / TPM_PATH)
    if report.host_key is not None:
        (work / HOST_PUBLIC_KEY_PATH).parent.mkdir(parents=True, exist_ok=True)
        (work / HOST_PUBLIC_KEY_PATH).write_text(report.host_key + "\n", encoding="utf-8")
    elif plan.options.openssh_zip is not None:
        raise ImageError("the guest never printed its SSH host key (VMTEST-HOSTKEY); see serial-console.log")
    manifest = _manifest(plan, report, accel, built_at, seconds, int(info["virtual-size"]))
    (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in (DISK_PATH, EFIVARS_PATH):
        (work / name).chmod(0o444)  # runs only ever use overlays of them
    if plan.output.exists():
        old = plan.output.with_name(f".old-{plan.output.name}-{os.getpid()}")
        os.rename(plan.output, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(work, plan.output)
    if plan.default_location:
        link = plan.output.parent / f".current.{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(plan.output.name)
        os.replace(link, plan.output.parent / "current")
    return WindowsImage.load(plan.output)


def _licence(report: ProvisionLog, built_at: datetime.datetime) -> dict[str, Any]:
    """The evaluation licence's start and expiry: from the guest's grace period, else 90 days (§6.1)."""
    info = report.licence or {}
    started = built_at.date()
    installed = (report.os_info or {}).get("install_date")
    if isinstance(installed, str):
        with contextlib.suppress(ValueError):
            started = datetime.date.fromisoformat(installed[:10])
    minutes = info.get("grace_minutes")
    description = info.get("description")
    if isinstance(minutes, int) and not isinstance(minutes, bool) and minutes > 0:
        expires = (built_at + datetime.timedelta(minutes=minutes)).date()
        source = "the guest (SoftwareLicensingProduct.GracePeriodRemaining)"
    else:
        minutes = None
        expires = started + datetime.timedelta(days=EVALUATION_DAYS)
        source = f"assumed: a {EVALUATION_DAYS}-day evaluation from the install date (windows11-vm.md §6.1)"
    return {
        "evaluation": ("EVAL" in description.upper()) if isinstance(description, str) else None,
        "description": description if isinstance(description, str) else None,
        "started": started.isoformat(),
        "expires": expires.isoformat(),
        "grace_minutes": minutes,
        "source": source,
    }


def _manifest(
    plan: WindowsImagePlan,
    report: ProvisionLog,
    accel: str,
    built_at: datetime.datetime,
    seconds: float,
    virtual_size: int,
) -> dict[str, Any]:
    options = plan.options
    key, value = plan.answer.image_selection
    work = plan.work_dir
    openssh = options.openssh_zip
    return {
        "format": MANIFEST_FORMAT,
        "kind": IMAGE_KIND,
        "built_at": built_at.isoformat(timespec="seconds"),
        "build_seconds": round(seconds),
        "paths": {
            "disk": DISK_PATH,
            "efivars": EFIVARS_PATH,
            "tpm_state": TPM_PATH if (work / TPM_PATH).is_dir() else None,
            "client_key": CLIENT_KEY_PATH if openssh else None,
            "client_public_key": CLIENT_PUBLIC_KEY_PATH if openssh else None,
            "host_public_key": HOST_PUBLIC_KEY_PATH if report.host_key else None,
        },
        "sha256": {DISK_PATH: sha256_file(work / DISK_PATH), EFIVARS_PATH: sha256_file(work / EFIVARS_PATH)},
        "disk_virtual_size": virtual_size,
        "source_iso": {
            "name": options.iso.name,
            "size": options.iso.stat().st_size,
            "sha256": sha256_file(options.iso),
        },
        "image_selection": {"key": key, "value": value},
        "windows": report.os_info,
        "licence": _licence(report, built_at),
        "user": plan.answer.user,
        "computer_name": plan.answer.computer_name,
        "host_key": report.host_key,
        "ready_marker": MARKERS.ready,
        "configured": {
            "test_signing": True,
            "secure_boot": False,
            "kernel_debugging": {
                "enabled": options.kernel_debug,
                "port": f"COM{KD_DEBUG_PORT}",
                "debugport": KD_DEBUG_PORT,
                "baudrate": KD_BAUD_RATE,
            },
            "debug_print_filter": dict(DEBUG_PRINT_FILTER),
            "openssh": None
            if openssh is None
            else {
                "zip": openssh.name,
                "sha256": sha256_file(openssh),
                "start": options.sshd_start,
                "shell": "cmd.exe",
            },
            "smb": {"firewall": "TCP 445 inbound, every profile", "LocalAccountTokenFilterPolicy": 1},
            "windows_update": "off",
            "defender_realtime": "off",
            "sleep": "off",
            "hibernation": "off",
            "crash_dump": {"type": options.crash_dump, "auto_reboot": False},
            "network_category": "private",
            "tpm": {"enabled": options.tpm, "model": options.tpm_model if options.tpm else None},
            "labconfig": list(plan.answer.labconfig),
            "product_key": options.product_key is not None,
            "ready_task": f"{READY_TASK}: at startup, as SYSTEM, prints {MARKERS.ready} on COM2",
            "tools": [tool.name for tool in options.tools],
            "guest_folder": GUEST_FOLDER,
        },
        "firmware": {"ovmf_code": str(options.ovmf_code), "ovmf_vars_template": str(options.ovmf_vars)},
        "hardware": {
            "machine": "q35",
            "disk": "AHCI (ide-hd)",
            "nic": "e1000e",
            "serial": {"COM1": "kd", "COM2": "console"},
            "built_with_accelerator": accel,
        },
        "warnings": report.warnings,
    }
