"""The checks, tables and crash records one by one, as pure functions over hand-made events."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from vmtest.events.protocol import Event, format_event
from vmtest.verdict import Crash, Judge, VerdictConfig, crash_from_console, crash_from_qmp, judge
from vmtest.verdict.analyze import judge_lines
from vmtest.verdict.config import ExpectedCrash
from vmtest.verdict.contracts import check_contracts
from vmtest.verdict.exclusion import check_exclusion
from vmtest.verdict.findings import Finding, FindingLog, compact_ranges, printable
from vmtest.verdict.grt_contracts import GrtModel
from vmtest.verdict.irql_contracts import IRQL_CONTRACTS, contract_for
from vmtest.verdict.lock_order import check_lock_order
from vmtest.verdict.results import check_results
from vmtest.verdict.sequence import check_sequence
from vmtest.verdict.stop_codes import STOP_CODES, describe_stop, stop_code_by_name, stop_code_name
from vmtest.verdict.text import TextVerdictConfig, TextVerdictReader


def make(specs: list[tuple[str, dict[str, object]]], start: int = 1) -> list[Event]:
    """Events numbered from ``start``, each on its own capture line."""
    events = []
    for offset, (ev, fields) in enumerate(specs):
        event = Event(start + offset, ev, {key: str(value) for key, value in fields.items()})
        events.append(Event(event.seq, ev, event.fields, None, format_event(event), start + offset))
    return events


def lock(
    sc: str, t: int, m: str, kind: str = "kmutex", depth: int = 1
) -> list[tuple[str, dict[str, object]]]:
    common: dict[str, object] = {"sc": sc, "t": t, "m": m, "k": kind, "irql": 0}
    return [("acquire", common), ("acquired", {**common, "depth": depth})]


def unlock(
    sc: str, t: int, m: str, kind: str = "kmutex", depth: int = 1
) -> list[tuple[str, dict[str, object]]]:
    return [("release", {"sc": sc, "t": t, "m": m, "k": kind, "irql": 0, "depth": depth})]


# -- the IRQL contract table ---------------------------------------------------------------------------

RULES = {  # the table, written out: the results allowed at IRQL 0..15
    ("lock", "kmutex"): lambda irql: {"IrqlTooHigh"} if irql > 1 else {"Ok"},
    ("lock", "fast_mutex"): lambda irql: {"IrqlTooHigh"} if irql > 1 else {"Ok"},
    ("drop_safe", "kmutex"): lambda irql: {"IrqlTooHigh"} if irql > 2 else {"Ok"},
    ("drop_safe", "fast_mutex"): lambda irql: {"Ok"} if irql == 1 else {"IrqlTooHigh"},
    ("new", "fast_mutex"): lambda irql: {"IrqlTooHigh"} if irql > 2 else {"Ok", "PagedPoolAllocFailed"},
    ("new", "kmutex"): lambda irql: {"Ok", "PagedPoolAllocFailed"},
}


@pytest.mark.parametrize(("op", "kind"), sorted(RULES))
def test_the_contract_table_is_the_documented_one(op: str, kind: str) -> None:
    row = contract_for(op, kind)
    assert row is not None
    for irql in range(16):
        assert row.expected(irql) == RULES[(op, kind)](irql), irql
    assert row.source.startswith("API notes ") and "src/" in row.source


def test_every_row_cites_its_source_and_the_table_has_one_row_per_op_and_kind() -> None:
    keys = [(row.op, row.kind) for row in IRQL_CONTRACTS]
    assert len(keys) == len(set(keys))
    assert all(row.source for row in IRQL_CONTRACTS)
    assert contract_for("drop", "kmutex") is None and contract_for("wait", "kmutex") is None


def test_calls_against_the_table() -> None:
    sc = "irql_errors"
    events = make(
        [
            (
                "call",
                {"sc": sc, "t": 0, "op": "lock", "m": "k", "k": "kmutex", "irql": 2, "r": "IrqlTooHigh"},
            ),
            ("call", {"sc": sc, "t": 0, "op": "lock", "m": "f", "k": "fast_mutex", "irql": 2, "r": "Ok"}),
            ("call", {"sc": sc, "t": 0, "op": "drop_safe", "k": "fast_mutex", "irql": 0, "r": "IrqlTooHigh"}),
            ("call", {"sc": sc, "t": 0, "op": "lock", "irql": 0, "r": "Ok"}),  # no k: both kinds agree
            ("call", {"sc": sc, "t": 0, "op": "drop_safe", "irql": 0, "r": "Ok"}),  # no k: they differ
            ("call", {"sc": sc, "t": 0, "op": "lock", "k": "kmutex", "irql": "high", "r": "Ok"}),
            ("call", {"sc": sc, "t": 0, "op": "wait", "irql": 2, "r": "Ok"}),  # reported as it happens
        ]
    )
    found = check_contracts(events)
    assert [(finding.lines[0].split(":")[0], finding.message.split(",")[0]) for finding in found] == [
        ("line 2", "lock on fast_mutex f at IRQL 2 (DISPATCH_LEVEL) returned Ok"),
        ("line 5", "call op=drop_safe without k: its contract depends on the kind"),
        ("line 6", "call op=lock without a numeric irql: its contract cannot be checked"),
    ]


# -- Grt ---------------------------------------------------------------------------------------------


def test_the_grt_model_predicts_the_documented_results() -> None:
    model = GrtModel()
    assert model.expected("grt_get", "x", "kmutex") >= {"Ok", "GrtIsNull"}  # unknown state: documented set
    model.reset()
    steps = [
        ("grt_get", "x", "kmutex", {"GrtIsNull"}, "GrtIsNull"),
        ("grt_init", "", "", {"Ok"}, "Ok"),
        ("grt_init", "", "", {"GrtAlreadyExists"}, "GrtAlreadyExists"),
        ("grt_get", "x", "kmutex", {"GrtIsEmpty"}, "GrtIsEmpty"),
        (
            "grt_register",
            "x",
            "kmutex",
            {"Ok", "IrqlTooHigh", "PagedPoolAllocFailed", "DriverMutexError"},
            "Ok",
        ),
        ("grt_get", "y", "kmutex", {"KeyNotFound"}, "KeyNotFound"),
        ("grt_get", "x", "fast_mutex", {"DowncastError"}, "DowncastError"),
        ("grt_get", "x", "kmutex", {"Ok", "DowncastError"}, "Ok"),
        ("grt_register_checked", "x", "kmutex", {"KeyExists"}, "KeyExists"),
        ("grt_destroy", "", "", {"Ok"}, "Ok"),
        ("grt_destroy", "", "", {"GrtIsNull"}, "GrtIsNull"),
    ]
    for op, label, kind, expected, result in steps:
        assert model.expected(op, label, kind) == expected, (op, label, kind)
        model.apply(op, label, kind, result)


# -- exclusion ----------------------------------------------------------------------------------------


def test_kmutex_recursion_is_allowed_and_depths_are_checked() -> None:
    sc = "kmutex_recursion"
    good = make(
        [*lock(sc, 0, "r"), *lock(sc, 0, "r", depth=2), *unlock(sc, 0, "r", depth=2), *unlock(sc, 0, "r")]
    )
    assert check_exclusion(good) == []
    bad = make(
        [*lock(sc, 0, "r"), *lock(sc, 0, "r", depth=3), *unlock(sc, 0, "r", depth=2), *unlock(sc, 0, "r")]
    )
    (finding,) = check_exclusion(bad)
    assert "says depth=3, but by the events so far the depth is 2" in finding.message


def test_exclusion_is_judged_in_seq_order_whatever_the_line_order() -> None:
    sc = "kmutex_contention"
    events = make([*lock(sc, 0, "m"), *unlock(sc, 0, "m"), *lock(sc, 1, "m"), *unlock(sc, 1, "m")])
    shuffled = events[:]
    random.Random(4).shuffle(shuffled)
    assert check_exclusion(shuffled) == check_exclusion(events) == []


def test_a_lock_held_at_the_scenario_end_is_a_failure() -> None:
    sc = "kmutex_contention"
    events = make(
        [
            ("scenario-start", {"sc": sc, "params": "-"}),
            *lock(sc, 2, "m"),
            ("scenario-end", {"sc": sc, "outcome": "done"}),
        ]
    )
    (finding,) = check_exclusion(events)
    assert finding.message == "m (kmutex) still held by t=2 (depth 1) at the scenario's end"


def test_one_mistake_repeated_is_reported_boundedly() -> None:
    log = FindingLog("exclusion", limit=3)
    for number in range(1000):
        log.add("s", f"overlap {number}")
    found = log.findings()
    assert [finding.message for finding in found] == [
        "overlap 0",
        "overlap 1",
        "overlap 2",
        "... and 997 more exclusion findings like these",
    ]


# -- lock order ----------------------------------------------------------------------------------------


def test_a_three_lock_cycle_is_reported_once_with_every_edge() -> None:
    sc = "lock_order_consistent"
    events = make(
        [
            *lock(sc, 0, "a"), *lock(sc, 0, "b"), *unlock(sc, 0, "b"), *unlock(sc, 0, "a"),
            *lock(sc, 1, "b"), *lock(sc, 1, "c"), *unlock(sc, 1, "c"), *unlock(sc, 1, "b"),
            *lock(sc, 2, "c"), *lock(sc, 2, "a"), *unlock(sc, 2, "a"), *unlock(sc, 2, "c"),
        ]
    )  # fmt: skip
    (finding,) = check_lock_order(events)
    assert "(a -> b -> c -> a) between t=0, t=1, t=2" in finding.message
    assert len(finding.lines) == 6 and finding.scenario == sc


def test_an_actual_deadlock_still_shows_its_cycle() -> None:
    sc = "neg_lock_inversion"
    events = make([*lock(sc, 0, "a"), *lock(sc, 1, "b"), *lock(sc, 0, "b")[:1], *lock(sc, 1, "a")[:1]])
    (finding,) = check_lock_order(events)
    assert "a potential deadlock (a -> b -> a)" in finding.message


def test_recursion_and_one_order_are_no_inversion() -> None:
    sc = "lock_order_consistent"
    events = make([*lock(sc, 0, "a"), *lock(sc, 0, "a", depth=2), *lock(sc, 0, "b"), *unlock(sc, 0, "b")])
    assert check_lock_order(events) == []


def test_the_same_names_in_two_scenarios_are_different_locks() -> None:
    first = make([*lock("one", 0, "a"), *lock("one", 0, "b"), *unlock("one", 0, "b"), *unlock("one", 0, "a")])
    second = make(
        [*lock("two", 0, "b"), *lock("two", 0, "a"), *unlock("two", 0, "a"), *unlock("two", 0, "b")], 9
    )
    assert check_lock_order(first + second) == []


# -- results ------------------------------------------------------------------------------------------


def test_thread_ends_outside_the_range_or_twice() -> None:
    sc = "lock_order_consistent"
    events = make(
        [
            ("scenario-start", {"sc": sc, "params": "threads:2,iterations:3"}),
            ("thread-end", {"sc": sc, "t": 0, "iterations": 3}),
            ("thread-end", {"sc": sc, "t": 0, "iterations": 3}),
            ("thread-end", {"sc": sc, "t": 1, "iterations": 3}),
            ("thread-end", {"sc": sc, "t": 7, "iterations": 3}),
            ("scenario-end", {"sc": sc, "outcome": "done"}),
        ]
    )
    assert sorted(finding.message for finding in check_results(events)) == [
        "t=0 ended 2 times",
        "thread-end for t=7, but the scenario has t=0..1",
    ]


def test_a_contention_scenario_must_report_its_counter() -> None:
    sc = "grt_contention"
    events = make(
        [("scenario-start", {"sc": sc, "params": "-"}), ("scenario-end", {"sc": sc, "outcome": "done"})]
    )
    (finding,) = check_results(events)
    assert finding.message == "no counter was reported before the scenario's end"


# -- sequence -----------------------------------------------------------------------------------------


def test_gaps_are_named_compactly() -> None:
    events = [
        event for event in make([("call", {"sc": "s", "op": "x"})] * 30) if event.seq not in (3, 7, 8, 9, 20)
    ]
    (finding,) = check_sequence(events)
    assert finding.message.startswith("5 lines lost: seq 3, 7-9, 20 never reached the capture")
    assert compact_ranges([(9, 9), (1, 2), (3, 3), (5, 6)]) == "1-3, 5-6, 9"


def test_malformed_lines_are_not_counted_as_lost() -> None:
    events = [event for event in make([("call", {"sc": "s", "op": "x"})] * 10) if event.seq != 4]
    assert check_sequence(events, excused={4}) == []


def test_a_new_driver_load_restarts_the_numbering() -> None:
    run: list[tuple[str, dict[str, object]]] = [
        ("run-start", {"driver": "d", "proto": 1}),
        ("call", {"op": "x"}),
    ]
    assert check_sequence(make(run) + make(run)) == []


def test_a_line_later_than_the_window_is_reported() -> None:
    from vmtest.verdict.sequence import SequenceCheck

    seen: list[int] = []
    check = SequenceCheck({"call": [lambda event: seen.append(event.seq)]}, window=16)
    events = make([("call", {"sc": "s", "op": "x"})] * 60)
    late = events.pop(2)
    for event in events:
        check.push(event)
    check.push(late)
    messages = [finding.message for finding in check.finish()]
    assert seen == [event.seq for event in events]
    assert messages[0].startswith("1 line lost: seq 3 ")
    assert messages[1].startswith("seq 3 arrived after 16 later events: too late to be ordered")


# -- stop codes and crashes ---------------------------------------------------------------------------

REQUIRED_CODES = {
    0xA: "IRQL_NOT_LESS_OR_EQUAL",
    0x1E: "KMODE_EXCEPTION_NOT_HANDLED",
    0x3B: "SYSTEM_SERVICE_EXCEPTION",
    0x4A: "IRQL_GT_ZERO_AT_SYSTEM_SERVICE",
    0x50: "PAGE_FAULT_IN_NONPAGED_AREA",
    0x7E: "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
    0xB8: "ATTEMPTED_SWITCH_FROM_DPC",
    0xC4: "DRIVER_VERIFIER_DETECTED_VIOLATION",
    0xD1: "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
    0xE2: "MANUALLY_INITIATED_CRASH",
    0x133: "DPC_WATCHDOG_VIOLATION",
    0x139: "KERNEL_SECURITY_CHECK_FAILURE",
    0x7F: "UNEXPECTED_KERNEL_MODE_TRAP",
    0x9F: "DRIVER_POWER_STATE_FAILURE",
    0xC2: "BAD_POOL_CALLER",
    0xC5: "DRIVER_CORRUPTED_EXPOOL",
    0xCE: "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
    0xEF: "CRITICAL_PROCESS_DIED",
    0x1A: "MEMORY_MANAGEMENT",
    0x19: "BAD_POOL_HEADER",
    0x3D: "INTERRUPT_EXCEPTION_NOT_HANDLED",
    0x8E: "KERNEL_MODE_EXCEPTION_NOT_HANDLED",
    0x101: "CLOCK_WATCHDOG_TIMEOUT",
    0x124: "WHEA_UNCORRECTABLE_ERROR",
    0x80: "NMI_HARDWARE_FAILURE",
}


def test_the_stop_code_table_names_the_codes_a_driver_developer_meets() -> None:
    assert {code: STOP_CODES[code].name for code in REQUIRED_CODES} == REQUIRED_CODES
    assert stop_code_name(0x1000007E) == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    assert stop_code_name(0xDEAD) == "UNKNOWN_STOP_CODE"
    assert stop_code_by_name("driver_irql_not_less_or_equal") == 0xD1
    assert stop_code_by_name("SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M") == 0x1000007E
    assert describe_stop(0x1E, [0xC0000005, 0x1234, 0, 8]) == (
        "0x1e KMODE_EXCEPTION_NOT_HANDLED (exception code 0xc0000005 STATUS_ACCESS_VIOLATION, "
        "address of the exception 0x1234, parameter 0 0x0, parameter 1 0x8)"
    )


def test_a_crash_from_qmp_guest_panicked() -> None:
    data = {
        "action": "pause",
        "info": {"type": "hyper-v", "arg1": 0xD1, "arg2": 8, "arg3": 2, "arg4": 0, "arg5": 9},
    }
    crash = crash_from_qmp(data, screenshot="shots/crash.png")
    assert (crash.source, crash.code, crash.params, crash.lineno) == ("qemu-hv", 0xD1, (8, 2, 0, 9), None)
    assert crash.name == "DRIVER_IRQL_NOT_LESS_OR_EQUAL" and crash.describe().endswith(
        "screenshot: shots/crash.png"
    )
    plain = crash_from_qmp({"action": "poweroff"})
    assert (plain.source, plain.code, plain.name) == ("qemu-panic", None, "guest panic")


def test_crashes_from_console_text() -> None:
    lines = [
        "kd> !analyze -v",
        "BugCheck 133, {0, 501, 500, fffff805`1d2fb320}",
        "Probably caused by : wdk_mutex_tests.sys ( wdk_mutex_tests!spin+0x1f )",
        "[   99.1] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580",
        "[   99.2]  vm_lock+0x10/0x20 [vmtest_mutex]",
        "[   99.3] ---[ end Kernel panic - not syncing: Fatal exception ]---",
    ]
    windows, linux = crash_from_console(lines)
    assert (windows.source, windows.code, windows.params, windows.driver, windows.lineno) == (
        "kd",
        0x133,
        (0, 0x501, 0x500, 0xFFFFF8051D2FB320),
        "wdk_mutex_tests.sys",
        2,
    )
    assert (linux.source, linux.name, linux.driver, linux.lineno) == (
        "linux-bug",
        "BUG: sleeping function called from invalid context at kernel/locking/mutex.c",
        "vmtest_mutex",
        4,
    )


def test_the_default_negative_control_accepts_its_crashes_only() -> None:
    expected = VerdictConfig().expected_crashes["neg_wait_at_dispatch"]
    assert expected is not None
    for code in (0xA, 0xD1, 0xB8, 0x100000D1):
        assert expected.accepts(Crash("qemu-hv", code))
    assert not expected.accepts(Crash("kd", 0x50))
    assert expected.accepts(Crash("linux-bug", message="scheduling while atomic: insmod/1/0x2"))
    assert not expected.accepts(Crash("linux-bug", message="kernel NULL pointer dereference"))
    assert expected.accepts(Crash("linux-panic", message="Fatal exception"))
    assert ExpectedCrash(stop_codes=frozenset({0x50}), linux_panic=False).describe() == (
        "a bugcheck 0x50 or a Linux BUG "
        "(scheduling while atomic | sleeping function called from invalid context)"
    )


def run_of(*scenarios: str, end: bool = True) -> list[Event]:
    specs: list[tuple[str, dict[str, object]]] = [("run-start", {"driver": "d", "proto": 1})]
    for name in scenarios:
        specs.append(("scenario-start", {"sc": name, "params": "-"}))
        if end or name != scenarios[-1]:
            specs.append(("scenario-end", {"sc": name, "outcome": "done"}))
    return make(specs)


def test_a_qemu_crash_fails_the_scenario_running_when_the_capture_ended() -> None:
    events = run_of("irql_errors", "to_owned", end=False)
    hv = crash_from_qmp({"action": "pause", "info": {"type": "hyper-v", "arg1": 0x50, "arg2": 1}})
    kd = Crash("kd", 0x50, driver="wdk_mutex_tests.sys", lineno=9, line="*** Fatal System Error: 0x00000050")
    verdict = judge(events, ["irql_errors", "to_owned", "grt_errors"], [hv, kd])
    assert [(item.name, item.status) for item in verdict.scenarios] == [
        ("irql_errors", "passed"),
        ("to_owned", "crashed"),
        ("grt_errors", "not_run"),
    ]
    (finding,) = verdict.scenarios[1].findings
    assert "0x50 PAGE_FAULT_IN_NONPAGED_AREA" in finding.message and "wdk_mutex_tests.sys" in finding.message
    assert finding.message.count("bugcheck") == 1, "QEMU's and KD's report of one crash count once"


def test_a_crash_outside_any_scenario_fails_the_run() -> None:
    verdict = judge(
        run_of("kmutex_recursion"), crashes=[Crash("linux-panic", message="VFS: Unable to mount root fs")]
    )
    assert [item.status for item in verdict.scenarios] == ["passed"]
    assert not verdict.passed and "outside any scenario" in verdict.findings[0].message


def test_a_negative_control_that_does_not_crash_fails() -> None:
    verdict = judge(run_of("neg_wait_at_dispatch"))
    (item,) = verdict.scenarios
    assert item.status == "failed"
    assert "expected a bugcheck 0xa/0xb8/0xd1 or a Linux BUG" in item.findings[0].message


def test_skipped_error_and_unrequested_scenarios() -> None:
    events = make(
        [
            ("scenario-start", {"sc": "drop_safe_then_drop", "params": "-"}),
            ("scenario-end", {"sc": "drop_safe_then_drop", "outcome": "skipped"}),
            ("scenario-start", {"sc": "to_owned", "params": "-"}),
            ("scenario-end", {"sc": "to_owned", "outcome": "error"}),
        ]
    )
    events[3] = Event(4, "scenario-end", events[3].fields, "thread creation failed", events[3].line, 4)
    verdict = judge(events, ["drop_safe_then_drop"])
    assert [(item.name, item.status) for item in verdict.scenarios] == [
        ("drop_safe_then_drop", "skipped"),
        ("to_owned", "error"),
    ]
    assert "the driver could not run it: thread creation failed" in verdict.scenarios[1].findings[0].message
    assert "not requested, but it ran" in verdict.scenarios[1].notes


# -- text verdicts, findings --------------------------------------------------------------------------


def test_text_verdict_patterns_are_validated() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression: missing \\)"):
        TextVerdictConfig(passed="(", failed="x")


def test_text_verdicts_without_a_name_group_name_the_suite() -> None:
    reader = TextVerdictReader(
        TextVerdictConfig(
            suite="s", test_start="RUN (?P<name>\\w+)", passed="OK (?P<name>\\w+)", failed="FAIL"
        )
    )
    for number, line in enumerate(["RUN a", "OK a", "RUN b", "FAIL", "RUN c"], 1):
        reader.feed(line, number)
    outcomes = [
        (result.name, result.outcome, result.start_line, result.end_line) for result in reader.results()
    ]
    assert outcomes == [
        ("a", "passed", 1, 2),
        ("b", "failed", 3, 4),
        ("s", "failed", 4, 4),
        ("c", "started", 5, None),
    ]


def test_findings_neutralise_control_characters() -> None:
    finding = Finding("crash", "panic: \x1b[2Jgone\x07", ("line 1: \x1b]0;title\x07",))
    assert finding.message == "panic: \\x1b[2Jgone\\x07"
    assert finding.lines == ("line 1: \\x1b]0;title\\x07",)
    assert printable("x" * 500).endswith("[... 100 more characters]")


# -- the streaming entry points -----------------------------------------------------------------------


def test_feeding_events_one_by_one_equals_feeding_a_stream() -> None:
    sc = "kmutex_contention"
    events = make(
        [*lock(sc, 0, "m"), *unlock(sc, 0, "m"), *lock(sc, 1, "m"), *lock(sc, 0, "m"), *unlock(sc, 1, "m")]
    )
    events[1], events[2] = events[2], events[1]
    one = Judge()
    for event in events:
        one.feed(event)
    stream = Judge()
    stream.feed_all(events)
    assert one.finish().to_dict() == stream.finish().to_dict()
    assert "exclusion violated: t=0 acquired m (kmutex) while t=1 held it" in one.finish().render()


def test_judge_lines_merges_what_qemu_and_the_console_saw_of_one_crash() -> None:
    lines = (Path(__file__).resolve().parents[1] / "data" / "verdicts" / "crash_windows_kd.log").read_text()
    hv = crash_from_qmp(
        {"action": "pause", "info": {"type": "hyper-v", "arg1": 0xD1, "arg2": 1}}, screenshot="s.png"
    )
    verdict = judge_lines(lines.splitlines(), None, ["kmutex_contention"], [hv])
    (crash,) = verdict.crashes
    assert (crash.source, crash.code, crash.driver, crash.lineno, crash.screenshot) == (
        "kd",
        0xD1,
        "wdk_mutex_tests.sys",
        9,
        "s.png",
    )
    assert [item.status for item in verdict.scenarios] == ["crashed"]
