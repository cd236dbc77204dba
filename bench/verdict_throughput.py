"""Throughput and memory of the verdict: generate a capture of N events, then read and judge it.

Usage: ``python bench/verdict_throughput.py [--events N ...] [--seed S]``

For each size it writes a capture to a temporary file (a simulated run of several scenarios: worker
threads contending for mutexes under a scheduler that respects exclusion, nested locks in a
consistent order, recursion, IRQL-error calls; about 1 line in 10 foreign kernel output; Linux printk
stamps; some neighbouring lines printed out of order), then judges it in a fresh Python process the
way ``vmtest analyze`` does (stream the file through the reader, the crash scanner and the checks),
and reports the time, events per second and the peak resident memory of that process. The verdict
must pass. Memory that does not grow from the small run to the large one shows that nothing is kept
per line or per event beyond the bounded windows.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmtest.events.protocol import Event, format_event  # noqa: E402

FOREIGN = (
    "e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX/TX",
    "random: crng init done",
    "systemd-journald[123]: Received SIGTERM from PID 1 (systemd).",
    'audit: type=1400 audit(0.0:2): apparmor="STATUS" operation="profile_load"',
)


class _Writer:
    """Numbers events, prints them with a printk stamp, swaps neighbours now and then, adds noise."""

    def __init__(self, out: TextIO, rng: random.Random) -> None:
        self.out = out
        self.rng = rng
        self.seq = 0
        self.held_back: str | None = None
        self.clock = 3.0

    def emit(self, ev: str, **fields: str | int) -> None:
        self.seq += 1
        self.clock += 0.000001
        line = format_event(Event(self.seq, ev, {key: str(value) for key, value in fields.items()}))
        text = f"[{self.clock:12.6f}] {line}\n"
        if self.rng.random() < 0.1:
            text = f"[{self.clock:12.6f}] {self.rng.choice(FOREIGN)}\n" + text
        if self.held_back is None:
            if self.rng.random() < 0.02:  # print the next line first: a neighbour out of order
                self.held_back = text
                return
            self.out.write(text)
        else:
            self.out.write(text + self.held_back)
            self.held_back = None

    def close(self) -> None:
        if self.held_back is not None:
            self.out.write(self.held_back)


def _contention(w: _Writer, sc: str, kind: str, threads: int, iterations: int) -> None:
    w.emit("scenario-start", sc=sc, params=f"threads:{threads},iterations:{iterations}")
    w.emit("mutex", sc=sc, m="counter", k=kind)
    left = dict.fromkeys(range(threads), iterations)
    phase = dict.fromkeys(range(threads), 0)  # 0 idle, 1 waiting, 2 holding
    holder: int | None = None
    active = list(left)
    while active:
        t = w.rng.choice(active)
        common: dict[str, str | int] = {"sc": sc, "t": t, "m": "counter", "k": kind}
        if phase[t] == 0:
            w.emit("acquire", **common, irql=0)
            phase[t] = 1
        elif phase[t] == 1 and holder is None:
            holder = t
            w.emit("acquired", **common, irql=0, depth=1)
            phase[t] = 2
        elif phase[t] == 2:
            w.emit("release", **common, irql=1 if kind == "fast_mutex" else 0, depth=1)
            holder = None
            phase[t] = 0
            left[t] -= 1
            if not left[t]:
                w.emit("thread-end", sc=sc, t=t, iterations=iterations)
                active.remove(t)
    w.emit("counter", sc=sc, m="counter", value=threads * iterations, expected=threads * iterations)
    w.emit("scenario-end", sc=sc, outcome="done")


def _lock_order(w: _Writer, threads: int, iterations: int) -> None:
    sc = "lock_order_consistent"
    w.emit("scenario-start", sc=sc, params=f"threads:{threads},iterations:{iterations}")
    for name in ("a", "b"):
        w.emit("mutex", sc=sc, m=name, k="kmutex")
    for _ in range(iterations):
        for t in w.rng.sample(range(threads), threads):  # one thread at a time takes a, then b
            for name in ("a", "b"):
                w.emit("acquire", sc=sc, t=t, m=name, k="kmutex", irql=0)
                w.emit("acquired", sc=sc, t=t, m=name, k="kmutex", irql=0, depth=1)
            for name in ("b", "a"):
                w.emit("release", sc=sc, t=t, m=name, k="kmutex", irql=0, depth=1)
    for t in range(threads):
        w.emit("thread-end", sc=sc, t=t, iterations=iterations)
    w.emit("scenario-end", sc=sc, outcome="done")


def _recursion_and_irql(w: _Writer) -> None:
    sc = "kmutex_recursion"
    w.emit("scenario-start", sc=sc, params="-")
    w.emit("mutex", sc=sc, m="r", k="kmutex")
    for depth in (1, 2):
        w.emit("acquire", sc=sc, t=0, m="r", k="kmutex", irql=0)
        w.emit("acquired", sc=sc, t=0, m="r", k="kmutex", irql=0, depth=depth)
    for depth in (2, 1):
        w.emit("release", sc=sc, t=0, m="r", k="kmutex", irql=0, depth=depth)
    w.emit("scenario-end", sc=sc, outcome="done")
    sc = "irql_errors"
    w.emit("scenario-start", sc=sc, params="-")
    for op, kind, irql, result in (
        ("lock", "kmutex", 2, "IrqlTooHigh"),
        ("lock", "fast_mutex", 2, "IrqlTooHigh"),
        ("lock", "kmutex", 1, "Ok"),
        ("new", "fast_mutex", 3, "IrqlTooHigh"),
        ("drop_safe", "fast_mutex", 0, "IrqlTooHigh"),
        ("drop_safe", "kmutex", 3, "IrqlTooHigh"),
    ):
        w.emit("call", sc=sc, t=0, op=op, m="x", k=kind, irql=irql, r=result)
    w.emit("scenario-end", sc=sc, outcome="done")


def generate(path: Path, events: int, seed: int) -> int:
    """Write a capture of about ``events`` events to ``path``; returns the exact number."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        w = _Writer(out, rng)
        out.write("[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n")
        w.emit("run-start", driver="vmtest_mutex", proto=1, os="linux", build="bench")
        threads = 4
        share = max(1, events - 60)
        iterations = max(1, int(share * 0.45) // (3 * threads))
        _contention(w, "kmutex_contention", "kmutex", threads, iterations)
        _contention(w, "fast_mutex_contention", "fast_mutex", threads, iterations)
        _lock_order(w, threads, max(1, int(share * 0.1) // (6 * threads)))
        _recursion_and_irql(w)
        w.emit("run-end", scenarios=5)
        w.close()
        return w.seq


def judge_file(path: Path) -> dict[str, object]:
    """Read and judge the capture like ``vmtest analyze``; time, events/s, peak memory (this process)."""
    from vmtest.verdict.analyze import analyze_capture
    from vmtest.verdict.config import AnalyzeConfig

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    verdict = analyze_capture(path, AnalyzeConfig())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not verdict.passed:
        print(verdict.render()[:4000], file=sys.stderr)
    return {
        "events": verdict.events,
        "seconds": seconds,
        "events_per_second": verdict.events / seconds,
        "rss_before_kib": before,
        "rss_peak_kib": peak,
        "passed": verdict.passed,
    }


def _measure(path: Path) -> dict[str, object]:
    """Judge in a fresh interpreter, so its peak memory is this run's alone."""
    result = subprocess.run(
        [sys.executable, __file__, "--judge", str(path)], capture_output=True, text=True, check=True
    )
    data: dict[str, object] = json.loads(result.stdout)
    return data


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark for each size and print a table; exit 1 if a verdict did not pass."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--judge", type=Path, help=argparse.SUPPRESS)  # the measuring child process
    args = parser.parse_args(argv)
    if args.judge is not None:
        print(json.dumps(judge_file(args.judge)))
        return 0
    ok = True
    print(
        f"{'events':>9} {'generate s':>10} {'judge s':>8} {'events/s':>10} {'RSS before':>11} {'RSS peak':>9}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for size in args.events:
            path = Path(folder) / f"capture-{size}.log"
            started = time.perf_counter()
            generate(path, size, args.seed)
            made = time.perf_counter() - started
            result = _measure(path)
            ok = ok and bool(result["passed"])
            print(
                f"{result['events']:>9} {made:>10.2f} {result['seconds']:>8.2f} "
                f"{result['events_per_second']:>10,.0f} {_mib(result['rss_before_kib']):>11} "
                f"{_mib(result['rss_peak_kib']):>9}{'' if result['passed'] else '  VERDICT FAILED'}"
            )
            path.unlink()
    return 0 if ok else 1


def _mib(kib: object) -> str:
    assert isinstance(kib, int)
    return f"{kib / 1024:.0f} MiB"


if __name__ == "__main__":
    sys.exit(main())
