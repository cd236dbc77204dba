"""Starting QEMU so that it can never outlive vmtest."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from vmtest.errors import QemuStartError

__all__ = ["find_qemu", "spawn_bound_to_parent"]

_PR_SET_PDEATHSIG = 1


def find_qemu(binary: str) -> str:
    """Resolve the QEMU binary by name or path, or say how to install it."""
    found = shutil.which(binary)
    if found is None:
        raise QemuStartError(
            f"QEMU binary {binary!r} not found; install it with `apt-get install qemu-system-x86 qemu-utils`"
            " or set machine.qemu in the configuration",
            phase="setup",
        )
    return found


def _die_with(parent_pid: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def in_child() -> None:
        # The kernel sends SIGKILL to this process when the thread that forked it dies, so QEMU cannot
        # outlive vmtest even when vmtest is killed with SIGKILL. If the parent is already gone, stop now.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return in_child


async def spawn_bound_to_parent(
    args: Sequence[str], *, log: Path, pass_fds: Sequence[int] = ()
) -> asyncio.subprocess.Process:
    """Start ``args`` with output appended to ``log``, in its own session, killed if vmtest dies.

    It runs in its own session so that a Ctrl-C in the terminal reaches vmtest only, which then shuts
    the VM down in order. Spawn from the event loop's thread, and keep that thread alive for the VM's
    lifetime: the death signal is tied to the forking thread.
    """
    with open(log, "ab") as log_file:
        try:
            return await asyncio.create_subprocess_exec(
                *args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )
        except OSError as error:
            raise QemuStartError(f"cannot start {args[0]}: {error}", phase="boot") from None
