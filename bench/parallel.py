"""Throughput of ``vmtest run`` on 1 VM against 2 VMs at once (``-j 2``), on this host's cores.

Each case runs the nine default scenarios of the Linux mutex test module (built once) with
``vmtest run -j N``, cold and warm, and reports scenario runs per minute (scenarios / wall time) as
the median of ``--repeat`` runs. With two VMs each gets half of the scenarios and its own run
directory under one parent. Results go to ``bench/RESULTS.md``.

Run from the project root::

    .venv/bin/python bench/parallel.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
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

from vmtest.events.scenarios import DEFAULT_SCENARIOS


def run_seconds(command: list[str]) -> float:
    """Wall time of ``command``, which must pass."""
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write ``bench/RESULTS.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (median)")
    args = parser.parse_args(argv)
    image = selftest_image()
    count = len(DEFAULT_SCENARIOS)
    work = Path(tempfile.mkdtemp(prefix="vmtest-bench-"))  # kept if a run fails: its artifacts are there
    module = test_module(image, work)
    config = config_file(image, work, asyncio.run(accelerator(image)))
    base = [sys.executable, "-m", "vmtest.cli", "run", str(config), "--driver", str(module)]
    base += ["--artifacts", str(work / "runs")]
    rows = []
    for start in ("--cold", "--warm"):
        rates = {}
        for jobs in (1, 2):
            wall = statistics.median(run_seconds([*base, start, "-j", str(jobs)]) for _ in range(args.repeat))
            rates[jobs] = count / wall * 60
            rows.append([start.lstrip("-"), str(jobs), f"{wall:.1f}", f"{rates[jobs]:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
        rows[-2].append("")
        rows[-1].append(f"{rates[2] / rates[1]:.2f}x")
    shutil.rmtree(work)
    text = table(["start", "VMs", "wall (s)", "scenario runs / min", "2 VMs vs 1"], rows)
    print(text)
    write_results(
        "Parallel VMs (bench/parallel.py)",
        f"`vmtest run -j N` over the {count} default scenarios, median of {args.repeat} runs; "
        f"{machine_note()}.\n\n{text}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
