"""Kernel reports that fail a smoke test, and the smoke verdict that quotes them.

``warn-debian-6.1.txt`` is a real ``WARN()`` from the self-test guest (Debian 6.1 kernel, the e2e
module ``vmtest_warns``), its build path shortened. The other kernels' report lines are replayed from
the format strings in the kernel sources named beside each (that guest has no lockdep, KASAN or UBSAN).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtest.verdict.crashes import Crash
from vmtest.verdict.kernel_reports import KernelReportScanner
from vmtest.verdict.smoke import ExerciserResult, smoke_verdict

DATA = Path(__file__).resolve().parents[1] / "data" / "kernel_reports"


def scan(lines: list[str]) -> KernelReportScanner:
    scanner = KernelReportScanner()
    for lineno, line in enumerate(lines, 1):
        scanner.feed(line, lineno)
    return scanner


def test_a_real_warn_is_one_report_from_cut_here_with_its_message() -> None:
    scanner = scan((DATA / "warn-debian-6.1.txt").read_text().splitlines())
    (report,) = scanner.reports
    assert report.kind == "warning" and report.lineno == 3
    assert report.headline.startswith("WARNING: CPU: 1 PID: 145 at /build/vmtest_warns/vmtest_warns.c:9")
    assert "cut here" in report.lines[0] and "vmtest_warns: a warning on purpose" in report.lines[1]
    assert "loading out-of-tree module" not in "\n".join(report.lines)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # kernel/locking/lockdep.c print_circular_bug_header()
        ("[  5.1] WARNING: possible circular locking dependency detected", "lockdep"),
        # kernel/locking/lockdep.c print_deadlock_bug()
        ("[  5.1] WARNING: possible recursive locking detected", "lockdep"),
        # mm/kasan/report.c print_error_description()
        ("[  5.1] BUG: KASAN: slab-out-of-bounds in my_init+0x2a/0x40 [my]", "kasan"),
        # lib/ubsan.c ubsan_prologue()
        ("[  5.1] UBSAN: shift-out-of-bounds in /build/my.c:12:9", "ubsan"),
        # kernel/hung_task.c check_hung_task()
        ("[ 125.3] INFO: task insmod:145 blocked for more than 120 seconds.", "hung-task"),
        # kernel/rcu/tree_stall.h print_cpu_stall() (pr_fmt "rcu: ")
        ("[  30.2] rcu: INFO: rcu_preempt self-detected stall on CPU", "rcu-stall"),
        ("[  30.2] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu-stall"),
        ("[  9.9] BUG: kernel NULL pointer dereference, address: 0000000000000000", "oops"),
        ("[  9.9] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [insmod:145]", "oops"),
        ("[  9.9] Kernel panic - not syncing: Fatal exception", "oops"),
    ],
)
def test_each_kind_of_report_is_recognised(line: str, kind: str) -> None:
    (report,) = scan(["[  5.0] my: loaded", line, "[  5.2] Call Trace:"]).reports
    assert (report.kind, report.lineno, report.lines[-1]) == (kind, 2, "[  5.2] Call Trace:")


def test_ordinary_lines_are_no_report() -> None:
    lines = ["[ 1.0] vmtest_quiet: loaded", "[ 1.1] warning: nothing to see", "[ 1.2] rcu: Hierarchical RCU"]
    assert scan(lines).reports == []


def test_an_oops_inside_a_kasan_report_is_the_same_report_and_an_end_marker_closes_it() -> None:
    lines = [
        "[ 1.0] BUG: KASAN: use-after-free in f+0x1/0x2",
        "[ 1.1] Oops: 0000 [#1] SMP",
        "[ 1.2] ---[ end trace 0000000000000000 ]---",
        "[ 1.3] after the report",
    ]
    (report,) = scan(lines).reports
    assert report.lines == lines[:3]


def test_smoke_verdict_passes_only_with_nothing_to_report() -> None:
    assert smoke_verdict("my", reports=[]).passed
    warned = scan((DATA / "warn-debian-6.1.txt").read_text().splitlines()).reports
    failed = smoke_verdict("my", reports=warned).scenarios[0]
    assert failed.status == "failed" and failed.findings[0].check == "kernel-report"
    assert "a warning on purpose" in "\n".join(failed.findings[0].lines)
    exercised = smoke_verdict("my", reports=[], exerciser=ExerciserResult("./x", 2, "boom\n")).scenarios[0]
    assert exercised.findings[0].message == "the exerciser `./x` exited with 2"
    assert exercised.findings[0].lines == ("boom",)
    crashed = smoke_verdict("my", reports=[], crashes=[Crash("kd", 0xD1)]).scenarios[0]
    assert crashed.status == "crashed" and "DRIVER_IRQL_NOT_LESS_OR_EQUAL" in crashed.findings[0].message
    load = smoke_verdict(
        "my", reports=[], driver_error="load: loading my failed", driver_output="x\n"
    ).scenarios[0]
    assert (load.status, load.findings[0].check, load.findings[0].lines) == ("failed", "load", ("x",))
