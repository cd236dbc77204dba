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
from vmtest.errors import VmtestError
from vmtest.progress import make_progress
from vmtest.session import VmSession

__all__ = ["main"]

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vmtest`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
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
    boot.set_defaults(command=_boot)

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
    return _run_async(_boot_async(config))


async def _boot_async(config: VmtestConfig) -> int:
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
        progress.note(f"logs: {session.run_dir.path}")
        report = session.shutdown_report
        if report is not None:
            progress.note(f"shut down by {report.step} (QEMU exit status {report.returncode})")
    finally:
        progress.close()
    return 0


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
