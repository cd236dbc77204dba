"""DbgPrint throughput through KdHost, and its memory over a long capture.

A target process blasts DbgPrint packets over a socket pair as fast as the host's ACKs allow (one
packet in flight, as KDCOM does); the host in this process decodes, ACKs, cuts lines and hands every
line to a consumer that counts them. The raw tap writes to the null device, so its cost is included.

For each scenario it prints the print-payload rate (MB/s of DbgPrint text), the packet and line rates,
and this process's resident memory: sampled through the capture after a warm-up, its growth from the
warm-up to the end, and the peak (``ru_maxrss``).

Run it from the project root::

    .venv/bin/python bench/kd_throughput.py            # the three default scenarios
    .venv/bin/python bench/kd_throughput.py --lines 200000 --packet-bytes 512
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from vmtest.capture.kd import KdHost, KdLinkStats, KdPrint

TARGET_GOAL_MBPS = 5.0
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Scenario:
    """How the target prints: ``lines`` lines of ``line_bytes``, packed up to ``packet_bytes`` per print.

    ``judged`` scenarios must reach the throughput goal. With one short line per print the rate is
    bounded by the lock-step round trip of KDCOM (one packet in flight), not by the payload, so that
    scenario is reported as a packet rate for information.
    """

    name: str
    lines: int
    line_bytes: int
    packet_bytes: int
    judged: bool = True


DEFAULT_SCENARIOS = [
    Scenario("one line per DbgPrint (round-trip bound)", 200_000, 80, 80, judged=False),
    Scenario("512-byte DbgPrints (Windows' cap)", 1_000_000, 80, 512),
    Scenario("3984-byte prints (KD packet maximum)", 1_000_000, 80, 3984),
]
FLAT_MEMORY_BYTES = 1024 * 1024  # RSS may not grow more than this after the warm-up


def rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def peak_rss() -> int:
    """The peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the target (a child process) ---------------------------------------------------------------------


