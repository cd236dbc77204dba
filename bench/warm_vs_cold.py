"""Cold boot cycle vs warm snapshot cycle, per scenario, on the Linux self-test guest.

* cold: a new VM booted from scratch → ready → log in → copy the module → one scenario → shut down;
* warm start: a new VM started from the per-image snapshot (``machine.warm``) → the same → shut down;
* restore + deploy: in a VM that stays up, ``VmSession.restore()`` to the snapshot of the ready guest
  → log in again → copy the module → one scenario;
* restore: the same, but to a snapshot taken after the module was copied in, as
  ``ScenarioRunner.reset()`` (the pytest plugin's ``vmtest_clean_guest``) does → one scenario.

"One scenario" is the pipeline's own step (``run_scenarios``: insmod, wait for the scenario's end,
a screenshot, rmmod, read the console up to the rmmod). The module is built once beforehand, so no cycle pays
for Kbuild. Each cycle is repeated and the median is reported; the target is restore at least 5x faster
than cold. Results go to ``bench/RESULTS.md``.

This file also holds the helpers the other benchmarks share (the configuration, the module, the
results file). Run from the project root::

    .venv/bin/python bench/warm_vs_cold.py [--repeat 3] [--scenario kmutex_contention ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from vmtest.config.models import LinuxGuestConfig, MachineConfig, VmtestConfig
from vmtest.drivers.kbuild import build_module
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.guests import Guest
from vmtest.images.linux import LinuxImage, build_linux_image, default_cache_root
from vmtest.machine.accel import resolve_accelerator
from vmtest.machine.process import find_qemu
from vmtest.pipeline import LINUX_TEST_MODULE, EventCollector, deploy, parameters_for, run_scenarios
from vmtest.progress import Progress
from vmtest.session import VmSession

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")
SCENARIOS = ("kmutex_contention", "grt_errors", "irql_errors")
TARGET_RATIO = 5.0


# ------------------------------------------------------------------------------------- shared helpers


def selftest_image() -> LinuxImage:
    """The Linux self-test guest (built if needed)."""
    return build_linux_image(log=lambda _: None)


async def accelerator(image: LinuxImage) -> str:
    """What ``accel: auto`` resolves to here (from the cached KVM probe)."""
    return await resolve_accelerator(
        "auto",
        qemu=find_qemu("qemu-system-x86_64"),
        kvm_cpu_model="host",
        timeout=8,
        probe_kernel=image.kernel,
        cache_dir=default_cache_root(),
    )


def selftest_config(image: LinuxImage, artifacts: Path, *, warm: bool, accel: str) -> VmtestConfig:
    """The self-test guest's default configuration, with its runs under ``artifacts``."""
    return VmtestConfig(
        artifacts=artifacts,
        guest=LinuxGuestConfig(image=image.root),
        machine=MachineConfig.model_validate({"accel": accel, "warm": warm}),
    )


def config_file(image: LinuxImage, folder: Path, accel: str) -> Path:
    """A ``vmtest.yaml`` for the self-test guest, for benchmarks that run the command."""
    path = folder / "vmtest.yaml"
    path.write_text(
        f"guest:\n  kind: linux\n  image: {image.root}\nmachine:\n  accel: {accel}\n", encoding="utf-8"
    )
    return path


def test_module(image: LinuxImage, work: Path) -> Path:
    """The Linux mutex test module, built once against the guest's headers."""
    return build_module(LINUX_TEST_MODULE, image.headers, work / "module")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable as plain text)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_note() -> str:
    """CPU count and load: the numbers depend on both (the cores are shared)."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load} at the end, {time.strftime('%Y-%m-%d %H:%M')}"


class Quiet(Progress):
    """No progress lines: the benchmark prints its own table."""

    @contextlib.contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        """Nothing to show."""
        yield

    def note(self, message: str) -> None:
        """Nothing to show."""


def write_results(title: str, body: str) -> None:
    """Replace the ``## title`` section of ``bench/RESULTS.md`` with ``body`` (other sections stay)."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------- the cycles


