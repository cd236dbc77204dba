"""``vmtest image build linux|windows11``: its options and how they reach the builders."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmtest.errors import ConfigError
from vmtest.progress import make_progress

__all__ = ["add_image_build_options", "image_build"]


def add_image_build_options(build: argparse.ArgumentParser) -> None:
    """The options of ``vmtest image build``."""
    build.add_argument("kind", choices=["linux", "windows11"], help="linux: the self-test guest; windows11")
    build.add_argument("--force", action="store_true", help="rebuild even if an image is already there")
    windows = build.add_argument_group("windows11")
    windows.add_argument("--iso", type=Path, help="the Windows 11 evaluation ISO")
    windows.add_argument("--openssh-zip", type=Path, help="a Win32-OpenSSH release zip, installed offline")
    windows.add_argument("--output", type=Path, help="where the sealed image goes (default: the image cache)")
    windows.add_argument(
        "--dry-run", action="store_true", help="print the plan and the QEMU command; run nothing"
    )
    which = windows.add_mutually_exclusive_group()
    which.add_argument("--image-name", help="the edition in install.wim, by name")
    which.add_argument("--image-index", type=int, help="the edition in install.wim, by index")
    windows.add_argument("--product-key", help="none for evaluation media")
    windows.add_argument("--user", default="vmtest", help="the local administrator")
    windows.add_argument(
        "--password-env", default="VMTEST_WINDOWS_PASSWORD", help="environment variable with its password"
    )
    windows.add_argument("--computer-name", default="VMTEST-WIN11")
    windows.add_argument("--language", default="en-US")
    windows.add_argument("--tpm", action="store_true", help="a swtpm TPM 2.0 instead of the LabConfig bypass")
    windows.add_argument(
        "--no-kernel-debug", action="store_true", help="leave kernel debugging off (DebugView then)"
    )
    windows.add_argument("--sshd-start", choices=["auto", "delayed-auto"], default="auto")
    windows.add_argument(
        "--crash-dump", choices=["complete", "kernel", "small", "automatic", "active"], default="kernel"
    )
    windows.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    windows.add_argument(
        "--allow-tcg", action="store_true", help="install under TCG (very slow) instead of refusing"
    )
    windows.add_argument("--memory", type=int, default=4096, metavar="MIB")
    windows.add_argument("--cpus", type=int, default=4)
    windows.add_argument("--disk-size", type=int, default=64, metavar="GIB")
    windows.add_argument("--timeout", type=float, default=7200.0, metavar="SECONDS", help="the whole build")
    windows.add_argument(
        "--tool", type=Path, action="append", default=[], metavar="FILE", help=r"copied to C:\vmtest\tools"
    )
    windows.add_argument("--artifacts", type=Path, default=Path("vmtest-artifacts"))
    windows.add_argument("--qemu", default="qemu-system-x86_64")


def image_build(args: argparse.Namespace) -> int:
    """Build the image ``args.kind`` names."""
    if args.kind == "windows11":
        return _windows11(args)
    from vmtest.images.linux import build_linux_image

    progress = make_progress()
    try:
        with progress.phase("image", "building the Linux self-test guest from Debian packages"):
            image = build_linux_image(force=args.force, log=progress.note)
        progress.note(f"image: {image.root} (kernel {image.kernel_release})")
    finally:
        progress.close()
    return 0


def _windows11(args: argparse.Namespace) -> int:
    from vmtest.images.windows11 import image_build_windows11_command

    if args.iso is None:
        raise ConfigError("vmtest image build windows11 needs --iso PATH (a Windows 11 evaluation ISO)")
    return image_build_windows11_command(
        args.iso,
        openssh_zip=args.openssh_zip,
        output=args.output,
        dry_run=args.dry_run,
        image_name=args.image_name,
        image_index=args.image_index,
        product_key=args.product_key,
        user=args.user,
        password_env=args.password_env,
        computer_name=args.computer_name,
        language=args.language,
        tpm=args.tpm,
        kernel_debug=not args.no_kernel_debug,
        sshd_start=args.sshd_start,
        crash_dump=args.crash_dump,
        accel=args.accel,
        allow_tcg=args.allow_tcg,
        memory_mib=args.memory,
        cpus=args.cpus,
        disk_size_gib=args.disk_size,
        timeout=args.timeout,
        tools=tuple(args.tool),
        artifacts=args.artifacts,
        qemu=args.qemu,
        force=args.force,
    )
