"""``vmtest`` with faults injected into its own process: run as ``python faulty_vmtest.py ARGS...``.

The faults come from the environment variable ``VMTEST_FAULTS``, a JSON object:

* ``"boot_delay": SECONDS``: sleep that long in the boot phase, after the forwards are added and before
  the guest's CPU runs, so that a test can hit the boot phase itself (it lasts 0.1 s otherwise).
* ``"taken_ports": [PORT, ...]``: ``free_loopback_port`` hands out these ports first (ports the test
  occupies), then free ones as usual.
* ``"fill_disk": {"path": DIR, "at": PHASE, "when": "start" | "end"}``: when the progress phase
  ``PHASE`` begins (or ends: after ``shutdown`` ends come the reports), fill the file system of ``DIR``
  to the last byte with files there, so that the run meets a full disk from that moment on.

Everything else is the real ``vmtest`` command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from vmtest.machine import machine as machine_module
from vmtest.machine.ports import free_loopback_port
from vmtest.progress import PlainProgress


def _install_boot_delay(seconds: float) -> None:
    original: Callable[[Any], Awaitable[None]] = machine_module.Machine._add_forwards

    async def add_forwards_then_wait(self: Any) -> None:
        await original(self)
        print(f"faulty_vmtest: boot delayed by {seconds}s", file=sys.stderr, flush=True)
        await asyncio.sleep(seconds)

    machine_module.Machine._add_forwards = add_forwards_then_wait  # type: ignore[method-assign]


def _install_taken_ports(ports: list[int]) -> None:
    queue = list(ports)

    def first_the_taken_ones() -> int:
        if queue:
            return queue.pop(0)
        return free_loopback_port()

    machine_module.free_loopback_port = first_the_taken_ones  # type: ignore[attr-defined]


def _fill(directory: str) -> None:
    """Write zeros into ``directory``/faulty-vmtest-filler until the file system refuses more."""
    block = bytes(1 << 16)
    path = os.path.join(directory, "faulty-vmtest-filler")
    with open(path, "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while filler.write(block):
            pass


def _install_fill_disk(directory: str, at: str, when: str) -> None:
    original_phase = PlainProgress.phase

    def fill() -> None:
        _fill(directory)
        print(f"faulty_vmtest: disk full at the {when} of {at}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def phase_and_fill(self: PlainProgress, name: str, description: str) -> Iterator[None]:
        with original_phase(self, name, description):
            if (name, when) == (at, "start"):
                fill()
            yield
        if (name, when) == (at, "end"):
            fill()

    PlainProgress.phase = phase_and_fill  # type: ignore[method-assign]


def main() -> int:
    """Install the faults named in ``VMTEST_FAULTS``, then run vmtest's own ``main``."""
    faults: dict[str, Any] = json.loads(os.environ.get("VMTEST_FAULTS", "{}"))
    if "boot_delay" in faults:
        _install_boot_delay(float(faults["boot_delay"]))
    if "taken_ports" in faults:
        _install_taken_ports([int(port) for port in faults["taken_ports"]])
    if "fill_disk" in faults:
        fill = faults["fill_disk"]
        _install_fill_disk(str(fill["path"]), str(fill["at"]), str(fill.get("when", "start")))
    from vmtest.cli import main as vmtest_main

    return vmtest_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
