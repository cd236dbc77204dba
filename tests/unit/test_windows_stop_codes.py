"""The stop-code table against Microsoft's bug-check reference (one page per code, cited in stop_codes.py)."""

from __future__ import annotations

import pytest

from vmtest.verdict.stop_codes import STOP_CODES, describe_stop, known_stop_code_name, stop_code_by_name

# (code, name, parameter 1 .. 4 as the page lists them): Microsoft Learn, "Bug Check 0x..: NAME".
DOCUMENTED = [
    (0x0C, "MAXIMUM_WAIT_OBJECTS_EXCEEDED", ("", "", "", "")),
    (0x39, "SYSTEM_EXIT_OWNED_MUTEX", ("worker routine", "parameter passed to the worker routine",
                                       "work item", "")),
    (0xBF, "MUTEX_ALREADY_OWNED", ("mutex", "thread that tried to acquire it again", "", "")),
    (0xE1, "WORKER_THREAD_RETURNED_AT_BAD_IRQL", ("worker routine", "IRQL it returned at",
                                                  "work item parameter", "work item")),
    (0xE3, "RESOURCE_NOT_OWNED", ("resource", "thread", "owner table (if any)", "")),
    (0xE4, "WORKER_INVALID", ("code position", "work item", "start of the pool block",
                              "end of the pool block")),
    (0xEA, "THREAD_STUCK_IN_DEVICE_DRIVER", ("stuck thread", "DEFERRED_WATCHDOG object", "driver name",
                                             "times 0xEA was hit")),
]  # fmt: skip


@pytest.mark.parametrize(("code", "name", "params"), DOCUMENTED)
def test_the_codes_a_mutex_driver_meets_are_in_the_table(
    code: int, name: str, params: tuple[str, str, str, str]
) -> None:
    assert STOP_CODES[code].name == name
    assert STOP_CODES[code].params == params
    assert stop_code_by_name(name) == code
    assert known_stop_code_name(code | 0x10000000) == f"{name}_M"


def test_driver_irql_not_less_or_equal_reads_its_execute_operation() -> None:
    # 0xD1 parameter 3: "0 - Read, 1 - Write, 2 - Execute, 8 - Execute".
    text = describe_stop(0xD1, (0x10, 2, 2, 0xFFFFF800))
    assert "IRQL 0x2" in text
    assert "operation (0 read, 1 write, 2 or 8 execute) 0x2" in text


def test_mutex_already_owned_names_the_thread_that_tried_again_not_the_owner() -> None:
    text = describe_stop(0xBF, (0xFFFF1000, 0xFFFF2000, 0, 0))
    assert "thread that tried to acquire it again 0xffff2000" in text
    assert "owning thread" not in text


def test_unknown_codes_have_no_name() -> None:
    assert known_stop_code_name(0x12345) is None
