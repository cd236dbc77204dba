"""``vmtest image build windows11``: :func:`image_build_windows11_command`, from options to exit code.

The options become :class:`~vmtest.images.windows11.options.WindowsImageOptions`; the command plans
the build, then prints the plan and stops (``--dry-run``) or carries it out with a progress display.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TextIO

from vmtest.config.models import Accelerator
from vmtest.errors import EXIT_CONFIG, EXIT_INFRA
from vmtest.images.windows11.answer import DEFAULT_COMPUTER_NAME, DEFAULT_USER
from vmtest.images.windows11.build import build_windows_image
from vmtest.images.windows11.options import DEFAULT_PASSWORD_ENV, CrashDump, WindowsImageOptions
from vmtest.images.windows11.plan import plan_windows_image
from vmtest.probe import ProbeReport, run_probe
from vmtest.probe.run import new_image_config
from vmtest.progress import Progress, make_progress

__all__ = ["image_build_windows11_command"]


def image_build_windows11_command(
    iso: Path,
    *,
    openssh_zip: Path | None,
    output: Path | None,
    dry_run: bool,
    image_name: str | None = None,
    image_index: int | None = None,
    product_key: str | None = None,
    user: str = DEFAULT_USER,
    password_env: str = DEFAULT_PASSWORD_ENV,
    computer_name: str = DEFAULT_COMPUTER_NAME,
    language: str = "en-US",
    tpm: bool = False,
    kernel_debug: bool = True,
    sshd_start: Literal["auto", "delayed-auto"] = "auto",
    crash_dump: CrashDump = "kernel",
    accel: Accelerator = "auto",
    allow_tcg: bool = False,
    memory_mib: int = 4096,
    cpus: int = 4,
    disk_size_gib: int = 64,
    timeout: float = 7200.0,
    tools: Sequence[Path] = (),
    artifacts: Path = Path("vmtest-artifacts"),
    qemu: str = "qemu-system-x86_64",
    force: bool = False,
    stdout: TextIO | None = None,
) -> int:
    """``vmtest image build windows11``: plan, then print the plan (``dry_run``) or build; the exit code.

    Bad input raises ConfigError (exit 2) and a failed build an InfraError (exit 3), as everywhere in
    vmtest. A dry run starts nothing and writes only its run directory; it returns 0 when the build
    could start, 2 when the password variable is unset, 3 when something is missing on this host.
    """
    out = stdout if stdout is not None else sys.stdout
    options = WindowsImageOptions(
        iso=iso,
        openssh_zip=openssh_zip,
        output=output,
        artifacts=artifacts,
        image_name=image_name,
        image_index=image_index,
        product_key=product_key,
        user=user,
        password_env=password_env,
        computer_name=computer_name,
        language=language,
        input_locale=language,
        sshd_start=sshd_start,
        crash_dump=crash_dump,
        disk_size_gib=disk_size_gib,
        memory_mib=memory_mib,
        cpus=cpus,
        tpm=tpm,
        kernel_debug=kernel_debug,
        accel=accel,
        allow_tcg=allow_tcg,
        qemu=qemu,
        tools=tuple(tools),
        timeout=timeout,
        force=force,
    )
    plan = plan_windows_image(options)
    if dry_run:
        print("\n".join(plan.describe()), file=out)
        print(f"dry run: nothing was started; the plan is in {plan.run_dir.path}", file=out)
        if plan.host_problems:
            return EXIT_INFRA
        return 0 if plan.password_set else EXIT_CONFIG
    progress = make_progress()
    try:
        progress.note(f"run directory: {plan.run_dir.path}")
        image = build_windows_image(plan, progress)
        progress.note(f"image: {image.root}")
        if image.licence_expires is not None:
            progress.note(f"licence expires on {image.licence_expires}")
        report = _probe(image.root, options, kernel_debug=image.kernel_debug, progress=progress)
    finally:
        progress.close()
    print(report.summary(), file=out)
    return EXIT_CONFIG if report.blocking else 0


def _probe(
    image: Path, options: WindowsImageOptions, *, kernel_debug: bool, progress: Progress
) -> ProbeReport:
    """The last step of a build: boot the new image once and check every assumption vmtest makes."""
    config = new_image_config(
        image,
        user=options.user,
        password=os.environ.get(options.password_env, ""),
        kernel_debug=kernel_debug,
        allow_tcg=options.allow_tcg,
        machine={"accel": options.accel, "qemu": options.qemu, "memory_mib": options.memory_mib},
        artifacts=options.artifacts,
    )
    return asyncio.run(run_probe(config, progress))
