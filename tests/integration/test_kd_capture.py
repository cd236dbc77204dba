"""KD link → capture → verdict: what a Windows guest prints over KD reaches capture.log and the verdict."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from test_kd_scripted_target import PARAMS, ScriptedTarget

from vmtest.capture.kd_source import KdSource
from vmtest.capture.source import Capture
from vmtest.verdict.analyze import judge_lines
from vmtest.verdict.config import VerdictConfig

EVENTS = [
    b"VMTEST1 seq=1 ev=run-start driver=wdk_mutex_tests proto=1 os=windows\n",
    b"VMTEST1 seq=2 ev=scenario-start sc=irql_errors params=-\n",
    b"VMTEST1 seq=3 ev=call sc=irql_errors t=0 op=lock m=km k=kmutex irql=2 r=IrqlTooHigh\n",
]


def test_kd_prints_and_a_bugcheck_reach_the_capture_and_fail_the_running_scenario(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    capture = Capture(tmp_path / "capture.log")
    source = KdSource(ours, tmp_path / "serial-kd.raw")

    def guest() -> None:
        target = ScriptedTarget(theirs)
        try:
            for line in EVENTS:
                target.print(line)
            target.bugcheck(0xD1, PARAMS, b"wdk_mutex_tests.sys")
        finally:
            theirs.shutdown(socket.SHUT_RDWR)
            theirs.close()

    async def scenario() -> None:
        bugcheck = asyncio.Event()
        capture.on_event(lambda event: bugcheck.set() if event.kind == "bugcheck" else None)
        await source.start(capture)
        thread = threading.Thread(target=guest, name="kd-guest")
        thread.start()
        await asyncio.to_thread(thread.join, 30)
        await asyncio.wait_for(bugcheck.wait(), 30)  # the last thing the guest sent reached the capture
        await source.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    capture.close()
    text = (tmp_path / "capture.log").read_text()
    assert " kd VMTEST1 seq=3 ev=call sc=irql_errors" in text
    assert " kd *** bugcheck: 0x000000D1" in text and "wdk_mutex_tests.sys" in text
    assert (tmp_path / "serial-kd.raw").stat().st_size > 0
    with (tmp_path / "capture.log").open() as lines:
        verdict = judge_lines(lines, VerdictConfig(), ["irql_errors"], [])
    (scenario_verdict,) = verdict.scenarios
    assert scenario_verdict.status == "crashed"
    (crash,) = scenario_verdict.crashes
    assert crash.code == 0xD1 and crash.name == "DRIVER_IRQL_NOT_LESS_OR_EQUAL"
