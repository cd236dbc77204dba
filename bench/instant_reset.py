"""Instant reset: restoring by mapping the RAM file vs loading a snapshot's RAM, in one run.

Cases, each with the old path (``snapshot-load`` of a copy of the qcow2 that holds the RAM state,
:mod:`vmtest.machine.snapshots`) beside the new one (a private mapping of the entry's RAM file plus
``migrate-incoming`` of the device state, :mod:`vmtest.machine.mapped`):

* restore time, QEMU start until the guest's CPU runs (``Machine.start``, overlays included), for the
  1 GiB self-test guest as it is at ready and for a 4 GiB one holding 3 GiB of non-zero data
  (target ≤ 0.15 s with the new path);
* the whole ``vmtest run --warm`` process for one scenario, and ``--cold`` (target ≤ 1.2 s, cold/warm
  ≥ 12x); the old path is the same command with mapping switched off in the process;
* the memory of 4 VMs restored at once from one snapshot, as the sum of their QEMUs' PSS against one
  VM's (target ≤ 1.5x);
* the physical floor: QEMU started with no guest work (``-S`` → ``cont``, no state to load), and a
  copy of the RAM file's data at memory speed (hot page cache to /dev/shm); restore times are also
  printed as ratios to these.

The machine these numbers come from is shared, so they are noisy; the median of ``--repeat`` is
reported. Results go to ``bench/RESULTS.md``. Run from the project root::

    .venv/bin/python bench/instant_reset.py [--repeat 5] [--skip-large]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from warm_vs_cold import (
    accelerator,
    config_file,
    machine_note,
    selftest_image,
    table,
    test_module,
    write_results,
)

from vmtest.config.models import LinuxGuestConfig, MachineConfig, Timeouts, VmtestConfig
from vmtest.guest.banner import wait_for_ssh_banner
from vmtest.guests import guest_for
from vmtest.images.linux import LinuxImage
from vmtest.machine.machine import Machine
from vmtest.machine.mapped import (
    RAM_FILE,
    RAM_ID,
    STATE_FILE,
    MappedMachine,
    SavingMachine,
    load_device_state,
    save_device_state,
)
from vmtest.machine.ports import LOOPBACK
from vmtest.machine.profiles import profile_for
from vmtest.machine.rundir import RunDirectory
from vmtest.machine.snapshots import WARM_TAG, WarmMachine, load_snapshot, save_snapshot

RESTORE_TARGET = 0.15
RUN_TARGET = 1.2
COLD_RATIO_TARGET = 12.0
MEMORY_TARGET = 1.5
NO_MAPPING = (
    "import sys, vmtest.machine.mapped as m; "
    "m.mapping_support = lambda *args: 'switched off by the benchmark'; "
    "from vmtest.cli import main; sys.exit(main(sys.argv[1:]))"
)


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


class OldPathMachine(WarmMachine):
    """The old restore: a copy of the qcow2 holding the RAM state, then ``snapshot-load``.

    Its memory is anonymous (``memory-backend-ram``), as in a VM without a RAM file, under the name
    the saving VM's RAM block had, so that the snapshot loads into it.
    """

    def command_line(
        self, qemu: str, overlays: tuple[Path, ...], qmp_fd: int, serial_fds: object
    ) -> list[str]:
        """The template's command line with anonymous memory named as the saved one."""
        args = super().command_line(qemu, overlays, qmp_fd, serial_fds)  # type: ignore[arg-type]
        backend = f"memory-backend-ram,id={RAM_ID},size={self.config.memory_mib}M"
        return [*args, "-object", backend, "-machine", f"memory-backend={RAM_ID}"]


def config_for(image: LinuxImage, work: Path, accel: str, memory_mib: int) -> VmtestConfig:
    """The self-test guest with ``memory_mib`` of memory."""
    machine = MachineConfig(accel=accel, memory_mib=memory_mib)
    # The old path's snapshot-load of gigabytes can keep QMP from answering for longer than the default.
    timeouts = Timeouts(qmp_command=300)
    return VmtestConfig(
        artifacts=work / "runs", guest=LinuxGuestConfig(image=image.root), machine=machine, timeouts=timeouts
    )


