"""Bugchecks from QEMU's crash events, in the shapes QEMU documents, merged with the KD host's view.

Event shapes: python-apis.md §2.3 (QAPI GuestPanicInformationHyperV: arg1 = STOP code, arg2..arg5 =
its parameters; pvpanic gives no info; GUEST_CRASHLOADED once a dump is written).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import vmtest.machine
from vmtest.capture.kd.events import KdBugcheck, KdModule
from vmtest.machine.bugcheck import Bugcheck, bugcheck_from_qmp_event, merge_bugchecks
from vmtest.machine.monitor import QmpEvent
from vmtest.verdict.stop_codes import known_stop_code_name

NAMES = {0xD1: "DRIVER_IRQL_NOT_LESS_OR_EQUAL", 0x7E: "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"}


def name_for(code: int) -> str | None:
    """A stand-in name table: the merge takes any ``name_for`` (the default is vmtest's table)."""
    return NAMES.get(code)


def hyperv_panic(code: int = 0xD1, *params: int, action: str = "pause") -> QmpEvent:
    args = params or (0xFFFFF80012345678, 0x2, 0x0, 0xFFFFF80087654321)
    info = {"type": "hyper-v", "arg1": code, **{f"arg{i}": value for i, value in enumerate(args, start=2)}}
    # Exactly as it arrives: JSON decoded from QEMU's wire format.
    return QmpEvent("GUEST_PANICKED", json.loads(json.dumps({"action": action, "info": info})))


def kd_bugcheck(
    code: int | None = 0xD1, parameters: tuple[int, ...] = (), driver: str | None = "mydrv.sys"
) -> KdBugcheck:
    modules = (
        KdModule("ntoskrnl.exe", r"\SystemRoot\system32\ntoskrnl.exe", 0xFFFFF80000000000, 0x1000000, 0),
        KdModule("mydrv.sys", r"\??\C:\vmtest\run\mydrv.sys", 0xFFFFF80012340000, 0x10000, 0),
    )
    return KdBugcheck(
        time=1.0,
        code=code,
        parameters=parameters,
        driver=driver,
        modules=modules,
        processor=0,
        thread=0,
        program_counter=0,
        break_status=3,
        source="banner",
        held=True,
    )


# ------------------------------------------------------------------------------------------ from QMP


def test_hyperv_crash_information_gives_the_stop_code_and_four_parameters() -> None:
    bugcheck = bugcheck_from_qmp_event(hyperv_panic(), name_for=name_for)
    assert bugcheck == Bugcheck(
        code=0xD1,
        parameters=(0xFFFFF80012345678, 0x2, 0x0, 0xFFFFF80087654321),
        name="DRIVER_IRQL_NOT_LESS_OR_EQUAL",
        sources=("qmp",),
        event="GUEST_PANICKED",
        action="pause",
    )
    assert bugcheck.summary == (
        "stop code 0x000000D1 DRIVER_IRQL_NOT_LESS_OR_EQUAL (0xFFFFF80012345678, 0x0000000000000002, "
        "0x0000000000000000, 0xFFFFF80087654321)"
    )


def test_names_come_from_the_stop_code_table_the_caller_passes() -> None:
    bugcheck = bugcheck_from_qmp_event(hyperv_panic(0xD1), name_for=known_stop_code_name)
    assert bugcheck is not None and bugcheck.name == "DRIVER_IRQL_NOT_LESS_OR_EQUAL"
    extended = bugcheck_from_qmp_event(hyperv_panic(0x1000007E), name_for=known_stop_code_name)
    assert extended is not None and extended.name == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    assert known_stop_code_name(0x12345) is None
    unnamed = bugcheck_from_qmp_event(hyperv_panic(0xD1))
    assert unnamed is not None and unnamed.name is None and unnamed.code == 0xD1


def test_machine_does_not_import_the_verdict_layer() -> None:
    # Issue 15.3: machine/ is below verdict/; the stop-code table reaches it only as a callable.
    machine = Path(vmtest.machine.__file__).parent
    offenders = []
    for source in sorted(machine.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{source.name}: {name}" for name in names if name.startswith("vmtest.verdict")]
    assert offenders == []


def test_an_unknown_code_is_still_reported_without_a_name() -> None:
    bugcheck = bugcheck_from_qmp_event(hyperv_panic(0x12345))
    assert bugcheck is not None and bugcheck.code == 0x12345 and bugcheck.name is None
    assert bugcheck.summary.startswith("stop code 0x00012345 (")


def test_uint64_arguments_keep_their_full_width() -> None:
    bugcheck = bugcheck_from_qmp_event(hyperv_panic(0xC000021A, 0xFFFFFFFFFFFFFFFF, 1, 2, 3))
    assert bugcheck is not None and bugcheck.code == 0xC000021A
    assert bugcheck.parameters == (0xFFFFFFFFFFFFFFFF, 1, 2, 3)


def test_to_dict_shows_hex_as_people_read_stop_codes() -> None:
    bugcheck = bugcheck_from_qmp_event(hyperv_panic(), name_for=name_for)
    assert bugcheck is not None
    data = bugcheck.to_dict()
    assert data["code"] == "0x000000D1" and data["parameters"][0] == "0xFFFFF80012345678"
    assert json.loads(json.dumps(data)) == data


def test_a_pvpanic_panic_has_no_code() -> None:
    bugcheck = bugcheck_from_qmp_event(QmpEvent("GUEST_PANICKED", {"action": "pause"}))
    assert bugcheck is not None
    assert bugcheck.code is None and bugcheck.parameters == ()
    assert bugcheck.summary == "stop code unknown"
    assert "kernel debugger" in bugcheck.notes[0]


def test_crashloaded_announces_a_dump_it_does_not_confirm_one() -> None:
    # pvpanic.rst: CRASH_LOADED: "a guest panic has happened and will be handled by the guest".
    bugcheck = bugcheck_from_qmp_event(QmpEvent("GUEST_CRASHLOADED", {"action": "run"}))
    assert bugcheck is not None
    assert bugcheck.dump_pending and bugcheck.code is None and bugcheck.action == "run"
    assert bugcheck.summary == "crash dump announced, stop code unknown"
    assert "will be written, not that it was" in bugcheck.notes[0]
    assert "written" not in bugcheck.summary


def test_other_events_are_not_bugchecks() -> None:
    assert bugcheck_from_qmp_event(QmpEvent("STOP", {})) is None
    assert bugcheck_from_qmp_event(QmpEvent("SHUTDOWN", {"guest": True, "reason": "guest-panic"})) is None


def test_crash_information_of_another_kind_is_not_read_as_a_stop_code() -> None:
    event = QmpEvent("GUEST_PANICKED", {"action": "pause", "info": {"type": "s390", "core": 0}})
    bugcheck = bugcheck_from_qmp_event(event)
    assert bugcheck is not None and bugcheck.code is None and "s390" in bugcheck.notes[0]


@pytest.mark.parametrize(
    "info",
    [
        {"type": "hyper-v", "arg1": 0xD1, "arg2": 1, "arg3": 2},  # parameters missing
        {"type": "hyper-v", "arg1": 0xD1, "arg2": True, "arg3": 2, "arg4": 3, "arg5": 4},  # not a number
    ],
)
def test_incomplete_parameters_are_dropped_with_a_note(info: dict[str, object]) -> None:
    bugcheck = bugcheck_from_qmp_event(QmpEvent("GUEST_PANICKED", {"action": "pause", "info": info}))
    assert bugcheck is not None and bugcheck.code == 0xD1 and bugcheck.parameters == ()
    assert "arg2..arg5" in bugcheck.notes[0]


# ------------------------------------------------------------------------------------------ merging


def test_qemu_and_the_kd_host_together() -> None:
    qmp = bugcheck_from_qmp_event(hyperv_panic())
    merged = merge_bugchecks(qmp, kd_bugcheck(), name_for=name_for)
    assert merged is not None
    assert merged.code == 0xD1 and merged.name == "DRIVER_IRQL_NOT_LESS_OR_EQUAL"
    assert merged.parameters == (0xFFFFF80012345678, 0x2, 0x0, 0xFFFFF80087654321)
    assert merged.driver == "mydrv.sys" and merged.modules == ("ntoskrnl.exe", "mydrv.sys")
    assert merged.sources == ("qmp", "kd") and merged.event == "GUEST_PANICKED" and merged.notes == ()
    assert merged.summary.endswith("in mydrv.sys")


def test_qemus_code_wins_a_disagreement_which_is_noted() -> None:
    qmp = bugcheck_from_qmp_event(hyperv_panic(0xD1))
    merged = merge_bugchecks(qmp, kd_bugcheck(0x7E, (1, 2, 3, 4)), name_for=name_for)
    assert merged is not None and merged.code == 0xD1 and merged.parameters[1] == 2
    assert any("0x0000007E" in note for note in merged.notes)
    assert any("parameters" in note for note in merged.notes)


def test_the_kd_host_fills_in_what_pvpanic_cannot_say() -> None:
    pvpanic = bugcheck_from_qmp_event(QmpEvent("GUEST_PANICKED", {"action": "pause"}))
    merged = merge_bugchecks(pvpanic, kd_bugcheck(0x7E, (5, 6, 7, 8)), name_for=name_for)
    assert merged is not None
    assert (merged.code, merged.parameters, merged.name) == (
        0x7E,
        (5, 6, 7, 8),
        "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
    )
    assert merged.sources == ("qmp", "kd")


def test_only_the_kd_host_saw_it() -> None:
    merged = merge_bugchecks(None, kd_bugcheck(0x7E, (5, 6, 7, 8)), name_for=name_for)
    assert merged is not None and merged.sources == ("kd",) and merged.event is None
    assert merged.name == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED" and merged.driver == "mydrv.sys"


def test_only_qemu_saw_it_and_nobody_saw_anything() -> None:
    merged = merge_bugchecks(bugcheck_from_qmp_event(hyperv_panic(0x7E)), None, name_for=name_for)
    assert merged is not None and merged.name == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"
    assert merged.sources == ("qmp",)
    assert merge_bugchecks(None, None) is None


def test_a_kd_bugcheck_without_a_code() -> None:
    merged = merge_bugchecks(None, kd_bugcheck(None, (), None), name_for=name_for)
    assert merged is not None and merged.code is None and merged.name is None
    assert merged.summary == "stop code unknown"
