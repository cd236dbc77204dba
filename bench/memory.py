"""Peak resident memory of the vmtest process during ``vmtest run`` (QEMU's own memory not counted).

Each case runs ``vmtest run`` as a child process and polls its ``/proc/<pid>/status`` until it exits;
``VmHWM`` there is the kernel's own high-water mark of the process's resident set, so polling cannot
miss the peak. Cases: one scenario cold and warm (twice: the first run makes the warm snapshot when
there is none yet), every default scenario, and every default scenario on two VMs (``-j 2``).
Target: < 150 MB. Results go to ``bench/RESULTS.md``.

Run from the project root::

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import argparse
import asyncio
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

TARGET_MB = 150.0
CASES: dict[str, list[str]] = {
    "1 scenario, cold": ["--cold", "--scenario", "kmutex_contention"],
    "1 scenario, warm, first (boots and saves the snapshot if the store has none)": [
        "--warm",
        "--scenario",
        "kmutex_contention",
    ],
    "1 scenario, warm": ["--warm", "--scenario", "kmutex_contention"],
    "9 scenarios, cold": ["--cold"],
    "9 scenarios, 2 VMs (-j 2), warm": ["--warm", "-j", "2"],
}


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its peak resident set (MB, from VmHWM) and its wall time (s)."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    status = Path(f"/proc/{process.pid}/status")
    peak_kb = 0
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass  # the process ended between poll() and the read
        time.sleep(0.05)
    _, errors = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{errors[-3000:]}")
    return peak_kb / 1024, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every case, print the table, write ``bench/RESULTS.md``; exit 1 if a case is over."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    image = selftest_image()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vmtest-bench-") as folder:
        work = Path(folder)
        module = test_module(image, work)
        config = config_file(image, work, asyncio.run(accelerator(image)))
        base = [sys.executable, "-m", "vmtest.cli", "run", str(config), "--driver", str(module)]
        base += ["--artifacts", str(work / "runs")]
        for name, extra in CASES.items():
            peak, wall = peak_rss_mb([*base, *extra])
            rows.append([name, f"{peak:.1f}", f"{wall:.1f}"])
            print(f"{name}: {peak:.1f} MB peak ({wall:.1f}s)", flush=True)
    worst = max(float(row[1]) for row in rows)
    verdict = "met" if worst < TARGET_MB else "missed"
    text = table(["vmtest run", "peak RSS of vmtest (MB)", "wall (s)"], rows)
    print(text)
    print(f"worst: {worst:.1f} MB (target < {TARGET_MB:.0f} MB: {verdict})")
    write_results(
        "Memory (bench/memory.py)",
        f"Peak resident set (`VmHWM`) of the `vmtest run` process; {machine_note()}.\n\n{text}\n\n"
        f"Worst: {worst:.1f} MB (target < {TARGET_MB:.0f} MB: {verdict}).",
    )
    return 0 if worst < TARGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