async def saved_guest(config: VmtestConfig, fill_mib: int) -> Path:
    """Boot with the RAM in a file, fill ``fill_mib`` of it, save both ways; the folder holding it all.

    The folder then holds ``ram`` + ``state`` (the new path's entry, disk0.qcow2 its frozen disk) and,
    inside disk0.qcow2, the old path's snapshot with the whole RAM state.
    """
    profile = profile_for(config)
    run_dir = RunDirectory.create(config.artifacts, f"save-{config.machine.memory_mib}")
    machine = SavingMachine(profile, config.machine, config.timeouts, run_dir, accel=config.machine.accel)
    machine.throwaway = True
    await machine.start()
    try:
        marker = profile.ready_marker
        assert marker is not None
        await machine.wait_for_console(marker, 600, "waiting for the guest")
        if fill_mib:
            guest = guest_for(config, profile, machine.forwards, run_dir.path.name)
            await asyncio.to_thread(guest.transport.wait_ready, 120)
            script = (
                f"mkdir -p /fill && mount -t tmpfs -o size={fill_mib + 64}m none /fill && "
                f"tr '\\000' '\\252' < /dev/zero | head -c {fill_mib << 20} > /fill/data && sync"
            )
            result = await asyncio.to_thread(guest.transport.run, ["sh", "-c", script], timeout=1800)
            result.check("filling the guest's memory")
            await asyncio.to_thread(guest.close)
        await save_snapshot(machine, WARM_TAG, timeout=1800)
        await save_device_state(machine, run_dir.path / STATE_FILE, timeout=300)
    finally:
        await machine.shutdown()
    return run_dir.path


async def restore_once(config: VmtestConfig, folder: Path, new: bool) -> tuple[float, Machine]:
    """Restore the guest saved in ``folder`` by one path; seconds until its CPU runs, and the machine."""
    profile = profile_for(config)
    run_dir = RunDirectory.create(config.artifacts, "restore")
    accel = config.machine.accel
    template = Machine(profile, config.machine, config.timeouts, run_dir, accel=accel)
    machine: Machine
    if new:
        mapped = MappedMachine(profile, config.machine, config.timeouts, run_dir, accel=accel)
        mapped.entry = folder
        machine = mapped

        async def prelaunch(m: Machine) -> None:
            await load_device_state(m, folder / STATE_FILE, timeout=300)

    else:
        machine = OldPathMachine(template, folder)

        async def prelaunch(m: Machine) -> None:
            await load_snapshot(m, WARM_TAG, timeout=1800)

    machine.throwaway = True
    started = time.monotonic()
    await machine.start(prelaunch=prelaunch)
    return time.monotonic() - started, machine


async def end(machine: Machine) -> None:
    """Quit the VM and remove its run directory (copies of RAM states are large)."""
    await machine.shutdown()
    shutil.rmtree(machine.run_dir.path, ignore_errors=True)


async def restore_times(config: VmtestConfig, folder: Path, repeat: int) -> dict[str, float]:
    """Median restore seconds by each path, and the floors."""
    times: dict[str, list[float]] = {"old": [], "new": [], "qemu": []}
    for _ in range(repeat):
        for new in (False, True):
            seconds, machine = await restore_once(config, folder, new)
            times["new" if new else "old"].append(seconds)
            await end(machine)
        bare = Machine(
            profile_for(config),
            config.machine,
            config.timeouts,
            RunDirectory.create(config.artifacts, "bare"),
            accel=config.machine.accel,
        )
        bare.throwaway = True
        started = time.monotonic()
        await bare.start()
        times["qemu"].append(time.monotonic() - started)
        await end(bare)
    result = {name: median(values) for name, values in times.items()}
    result["copy"] = ram_copy_seconds(folder / RAM_FILE, repeat)
    return result