def run_target(fd: int, lines: int, line_bytes: int, packet_bytes: int) -> None:
    """Send ``lines`` lines as DbgPrint packets on ``fd``, each after the ACK of the one before."""
    sock = socket.socket(fileno=fd)
    header = struct.Struct("<IHHII")
    packet_id = 0x80800800  # the first packet after boot carries SYNC
    pending = bytearray()
    line = 0
    per_packet = max(1, packet_bytes // line_bytes)
    pad = b"." * (line_bytes - 24)
    while line < lines:
        count = min(per_packet, lines - line)
        text = b"".join(b"mydrv: line %09d %s\n" % (n, pad) for n in range(line, line + count))
        line += count
        payload = struct.pack("<IHHII", 0x3230, 6, 0, len(text), 0) + text
        sock.sendall(header.pack(0x30303030, 3, len(payload), packet_id, sum(payload)) + payload + b"\xaa")
        while len(pending) < 16:
            chunk = sock.recv(4096)
            if not chunk:
                raise SystemExit("host hung up")
            pending += chunk
        leader, kind, _count, acked, _sum = header.unpack_from(pending)
        del pending[:16]
        if (leader, kind, acked) != (0x69696969, 4, packet_id & ~0x800):
            raise SystemExit(f"unexpected control packet {bytes(pending[:16]).hex()}")
        packet_id = (packet_id & ~0x800) ^ 1
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(4096):
        pass


# -- the host (this process) --------------------------------------------------------------------------


@dataclass
class Result:
    """What one scenario measured."""

    lines: int
    text_bytes: int
    seconds: float
    packets: int
    cpu_seconds: float
    rss_warm: int
    rss_max: int
    rss_end: int


async def capture(sock: socket.socket, scenario: Scenario) -> Result:
    """Run a KdHost on ``sock`` until the target hangs up; count and time what it emits."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    lines = text_bytes = 0
    packets = 0
    warm_at = max(1, scenario.lines // 10)
    rss_warm = rss_max = 0
    with open(os.devnull, "wb") as raw:
        start, cpu_start = time.perf_counter(), time.process_time()
        async with KdHost(reader, writer, raw=raw) as host:
            async for event in host.events():
                if isinstance(event, KdPrint):
                    lines += 1
                    text_bytes += len(event.text) + 1  # + the newline
                    if lines % 20_000 == 0 or lines == warm_at:
                        now = rss()
                        if lines == warm_at:
                            rss_warm = now
                        if lines >= warm_at:
                            rss_max = max(rss_max, now)
                elif isinstance(event, KdLinkStats):
                    packets = event.packets_received
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return Result(lines, text_bytes, seconds, packets, cpu, rss_warm, rss_max, rss())


def run_scenario(scenario: Scenario) -> Result:
    """Start the target process, capture, and wait for the target to exit."""
    host_end, target_end = socket.socketpair()
    fd = target_end.fileno()
    args = [str(fd), str(scenario.lines), str(scenario.line_bytes), str(scenario.packet_bytes)]
    target = subprocess.Popen([sys.executable, __file__, "--target", *args], pass_fds=[fd])
    target_end.close()
    try:
        result = asyncio.run(capture(host_end, scenario))
    finally:
        if target.wait(timeout=60) != 0:
            raise SystemExit(f"target exited with {target.returncode}")
    if result.lines != scenario.lines:
        raise SystemExit(f"{scenario.name}: {result.lines} lines received, {scenario.lines} sent")
    return result


def report(scenario: Scenario, result: Result) -> bool:
    """Print one scenario's numbers; True when its memory stayed flat and, if judged, it met the goal."""
    mbps = result.text_bytes / result.seconds / 1e6
    mib = 1024 * 1024
    growth = result.rss_max - result.rss_warm
    lines, packets = f"{result.lines:,} lines of {scenario.line_bytes} bytes", f"{result.packets:,} packets"
    print(f"{scenario.name}: {lines} in {packets}")
    print(
        f"  {mbps:6.2f} MB/s of print text ({mbps / TARGET_GOAL_MBPS:.2f}x the {TARGET_GOAL_MBPS:g} MB/s"
        " goal),"
        f" {result.packets / result.seconds:,.0f} packets/s, {result.lines / result.seconds:,.0f} lines/s,"
        f" {result.seconds:.1f} s; host CPU {result.cpu_seconds / result.seconds:.0%} of the wall time,"
        f" {result.cpu_seconds / max(result.packets, 1) * 1e6:.0f} us per packet"
    )
    print(
        f"  RSS after 10% warm-up {result.rss_warm / mib:.1f} MiB, max while capturing"
        f" {result.rss_max / mib:.1f} MiB (growth {growth / mib:+.2f} MiB"
        f" = {growth / max(result.text_bytes, 1) * 100:.4f}% of the text captured), at the end"
        f" {result.rss_end / mib:.1f} MiB; process peak so far {peak_rss() / mib:.1f} MiB"
    )
    flat = growth <= FLAT_MEMORY_BYTES
    fast = mbps >= TARGET_GOAL_MBPS or not scenario.judged
    print(f"  {'ok' if flat and fast else 'FAILED'}: memory {'flat' if flat else 'GREW'}", end="")
    print(f", rate {'meets the goal' if mbps >= TARGET_GOAL_MBPS else 'below the goal'}", end="")
    print("" if scenario.judged else " (not judged: packet-rate bound)")
    return flat and fast


def main(argv: list[str] | None = None) -> int:
    """Run the default scenarios, or one described on the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, help="lines to send (one custom scenario)")
    parser.add_argument("--line-bytes", type=int, default=80, help="bytes per line, newline included")
    parser.add_argument("--packet-bytes", type=int, default=512, help="print text per packet, at most 3984")
    parser.add_argument("--target", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target:
        run_target(*args.target)
        return 0
    if args.line_bytes < 25 or not args.line_bytes <= args.packet_bytes <= 3984:
        parser.error("need 25 <= --line-bytes <= --packet-bytes <= 3984")
    scenarios = (
        [Scenario("custom", args.lines, args.line_bytes, args.packet_bytes)]
        if args.lines
        else DEFAULT_SCENARIOS
    )
    print(f"KdHost DbgPrint throughput, Python {sys.version.split()[0]}, start RSS {rss() / 2**20:.1f} MiB")
    met = [report(scenario, run_scenario(scenario)) for scenario in scenarios]
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