async def one_scenario(
    session: VmSession, guest: Guest, module: Path, scenario: str, driver: DeployedDriver | None = None
) -> None:
    """Copy the module in (unless ``driver`` is) and run one scenario as the pipeline does; fail on a hang."""
    driver = driver or await deploy(session, guest, module)
    collector = EventCollector((scenario,), session.run_dir.path / "events.jsonl")
    session.capture.on_line(collector.take)
    try:
        parameters = parameters_for(session.config, (scenario,))
        if await run_scenarios(session, guest, driver, parameters, collector):
            raise RuntimeError(f"{scenario} hung")
    finally:
        session.capture.remove_line_listener(collector.take)
        collector.close()


async def fresh_vm_cycle(config: VmtestConfig, module: Path, scenario: str) -> float:
    """A new VM (cold or warm, as configured) → one scenario → shutdown; seconds."""
    started = time.monotonic()
    async with VmSession(config, Quiet()) as session:
        guest = await session.connect()
        await one_scenario(session, guest, module, scenario)
    return time.monotonic() - started


async def restore_cycle(
    session: VmSession, guest: Guest, module: Path, scenario: str, driver: DeployedDriver | None
) -> float:
    """``restore()`` in a VM that stays up → one scenario (copying the module in unless given); seconds."""
    started = time.monotonic()
    await session.restore()
    await one_scenario(session, guest, module, scenario, driver)
    return time.monotonic() - started


async def timed(repeat: int, cycle: Callable[[], Awaitable[float]]) -> float:
    """The median of ``repeat`` cycles."""
    return statistics.median([await cycle() for _ in range(repeat)])


async def measure(image: LinuxImage, work: Path, scenarios: Sequence[str], repeat: int) -> list[list[str]]:
    """Median seconds per scenario for each kind of cycle, and the ratios."""
    accel = await accelerator(image)
    module = test_module(image, work)
    cold = selftest_config(image, work / "runs", warm=False, accel=accel)
    warm = selftest_config(image, work / "runs", warm=True, accel=accel)
    await fresh_vm_cycle(warm, module, scenarios[0])  # makes the warm snapshot if there is none yet
    fresh = {
        scenario: (
            await timed(repeat, functools.partial(fresh_vm_cycle, cold, module, scenario)),
            await timed(repeat, functools.partial(fresh_vm_cycle, warm, module, scenario)),
        )
        for scenario in scenarios
    }
    async with VmSession(warm, Quiet()) as session:  # one VM for every restore cycle
        guest = await session.connect()
        with_deploy = {
            scenario: await timed(
                repeat, functools.partial(restore_cycle, session, guest, module, scenario, None)
            )
            for scenario in scenarios
        }
        driver = await deploy(session, guest, module)
        await session.checkpoint()
        restored = {
            scenario: await timed(
                repeat, functools.partial(restore_cycle, session, guest, module, scenario, driver)
            )
            for scenario in scenarios
        }
    rows = []
    for scenario in scenarios:
        cold_s, warm_s = fresh[scenario]
        cells = [cold_s, warm_s, with_deploy[scenario], restored[scenario]]
        rows.append(
            [
                scenario,
                *(f"{value:.2f}" for value in cells),
                *(f"{cold_s / value:.1f}x" for value in cells[1:]),
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write ``bench/RESULTS.md``; exit 1 if restore misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="cycles per measurement (median)")
    parser.add_argument("--scenario", action="append", default=[], help="default: " + ", ".join(SCENARIOS))
    args = parser.parse_args(argv)
    scenarios = tuple(args.scenario) or SCENARIOS
    image = selftest_image()
    with tempfile.TemporaryDirectory(prefix="vmtest-bench-") as folder:
        rows = asyncio.run(measure(image, Path(folder), scenarios, args.repeat))
    headers = ["scenario", "cold (s)", "warm start (s)", "restore + deploy (s)", "restore (s)"]
    headers += ["cold / warm start", "cold / restore + deploy", "cold / restore"]
    text = table(headers, rows)
    worst = min(float(row[-1].rstrip("x")) for row in rows)
    verdict = "met" if worst >= TARGET_RATIO else "missed"
    print(text)
    print(f"restore vs cold: at worst {worst:.1f}x (target {TARGET_RATIO:.0f}x: {verdict})")
    write_results(
        "Warm vs cold (bench/warm_vs_cold.py)",
        f"Median of {args.repeat} cycles per scenario; {machine_note()}.\n\n{text}\n\n"
        f"Restore vs cold, worst scenario: {worst:.1f}x (target ≥ {TARGET_RATIO:.0f}x: {verdict}).",
    )
    return 0 if worst >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
