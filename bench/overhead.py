"""vmtest's overhead: ``vmtest run`` for one scenario against the same steps done by hand, in one run.

The hand-made run is a short shell script: QEMU with vmtest's own flags (taken from the run's
``qemu-command.txt``, minus QMP; the serial port to a file; the SSH forward on the command line), wait
for the guest's ready line in the serial log, then over one multiplexed OpenSSH connection: copy the
module in, ``insmod`` it with the scenario, wait for the run's end line in the serial log, read
``dmesg``, ``rmmod``, ``poweroff``, and wait for QEMU to exit. Both use the same prebuilt module and
boot cold; they alternate, and the medians are compared. Target: vmtest ≤ 1.15x the script.

Run from the project root::

    .venv/bin/python bench/overhead.py [--repeat 3] [--scenario kmutex_contention]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import socket
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

from vmtest.images.linux import LinuxImage

TARGET = 1.15
HAND_SCRIPT = r"""
set -euo pipefail
work=$1 port=$2 ko=$3 scenario=$4 key=$5 base=$6; shift 6
step() { echo "STEP $1 $(date +%s.%N)" >&2; }
step start
qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$work/disk.qcow2"
"$@" &
qemu=$!
ssh_opts=(-i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          -o ControlMaster=auto -o "ControlPath=$work/ssh.sock" -o ControlPersist=60)
guest() { ssh "${ssh_opts[@]}" -p "$port" root@127.0.0.1 "$@"; }
deadline=$((SECONDS + 120))
until grep -qa VMTEST-GUEST-READY "$work/serial.log" 2>/dev/null; do
  ((SECONDS < deadline)) || { echo "no ready line in 120 s" >&2; exit 1; }; sleep 0.05
done
step ready
scp -q "${ssh_opts[@]}" -P "$port" "$ko" root@127.0.0.1:/tmp/module.ko
step copied
guest insmod /tmp/module.ko "scenarios=$scenario" threads=3 iterations=200
until grep -qa "ev=run-end" "$work/serial.log"; do
  ((SECONDS < deadline + 120)) || { echo "no run-end line" >&2; exit 1; }; sleep 0.05
done
step ended
guest dmesg > "$work/dmesg.txt"
guest rmmod vmtest_mutex_tests
step unloaded
guest poweroff -f || true  # -f: the image's init is a shell script, deaf to poweroff's signal
ssh "${ssh_opts[@]}" -O exit -p "$port" root@127.0.0.1 2>/dev/null || true
wait "$qemu"
step exited
"""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hand_command(vmtest_command: list[str], work: Path, port: int) -> list[str]:
    """A vmtest run's QEMU command line, standalone: no QMP, serial to a file, the SSH forward inline."""
    args: list[str] = []
    words = iter(vmtest_command)
    for word in words:
        if word in ("-S",):
            continue
        if word in ("-chardev", "-mon", "-serial"):
            value = next(words)
            if word == "-chardev" and value.split(",")[1] == "id=serial0":
                args += ["-serial", f"file:{work / 'serial.log'}"]
            continue
        if word == "-netdev":
            args += [word, next(words) + f",hostfwd=tcp:127.0.0.1:{port}-:22"]
            continue
        if word == "-drive":
            args += [word, re.sub(r"file=[^,]+", f"file={work / 'disk.qcow2'}", next(words))]
            continue
        args.append(word)
    return args


def vmtest_run(config: Path, module: Path, scenario: str, work: Path) -> tuple[float, Path, dict[str, float]]:
    """One ``vmtest run``: its wall time, its run directory and its phases' durations."""
    command = [sys.executable, "-m", "vmtest.cli", "run", str(config), "--cold", "--driver", str(module)]
    command += ["--scenario", scenario, "--artifacts", str(work), "--json"]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"vmtest run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    phases = {
        name: float(seconds) for name, seconds in re.findall(r"\] (\w+): done in ([\d.]+)s", result.stderr)
    }
    run_dir = Path(re.findall(r'"run_dir": "([^"]+)"', result.stdout)[0])
    return wall, run_dir, phases


