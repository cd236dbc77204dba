"""The ``vmtest`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from vmtest.config import DEFAULT_CONFIG_NAME, load_config
from vmtest.config.loader import load_model
from vmtest.config.models import VmtestConfig
from vmtest.errors import ConfigError, DeadlineExceeded, VmtestError
from vmtest.progress import make_progress
from vmtest.session import VmSession

__all__ = ["main"]

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vmtest`` console script; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    guest_command: list[str] = []
    if "--" in words:  # `vmtest exec [CONFIG] -- CMD...`: everything after -- is the guest's
        at = words.index("--")
        words, guest_command = words[:at], words[at + 1 :]
    parser = _parser()
    args = parser.parse_args(words)
    args.guest_command = guest_command
    _configure_logging(args.verbose)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except VmtestError as error:
        print(f"vmtest: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("vmtest: interrupted; the VM was shut down", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtest", description="Integration tests for kernel drivers in QEMU virtual machines."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log vmtest's own steps to stderr")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a configuration file and exit 0 (valid) or 2")
    validate.add_argument("config", nargs="?", type=Path, default=Path(DEFAULT_CONFIG_NAME))
    validate.set_defaults(command=_validate)

    boot = commands.add_parser("boot", help="boot the guest, wait until it is ready, screenshot, shut down")
    boot.add_argument(
        "config", nargs="?", type=Path, help=f"default: ./{DEFAULT_CONFIG_NAME} or the Linux self-test guest"
    )
    boot.add_argument(
        "--keep", action="store_true", help="keep the VM running (until Ctrl-C) and print how to reach it"
    )
    boot.add_argument(
        "--keep-for", type=float, default=3600.0, metavar="SECONDS", help="with --keep: at most"
    )
    boot.set_defaults(command=_boot)

    exec_ = commands.add_parser("exec", help="run a command in the guest: vmtest exec [CONFIG] -- CMD...")
    exec_.add_argument("config", nargs="?", type=Path)
    exec_.add_argument(
        "--vm", type=Path, metavar="RUN_DIR", help="a guest kept running by `vmtest boot --keep`"
    )
    exec_.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    exec_.set_defaults(command=_exec)

    copy = commands.add_parser(
        "copy", help="copy a file in or out: vmtest copy [CONFIG] SRC DST (guest:PATH)"
    )
    copy.add_argument("operands", nargs="+", metavar="[CONFIG] SRC DST")
    copy.add_argument(
        "--vm", type=Path, metavar="RUN_DIR", help="a guest kept running by `vmtest boot --keep`"
    )
    copy.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    copy.set_defaults(command=_copy)

    image = commands.add_parser("image", help="build guest images")
    image_commands = image.add_subparsers(title="image commands", required=True, metavar="ACTION")
    build = image_commands.add_parser("build", help="build a guest image")
    build.add_argument("kind", choices=["linux"], help="linux: the self-test guest, from Debian packages")
    build.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    build.set_defaults(command=_image_build)
    return parser


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("vmtest: %(levelname)s: %(message)s"))
    root = logging.getLogger("vmtest")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def _validate(args: argparse.Namespace) -> int:
    load_model(VmtestConfig, args.config)
    print(f"{args.config}: valid")
    return 0


def _boot(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    return _run_async(_boot_async(config, args.keep_for if args.keep else None))


def _exec(args: argparse.Namespace) -> int:
    from vmtest.cli_guest import execute

    return execute(args.config, args.vm, args.guest_command, args.timeout)


def _copy(args: argparse.Namespace) -> int:
    from vmtest.cli_guest import copy

    operands: list[str] = args.operands
    if len(operands) not in (2, 3):
        raise ConfigError("usage: vmtest copy [CONFIG] SRC DST, with guest paths written as guest:PATH")
    config = Path(operands[0]) if len(operands) == 3 else None
    return copy(config, args.vm, operands[-2], operands[-1], args.timeout)


async def _boot_async(config: VmtestConfig, keep_for: float | None) -> int:
    progress = make_progress()
    started = time.monotonic()
    try:
        async with VmSession(config, progress, label="boot") as session:
            ready_after = time.monotonic() - started
            assert session.machine is not None
            shot = await session.screenshot("ready")
            ports = ", ".join(
                f"{name} on 127.0.0.1:{port}" for name, port in session.machine.forwards.items()
            )
            progress.note(f"guest ready after {ready_after:.1f}s ({ports})")
            progress.note(f"screenshot: {shot}" if shot else "screenshot: not taken (see vmtest.log)")
            if keep_for is not None:
                await _keep(session, keep_for)
        progress.note(f"logs: {session.run_dir.path}")
        report = session.shutdown_report
        if report is not None:
            progress.note(f"shut down by {report.step} (QEMU exit status {report.returncode})")
    finally:
        progress.close()
    return 0


async def _keep(session: VmSession, keep_for: float) -> None:
    from vmtest.guest.connect import GuestAccess

    await session.connect()
    access = GuestAccess.read(session.run_dir.path)
    session.progress.note(f"the VM stays up until Ctrl-C (at most {keep_for:.0f}s); reach it with:")
    session.progress.note(f"  {access.ssh_command(session.run_dir.path)}")
    session.progress.note(f"  vmtest exec --vm {session.run_dir.path} -- uname -a")
    assert session.machine is not None and session.machine.process is not None
    try:
        await session.machine.wait(session.machine.process.wait(), keep_for, "keeping the VM up")
    except DeadlineExceeded:
        session.progress.note(f"--keep-for {keep_for:.0f}s is over; shutting the VM down")


def _image_build(args: argparse.Namespace) -> int:
    from vmtest.images.linux import build_linux_image

    progress = make_progress()
    try:
        with progress.phase("image", "building the Linux self-test guest from Debian packages"):
            image = build_linux_image(force=args.force, log=progress.note)
        progress.note(f"image: {image.root} (kernel {image.kernel_release})")
    finally:
        progress.close()
    return 0


def _run_async(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run ``coroutine`` in a fresh event loop in this thread; SIGTERM is handled like Ctrl-C."""

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coroutine
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(guarded())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
