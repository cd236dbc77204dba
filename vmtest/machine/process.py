"""Starting QEMU (and swtpm) confined, so that it can never outlive vmtest.

The child takes on the confinement's user in the fork (``user``/``group``/``extra_groups`` of
subprocess, applied before ``preexec_fn``), then sets its parent-death signal (a change of user clears
it, so the order matters) and its resource bounds, then execs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from vmtest.errors import QemuStartError
from vmtest.machine.confine import Confinement

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


def _die_with(parent_pid: int, confinement: Confinement | None) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def in_child() -> None:
        # The kernel sends SIGKILL to this process when the thread that forked it dies, so QEMU cannot
        # outlive vmtest even when vmtest is killed with SIGKILL. If the parent is already gone, stop now.
        # Set after the change of user, which clears it.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)
        if confinement is not None:
            confinement.prepare_child()

    return in_child


def _user_arguments(confinement: Confinement | None) -> dict[str, Any]:
    run_as = confinement.run_as if confinement is not None else None
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups)}


async def spawn_bound_to_parent(
    args: Sequence[str],
    *,
    log: Path | None = None,
    pass_fds: Sequence[int] = (),
    confinement: Confinement | None = None,
    cwd: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start ``args`` confined, in its own session, killed if vmtest dies.

    Output is appended to ``log``, or readable from the process's ``stdout`` pipe when ``log`` is None.
    It runs in its own session so that a Ctrl-C in the terminal reaches vmtest only, which then shuts
    the VM down in order. Spawn from the event loop's thread, and keep that thread alive for the VM's
    lifetime: the death signal is tied to the forking thread. ``cwd`` is entered before the change of
    user, so the child may work in a folder whose parents it cannot reach.
    """
    with contextlib.ExitStack() as stack:
        output: IO[bytes] | int = subprocess.PIPE if log is None else stack.enter_context(open(log, "ab"))
        try:
            return await asyncio.create_subprocess_exec(
                *args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                preexec_fn=_die_with(os.getpid(), confinement),
                cwd=cwd if cwd is not None else "/",
                **_user_arguments(confinement),
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise QemuStartError(f"cannot start {args[0]}: {error}", phase="boot") from None
