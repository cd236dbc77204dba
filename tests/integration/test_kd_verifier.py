"""A Driver Verifier bugcheck reported over KD, through vmtest's KD host, to a decoded finding.

The scripted target (test_kd_scripted_target.py) speaks the KD serial protocol over a real socket
pair: the driver's protocol lines arrive as DbgPrint packets, then the kernel stops with bug check
0xC4 and parameter 1 = 0x1001 (Microsoft Learn, "Bug Check 0xC4": deadlock detection found a lock
hierarchy violation). The lines the host decoded are judged as a live run's capture would be.
"""

from __future__ import annotations

from dataclasses import replace

from test_kd_scripted_target import DRV, FAST, NT, ScriptedTarget, run_session

from vmtest.capture.kd import KdBugcheck
from vmtest.config.models import VmtestConfig
from vmtest.verdict.analyze import judge_lines
from vmtest.verdict.verifier_rules import decode_violation

RESOURCE = 0xFFFFA00012345678
LINES = (
    b"VMTEST1 seq=1 ev=run-start driver=wdk_mutex_tests proto=1 os=windows build=0.1.0\n",
    b"VMTEST1 seq=2 ev=scenario-start sc=neg_lock_inversion params=threads:2,iterations:1\n",
    b"VMTEST1 seq=3 ev=mutex sc=neg_lock_inversion m=a k=kmutex\n",
    b"VMTEST1 seq=4 ev=mutex sc=neg_lock_inversion m=b k=kmutex\n",
    b"VMTEST1 seq=5 ev=acquire sc=neg_lock_inversion t=0 m=a k=kmutex irql=0\n",
    b"VMTEST1 seq=6 ev=acquired sc=neg_lock_inversion t=0 m=a k=kmutex irql=0 depth=1\n",
    b"VMTEST1 seq=7 ev=acquire sc=neg_lock_inversion t=1 m=b k=kmutex irql=0\n",
)


def inversion_caught_by_verifier(t: ScriptedTarget) -> None:
    t.load(b"\\SystemRoot\\system32\\ntoskrnl.exe", NT, 0x1000000)
    t.load(b"\\SystemRoot\\system32\\drivers\\wdk_mutex_tests.sys", DRV, 0x8000)
    for line in LINES:
        t.print(line)
    t.bugcheck(0xC4, (0x1001, RESOURCE, 0, 0), b"wdk_mutex_tests.sys")


def test_a_kd_reported_verifier_bugcheck_becomes_a_decoded_finding() -> None:
    session = run_session(inversion_caught_by_verifier, options=replace(FAST, prompt_answer="i"))
    (bugcheck,) = session.of(KdBugcheck)
    assert bugcheck.code == 0xC4 and bugcheck.parameters[0] == 0x1001
    violation = decode_violation(bugcheck.code, bugcheck.parameters)
    assert violation is not None and violation.option == "deadlock_detection"

    windows = VmtestConfig.model_validate(
        {"guest": {"kind": "windows11", "password": "pw"}, "driver": {"verifier": {}}}
    )
    verdict = judge_lines(session.lines, windows.judging, ["neg_lock_inversion"])
    (scenario,) = verdict.scenarios
    (crash,) = scenario.crashes
    assert crash.driver == "wdk_mutex_tests.sys"
    assert "Driver Verifier, deadlock detection: lock-order violation (0x1001)" in crash.describe()
    assert f"resource that caused the deadlock {RESOURCE:#x}" in crash.describe()
    assert scenario.status == "passed", verdict.render()  # the negative control, caught by Verifier
