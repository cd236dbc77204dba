"""The answer ISO: ``Autounattend.xml``, the provisioning scripts and their settings, the user's files.

:func:`guest_settings` is what the scripts read (markers, switches, the client's public key; no
secret). The ISO holds the password (base64 UTF-16, not encryption), so :func:`build_answer_iso`
creates it 0600 in the run directory and removes its staged files; the build deletes the ISO when
it ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vmtest.errors import ImageError
from vmtest.images.windows11.answer import render_answer_file
from vmtest.images.windows11.host import SLOW, run
from vmtest.images.windows11.image import MANIFEST_FORMAT
from vmtest.images.windows11.markers import MARKERS
from vmtest.images.windows11.options import CRASH_DUMPS, WindowsImageOptions
from vmtest.images.windows11.plan import (
    ANSWER_FILE,
    GUEST_FOLDER,
    OPENSSH_ZIP,
    SETTINGS_FILE,
    WindowsImagePlan,
)
from vmtest.machine.profiles.windows11 import KD_BAUD_RATE, KD_DEBUG_PORT

__all__ = ["DEBUG_PRINT_FILTER", "READY_TASK", "build_answer_iso", "guest_settings"]

ISO_LABEL = "VMTEST_ANSWER"

# What the provisioning sets up in the guest.
READY_TASK = "vmtest-ready"
READY_WAIT = 300
# Every DbgPrint level (mask 0xF) of the components test drivers print with: DEFAULT (DbgPrint, the wdk
# crate's println!) and IHVDRIVER (DbgPrintEx(DPFLTR_IHVDRIVER_ID, ...), the id Microsoft tells driver
# writers to use; its INFO level is filtered out by default). The "Debug Print Filter" key takes one
# value per component, named as the component id without DPFLTR_ and _ID ("Reading and Filtering
# Debugging Messages", https://learn.microsoft.com/windows-hardware/drivers/devtest/
# reading-and-filtering-debugging-messages; windows11-vm.md §2.8, §4.1).
DEBUG_PRINT_FILTER: dict[str, int] = {"DEFAULT": 0xF, "IHVDRIVER": 0xF}


def guest_settings(options: WindowsImageOptions, authorized_key: str | None) -> dict[str, Any]:
    """``settings.json`` for the provisioning scripts: markers, switches, the client's key; no secret."""
    dump_type, filter_pages = CRASH_DUMPS[options.crash_dump]
    return {
        "format": MANIFEST_FORMAT,
        "target": GUEST_FOLDER,
        "markers": dataclasses.asdict(MARKERS),
        "kernel_debug": {
            "enabled": options.kernel_debug,
            "debugport": KD_DEBUG_PORT,
            "baudrate": KD_BAUD_RATE,
        },
        "debug_print_filter": dict(DEBUG_PRINT_FILTER),
        "crash_dump": {"type": dump_type, "filter_pages": filter_pages, "auto_reboot": 0},
        "openssh": {
            "enabled": options.openssh_zip is not None,
            "zip": Path(OPENSSH_ZIP).name if options.openssh_zip is not None else None,
            "start_type": options.sshd_start,
            "authorized_key": authorized_key,
        },
        "ready_task": READY_TASK,
        "ready_wait_seconds": READY_WAIT,
    }


def build_answer_iso(plan: WindowsImagePlan, password: str, authorized_key: str | None) -> None:
    """Write the answer ISO (0600): generated files, scripts, the OpenSSH zip and the tools.

    ``authorized_key`` is the client's public key line for ``administrators_authorized_keys``. The
    files are staged in the run directory and removed again (the answer file holds the password).
    """
    if plan.iso_tool is None:
        raise ImageError("no ISO writer is installed; apt-get install xorriso (or genisoimage)")
    generated = {
        ANSWER_FILE: render_answer_file(plan.answer, password),
        SETTINGS_FILE: (json.dumps(guest_settings(plan.options, authorized_key), indent=2) + "\n").encode(),
    }
    staging = plan.run_dir.path / "answer-iso"
    staging.mkdir(mode=0o700)
    try:
        for entry in plan.answer_files:
            destination = staging / entry.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            if entry.source is not None:
                shutil.copyfile(entry.source, destination)
            else:
                destination.write_bytes(generated[entry.path])
        fd = os.open(plan.answer_iso, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        run(
            [
                *plan.iso_tool,
                "-quiet",
                "-input-charset",
                "utf-8",
                "-J",
                "-joliet-long",
                "-r",
                "-V",
                ISO_LABEL,
                "-o",
                plan.answer_iso,
                staging,
            ],
            timeout=SLOW,
            fix="apt-get install xorriso",
        )
        os.chmod(plan.answer_iso, 0o600)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the answer file holds the password
