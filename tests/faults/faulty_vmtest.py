"""``vmtest`` with faults injected into its own process: run as ``python faulty_vmtest.py ARGS...``.

The faults come from the environment variable ``VMTEST_FAULTS``, a JSON object:

* ``"boot_delay": SECONDS``: sleep that long in the boot phase, after the forwards are added and before
  the guest's CPU runs, so that a test can hit the boot phase itself (it lasts 0.1 s otherwise).
* ``"taken_ports": [PORT, ...]``: ``free_loopback_port`` hands out these ports first (ports the test
  occupies), then free ones as usual.

Everything else is the real ``vmtest`` command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from vmtest.machine import machine as machine_module
from vmtest.machine.ports import free_loopback_port


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


def main() -> int:
    """Install the faults named in ``VMTEST_FAULTS``, then run vmtest's own ``main``."""
    faults: dict[str, Any] = json.loads(os.environ.get("VMTEST_FAULTS", "{}"))
    if "boot_delay" in faults:
        _install_boot_delay(float(faults["boot_delay"]))
    if "taken_ports" in faults:
        _install_taken_ports([int(port) for port in faults["taken_ports"]])
    from vmtest.cli import main as vmtest_main

    return vmtest_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
