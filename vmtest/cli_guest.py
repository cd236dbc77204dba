"""``vmtest exec`` and ``vmtest copy``: for a person poking at a guest by hand.

Both work on a guest kept running by ``vmtest boot --keep`` (``--vm RUN_DIR``), or boot a fresh one
from the configuration, do their one thing and shut it down.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from vmtest.config import load_config
from vmtest.config.models import VmtestConfig
from vmtest.errors import ConfigError
from vmtest.guest.transport import Transport
from vmtest.guests import GuestAccess
from vmtest.progress import make_progress
from vmtest.session import VmSession

__all__ = ["copy", "execute", "parse_copy_operands"]

GUEST_PREFIX = "guest:"
T = TypeVar("T")


def execute(config_path: Path | None, vm: Path | None, command: Sequence[str], timeout: float) -> int:
    """Run ``command`` in the guest, print its output, and return its exit status."""
    if not command:
        raise ConfigError("nothing to run: give the command after `--`, e.g. `vmtest exec -- uname -a`")

    def run(transport: Transport) -> int:
        result = transport.run(command, timeout=timeout)
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
        return result.exit_code

    return _with_transport(config_path, vm, run, timeout)


def parse_copy_operands(source: str, destination: str) -> tuple[str, str, bool]:
    """Return (guest path, host path, upload?) from ``SRC DST`` where exactly one side is ``guest:PATH``."""
    source_in_guest = source.startswith(GUEST_PREFIX)
    destination_in_guest = destination.startswith(GUEST_PREFIX)
    if source_in_guest == destination_in_guest:
        raise ConfigError("exactly one of SRC and DST must be a guest path written as guest:PATH")
    if destination_in_guest:
        return destination.removeprefix(GUEST_PREFIX), source, True
    return source.removeprefix(GUEST_PREFIX), destination, False


def copy(config_path: Path | None, vm: Path | None, source: str, destination: str, timeout: float) -> int:
    """Copy a file into or out of the guest, with progress."""
    guest_path, host_path, upload = parse_copy_operands(source, destination)
    if upload and not Path(host_path).is_file():
        raise ConfigError(f"{host_path} is not a file")
    progress = make_progress()

    def transfer(transport: Transport) -> int:
        def report(done: int, total: int) -> None:
            if done == total:
                progress.note(f"copied {done} bytes")

        if upload:
            transport.put(Path(host_path), guest_path, timeout=timeout, progress=report)
        else:
            transport.get(guest_path, Path(host_path), timeout=timeout, progress=report)
        return 0

    try:
        return _with_transport(config_path, vm, transfer, timeout)
    finally:
        progress.close()


def _with_transport(
    config_path: Path | None, vm: Path | None, action: Callable[[Transport], int], timeout: float
) -> int:
    if vm is not None:
        try:
            access = GuestAccess.read(vm)
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"{vm} is not the run directory of a running guest ({error})") from None
        with access.transport() as transport:
            transport.wait_ready(timeout)
            return action(transport)
    return asyncio.run(_boot_and(load_config(config_path), action, timeout))


async def _boot_and(config: VmtestConfig, action: Callable[[Transport], int], timeout: float) -> int:
    progress = make_progress()
    try:
        async with VmSession(config, progress, label="exec") as session:
            guest = await session.connect()
            return await session.call(
                action, guest.transport, timeout=timeout + 10, what="running the command"
            )
    finally:
        progress.close()