def ram_copy_seconds(ram: Path, repeat: int) -> float:
    """Median seconds to copy the RAM file's data to /dev/shm with its pages already cached."""
    subprocess.run(["cat", str(ram)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    times = []
    for _ in range(repeat):
        target = Path("/dev/shm") / f"vmtest-bench-{os.getpid()}"
        started = time.monotonic()
        subprocess.run(["cp", "--sparse=always", str(ram), str(target)], check=True)
        times.append(time.monotonic() - started)
        target.unlink()
    return median(times)


def pss_mib(machines: Sequence[Machine]) -> dict[str, float]:
    """Sums of the QEMUs' proportional set sizes in MiB: all (``Pss``), anonymous and file-backed."""
    total = {"Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
    for machine in machines:
        assert machine.process is not None
        for line in Path(f"/proc/{machine.process.pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in total:
                total[name] += int(value.split()[0])
    return {name: kib / 1024 for name, kib in total.items()}


async def memory_of(
    config: VmtestConfig, folder: Path, new: bool, count: int, read_mib: int = 0
) -> dict[str, float]:
    """Sum of PSS (MiB) of ``count`` VMs restored at once from ``folder``, each answering on SSH.

    With ``read_mib`` each guest first reads that much of the data filled in before the snapshot, so
    that the snapshot's memory is really mapped in every VM (a restored guest touches only what it uses).
    """
    machines = []
    try:
        for _ in range(count):
            _, machine = await restore_once(config, folder, new)
            machines.append(machine)
        for machine in machines:
            port = machine.forwards["ssh"]
            await machine.wait(wait_for_ssh_banner(LOOPBACK, port), 120, "waiting for SSH")
        if read_mib:
            await asyncio.gather(*(read_in_guest(config, machine, read_mib) for machine in machines))
        await asyncio.sleep(2)  # let each guest settle as a test would find it
        return pss_mib(machines)
    finally:
        for machine in machines:
            await end(machine)


async def read_in_guest(config: VmtestConfig, machine: Machine, mib: int) -> None:
    """Read ``mib`` of the guest's filled data inside the guest."""
    guest = guest_for(config, machine.profile, machine.forwards, machine.run_dir.path.name)
    try:
        await asyncio.to_thread(guest.transport.wait_ready, 120)
        script = f"head -c {mib << 20} /fill/data | wc -c"
        result = await asyncio.to_thread(guest.transport.run, ["sh", "-c", script], timeout=1200)
        result.check("reading the guest's data")
    finally:
        await asyncio.to_thread(guest.close)


def memory_row(name: str, one: dict[str, float], four: dict[str, float]) -> list[str]:
    """A row of the memory table: PSS of 1 VM, of 4, their ratio, and the file/anonymous split."""
    return [
        name,
        f"{one['Pss']:.0f}",
        f"{four['Pss']:.0f}",
        f"{four['Pss'] / one['Pss']:.2f}x",
        f"{one['Pss_File']:.0f} / {four['Pss_File']:.0f}",
        f"{one['Pss_Anon']:.0f} / {four['Pss_Anon']:.0f}",
    ]


def run_command(name: str, command: list[str], env: dict[str, str]) -> None:
    """Run one ``vmtest run``; on failure raise with the end of what it printed."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{name} exited {result.returncode}:\n{result.stderr[-3000:]}")


def whole_runs(image: LinuxImage, work: Path, accel: str, repeat: int) -> dict[str, float]:
    """Median wall seconds of ``vmtest run`` for one scenario: cold, warm old path, warm new path."""
    module = test_module(image, work)
    config = config_file(image, work, accel)
    env = {**os.environ, "VMTEST_CACHE": str(work / "cache")}
    common = ["run", str(config), "--driver", str(module), "--scenario", "kmutex_contention"]
    common += ["--artifacts", str(work / "runs")]
    commands = {
        "cold": [sys.executable, "-m", "vmtest.cli", *common, "--cold"],
        "warm (old path)": [sys.executable, "-c", NO_MAPPING, *common, "--warm"],
        "warm (new path)": [sys.executable, "-m", "vmtest.cli", *common, "--warm"],
    }
    for name in ("warm (old path)", "warm (new path)"):  # the first run of each makes its entry
        run_command(name, commands[name], env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            started = time.monotonic()
            run_command(name, command, env)
            times[name].append(time.monotonic() - started)
    return {name: median(values) for name, values in times.items()}


async def measure(image: LinuxImage, work: Path, repeat: int, large: bool) -> str:
    """Every case; the Markdown for RESULTS.md."""
    accel = await accelerator(image)
    sizes = [(1024, 0), (4096, 3072)] if large else [(1024, 0)]
    restore_rows = []
    memory_rows = []
    verdicts = []
    for memory, fill in sizes:
        config = config_for(image, work, accel, memory)
        folder = await saved_guest(config, fill)
        found = await restore_times(config, folder, repeat)
        label = f"{memory // 1024} GiB" + (
            f", {fill // 1024} GiB non-zero" if fill else " (self-test guest at ready)"
        )
        restore_rows.append(
            [
                label,
                f"{found['old']:.3f}",
                f"{found['new']:.3f}",
                f"{found['old'] / found['new']:.1f}x",
                f"{found['qemu']:.3f}",
                f"{found['copy']:.3f}",
                f"{found['new'] / found['qemu']:.2f}",
                f"{found['new'] / found['copy']:.2f}",
            ]
        )
        verdicts.append(
            f"restore, {label}: {found['new']:.3f} s (target ≤ {RESTORE_TARGET} s: "
            f"{'met' if found['new'] <= RESTORE_TARGET else 'missed'})"
        )
        print(restore_rows[-1], flush=True)
        one_new = await memory_of(config, folder, True, 1)
        four_new = await memory_of(config, folder, True, 4)
        if fill:
            read = min(fill, 1024)
            one_read = await memory_of(config, folder, True, 1, read)
            four_read = await memory_of(config, folder, True, 4, read)
            name = f"{label}, new path, each guest read {read} MiB of its data"
            memory_rows.append(memory_row(name, one_read, four_read))
            ratio = four_read["Pss"] / one_read["Pss"]
            verdicts.append(
                f"4 VMs / 1 VM (PSS), {label}, after reading {read} MiB: {ratio:.2f}x (target ≤ "
                f"{MEMORY_TARGET}x: {'met' if ratio <= MEMORY_TARGET else 'missed'})"
            )
        if not fill:  # 4 old-path VMs of the large guest would take 12 GiB of this shared host
            one_old = await memory_of(config, folder, False, 1)
            four_old = await memory_of(config, folder, False, 4)
            memory_rows.append(memory_row(f"{label}, old path", one_old, four_old))
        memory_rows.append(memory_row(f"{label}, new path", one_new, four_new))
        ratio = four_new["Pss"] / one_new["Pss"]
        verdicts.append(
            f"4 VMs / 1 VM (PSS), {label}, new path: {ratio:.2f}x (target ≤ {MEMORY_TARGET}x: "
            f"{'met' if ratio <= MEMORY_TARGET else 'missed'})"
        )
        print(memory_rows, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    runs = whole_runs(image, work, accel, repeat)
    cold = runs["cold"]
    run_rows = [[name, f"{seconds:.2f}", f"{cold / seconds:.1f}x"] for name, seconds in runs.items()]
    warm = runs["warm (new path)"]
    verdicts.append(
        f"`vmtest run --warm`: {warm:.2f} s (target ≤ {RUN_TARGET} s: "
        f"{'met' if warm <= RUN_TARGET else 'missed'}); cold/warm {cold / warm:.1f}x (target ≥ "
        f"{COLD_RATIO_TARGET:.0f}x: {'met' if cold / warm >= COLD_RATIO_TARGET else 'missed'})"
    )
    print(run_rows, flush=True)
    restore_headers = [
        "guest", "old path (s)", "new path (s)", "old / new", "floor: QEMU start, no guest work (s)",
        "floor: RAM file copy, hot cache (s)", "new / QEMU start", "new / RAM copy",
    ]  # fmt: skip
    return "\n\n".join(
        [
            f"Median of {repeat}; accelerator {accel}; {machine_note()}. The machine is shared with other "
            "work running at the same time, so the timings are noisy.",
            "Restore: QEMU start until the guest's CPU runs (overlays and the old path's copy included).",
            table(restore_headers, restore_rows),
            "Memory: sum of the QEMU processes' PSS with every guest answering on SSH (MiB).",
            table(
                [
                    "guest, path",
                    "1 VM",
                    "4 VMs at once",
                    "4 / 1",
                    "file-backed: 1 / 4 VMs",
                    "anonymous: 1 / 4",
                ],
                memory_rows,
            ),
            "Whole process: `vmtest run` of `kmutex_contention`, wall seconds.",
            table(["run", "wall (s)", "cold / this"], run_rows),
            "\n".join(f"- {line}" for line in verdicts),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print, write ``bench/RESULTS.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 4 GiB guest")
    args = parser.parse_args(argv)
    image = selftest_image()
    with tempfile.TemporaryDirectory(prefix="vmtest-bench-") as folder:
        text = asyncio.run(measure(image, Path(folder), args.repeat, not args.skip_large))
    print(text)
    write_results("Instant reset (bench/instant_reset.py)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