def hand_run(
    image: LinuxImage, module: Path, scenario: str, qemu: list[str], work: Path
) -> tuple[float, dict[str, float]]:
    """One hand-made run: its wall time and the time between its steps."""
    work.mkdir()
    port = free_port()
    argv = ["bash", "-c", HAND_SCRIPT, "hand", str(work), str(port), str(module), scenario]
    argv += [str(image.client_key), str(image.disk), *hand_command(qemu, work, port)]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    wall = time.monotonic() - started
    if result.returncode != 0 or "vmtest_mutex_tests" not in (work / "dmesg.txt").read_text(errors="replace"):
        raise RuntimeError(f"the hand-made run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    stamps = [(name, float(when)) for name, when in re.findall(r"STEP (\w+) ([\d.]+)", result.stderr)]
    steps = {name: when - previous for (_, previous), (name, when) in itertools.pairwise(stamps)}
    return wall, steps


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the tables, write ``bench/RESULTS.md``; exit 1 if the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenario", default="kmutex_contention")
    args = parser.parse_args(argv)
    image = selftest_image()
    with tempfile.TemporaryDirectory(prefix="vmtest-bench-") as folder:
        work = Path(folder)
        accel = asyncio.run(accelerator(image))
        module = test_module(image, work)
        config = config_file(image, work, accel)
        vmtest_walls, hand_walls = [], []
        vmtest_phases: list[dict[str, float]] = []
        hand_steps: list[dict[str, float]] = []
        for round_number in range(args.repeat):
            wall, run_dir, phases = vmtest_run(config, module, args.scenario, work / "runs")
            qemu = (run_dir / "qemu-command.txt").read_text().split("\n")[:-1]
            hand_wall, steps = hand_run(image, module, args.scenario, qemu, work / f"hand-{round_number}")
            vmtest_walls.append(wall)
            hand_walls.append(hand_wall)
            vmtest_phases.append(phases)
            hand_steps.append(steps)
            print(f"round {round_number + 1}: vmtest {wall:.2f}s, by hand {hand_wall:.2f}s", flush=True)
    vmtest_s, hand_s = statistics.median(vmtest_walls), statistics.median(hand_walls)
    ratio = vmtest_s / hand_s
    verdict = "met" if ratio <= TARGET else "missed"
    summary = table(
        ["", "wall (s, median)"],
        [["vmtest run", f"{vmtest_s:.2f}"], ["by hand", f"{hand_s:.2f}"], ["ratio", f"{ratio:.2f}x"]],
    )
    outside = statistics.median(
        wall - sum(p.values()) for wall, p in zip(vmtest_walls, vmtest_phases, strict=True)
    )
    phases = table(
        ["vmtest phase", "s (median)"],
        [
            *(
                [name, f"{statistics.median(p.get(name, 0.0) for p in vmtest_phases):.2f}"]
                for name in vmtest_phases[0]
            ),
            [
                "(outside any phase: start-up, verdict, reports)",
                f"{outside:.2f}",
            ],
        ],
    )
    steps = table(
        ["hand step (time since the previous)", "s (median)"],
        [[name, f"{statistics.median(s.get(name, 0.0) for s in hand_steps):.2f}"] for name in hand_steps[0]],
    )
    print(summary, phases, steps, sep="\n\n")
    print(f"vmtest / by hand: {ratio:.2f}x (target ≤ {TARGET}x: {verdict})")
    write_results(
        "Overhead (bench/overhead.py)",
        f"`vmtest run --cold` for `{args.scenario}` vs the same steps by hand, median of {args.repeat} "
        f"alternating rounds; {machine_note()}.\n\n{summary}\n\n{phases}\n\n{steps}\n\n"
        f"vmtest / by hand: {ratio:.2f}x (target ≤ {TARGET}x: {verdict}).",
    )
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
