"""Corrupted bytes on the KD serial line: the host resynchronises and loses no print that arrived intact.

The scripted Windows target and the corrupting proxy are the ones of the KD integration tests
(tests/integration/test_kd_scripted_target.py), loaded from that file; here the line is made worse,
with several seeds.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from faultlib import ROOT, Record, load_test_module

from vmtest.capture.kd import KdLinkStats

SCRIPTED = ROOT / "tests" / "integration" / "test_kd_scripted_target.py"
PRINTS = 150


@pytest.mark.parametrize(
    ("seed", "packet_rate", "chunk_rate"),
    [(1, 0.05, 0.02), (20240502, 0.15, 0.05), (77, 0.25, 0.08)],
    ids=["5%", "15%", "25%"],
)
def test_corrupted_kd_line_loses_no_intact_print(
    seed: int, packet_rate: float, chunk_rate: float, record: Record
) -> None:
    kd = load_test_module(SCRIPTED, "kd_scripted_target_for_faults")
    row = record(
        f"corrupted KD line ({packet_rate:.0%} of packets)",
        f"{PRINTS} DbgPrints through a proxy that flips, truncates or prefixes junk to {packet_rate:.0%} of"
        f" the target's packets and flips a byte in {chunk_rate:.0%} of the host's writes (seed {seed})",
        "the host resynchronises; every print that crossed intact is delivered once, in order",
    )
    proxy = kd.CorruptingProxy(seed=seed, packet_rate=packet_rate, chunk_rate=chunk_rate)
    names = kd.NT

    def script(target: object) -> None:
        target.ack_timeout, target.retries = 0.1, 60  # type: ignore[attr-defined]
        target.load(b"\\SystemRoot\\system32\\ntoskrnl.exe", names, 0x1000000)  # type: ignore[attr-defined]
        for n in range(PRINTS):
            target.print(b"line %d\n" % n)  # type: ignore[attr-defined]

    options = replace(kd.FAST, ack_timeout=0.15, send_tries=10)
    session = kd.run_session(script, options=options, middle=proxy.start, timeout=120)
    received: list[str] = session.lines
    numbers = [int(line.split()[1]) for line in received if line.startswith("line ")]
    intact = {bytes(text).rstrip(b"\n").decode() for text in proxy.intact}
    lost = sorted(intact - set(received))
    stats = session.events[-1]
    assert isinstance(stats, KdLinkStats)
    row.observed = (
        f"{proxy.damaged} packets damaged; {stats.corrupt_frames} corrupt frames and {stats.junk_bytes} junk"
        f" bytes skipped; {len(numbers)} of {PRINTS} prints delivered, {len(intact)} crossed intact,"
        f" {len(lost)} of those lost; duplicates or reordering: {numbers != sorted(set(numbers))}"
    )
    assert proxy.damaged > 0
    assert len(intact) > PRINTS // 2, "the proxy saw no intact print: is it wired the right way round?"
    assert stats.corrupt_frames + stats.junk_bytes > 0
    assert numbers == sorted(set(numbers)), "a print was duplicated or reordered"
    assert not lost, f"lost intact prints: {lost}"
    assert numbers and numbers[-1] >= PRINTS - 5, "the host did not keep up until the end of the line"
