"""Carrying out a Windows image plan: :func:`build_windows_image` prepares, installs and seals.

It makes the answer ISO, the client's SSH key and a blank qcow2 in the work folder (under a lock in
the image folder's parent), runs the install and seals the image. When anything fails it removes the
answer ISO (it holds the password), the work folder and the overlays, and locates the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from vmtest.errors import ConfigError, ImageError, InfraError
from vmtest.images.keys import make_client_key
from vmtest.images.windows11.answer import check_password
from vmtest.images.windows11.answer_iso import build_answer_iso
from vmtest.images.windows11.host import preflight, run
from vmtest.images.windows11.image import WindowsImage
from vmtest.images.windows11.install import install_windows
from vmtest.images.windows11.plan import WindowsImagePlan
from vmtest.images.windows11.seal import seal_image
from vmtest.progress import Progress

__all__ = ["build_windows_image"]


def build_windows_image(plan: WindowsImagePlan, progress: Progress) -> WindowsImage:
    """Carry out ``plan`` (from synchronous code: runs its own event loop); the sealed image.

    Raises ConfigError for a missing password, ImageError (with the run directory and a screenshot)
    when a step fails, AcceleratorError when KVM cannot run the installer and TCG was not allowed.
    """
    return asyncio.run(_build(plan, progress))


async def _build(plan: WindowsImagePlan, progress: Progress) -> WindowsImage:
    started = time.monotonic()
    built_at = datetime.datetime.now(datetime.timezone.utc)
    password = _read_password(plan.options.password_env)
    missing = preflight(plan.options, plan.iso_tool)
    if missing:
        raise ImageError("; ".join(missing), phase="prepare", artifacts=plan.run_dir.path)
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(plan.output.parent):
        shutil.rmtree(plan.work_dir, ignore_errors=True)  # left over by a killed build
        plan.work_dir.mkdir()
        try:
            with progress.phase("prepare", "answer ISO, keys and a blank disk"):
                client = make_client_key(plan.work_dir) if plan.options.openssh_zip is not None else None
                build_answer_iso(plan, password, client)
                run(["qemu-img", "create", "-q", "-f", "qcow2", plan.disk, f"{plan.options.disk_size_gib}G"])
            try:
                report, accel = await install_windows(plan, progress)
            finally:
                plan.answer_iso.unlink(missing_ok=True)  # it holds the password
            with progress.phase("seal", "committing the disk and writing image.json"):
                image = seal_image(plan, report, accel, built_at, time.monotonic() - started)
        except BaseException as error:
            plan.answer_iso.unlink(missing_ok=True)  # it holds the password
            shutil.rmtree(plan.work_dir, ignore_errors=True)
            for index in (0, 1):
                plan.run_dir.overlay(index).unlink(missing_ok=True)
            if isinstance(error, InfraError):
                error.located(phase="build", artifacts=plan.run_dir.path)
            raise
    return image


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    with (folder / ".windows-build.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImageError(f"another Windows image build is running in {folder}") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_password(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"set ${variable} to the Windows user's password (it is never printed or stored)")
    return check_password(value, f"${variable}")
