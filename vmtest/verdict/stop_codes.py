"""Windows stop (bugcheck) codes a driver developer meets, with the meaning of their parameters.

Names and parameters as Microsoft's "Bug check code reference" gives them
(https://learn.microsoft.com/windows-hardware/drivers/debugger/bug-check-code-reference2, one page per
code, ``.../debugger/bug-check-0x<code>--<name>``). A code with the
``0x10000000`` bit set is the same bugcheck raised with ``KeBugCheckEx`` extended flags (WinDbg's
``_M`` names, e.g. ``0x1000007E`` SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "EXCEPTION_CODES",
    "STOP_CODES",
    "StopCode",
    "describe_stop",
    "known_stop_code_name",
    "stop_code_by_name",
    "stop_code_name",
]

_EXTENDED = 0x10000000


@dataclass(frozen=True)
class StopCode:
    """One stop code: its number, its name and what its four parameters mean ("" when not useful)."""

    code: int
    name: str
    params: tuple[str, str, str, str] = ("", "", "", "")


_ACCESS = (
    "memory referenced",
    "IRQL",
    "operation (0 read, 1 write, 8 execute)",
    "address that referenced it",
)
# Bug Check 0xD1, parameter 3: "0 - Read, 1 - Write, 2 - Execute, 8 - Execute"
# (bug-check-0xd1--driver-irql-not-less-or-equal).
_DRIVER_ACCESS = (
    "memory referenced",
    "IRQL",
    "operation (0 read, 1 write, 2 or 8 execute)",
    "address that referenced it",
)
# Bug Check 0x39 names the worker routine that returned still owning a mutex, and its work item
# (bug-check-0x39--system-exit-owned-mutex); 0xE1, 0xE3, 0xE4, 0xEA as their pages list them.
_WORKER = ("worker routine", "parameter passed to the worker routine", "work item", "")
_EXCEPTION = ("exception code", "address of the exception", "parameter 0", "parameter 1")

STOP_CODES: Mapping[int, StopCode] = {
    row.code: row
    for row in (
        StopCode(
            0x1,
            "APC_INDEX_MISMATCH",
            ("system function", "APC state index", "APC disable count", "call type"),
        ),
        StopCode(0x9, "IRQL_NOT_GREATER_OR_EQUAL"),
        StopCode(0xA, "IRQL_NOT_LESS_OR_EQUAL", _ACCESS),
        StopCode(0xC, "MAXIMUM_WAIT_OBJECTS_EXCEEDED"),
        StopCode(0xD, "MUTEX_LEVEL_NUMBER_VIOLATION", ("current mutex level", "level to acquire", "", "")),
        StopCode(0x11, "THREAD_NOT_MUTEX_OWNER"),
        StopCode(0x19, "BAD_POOL_HEADER", ("violation type", "", "", "")),
        StopCode(0x1A, "MEMORY_MANAGEMENT", ("subtype", "", "", "")),
        StopCode(0x1E, "KMODE_EXCEPTION_NOT_HANDLED", _EXCEPTION),
        StopCode(0x20, "KERNEL_APC_PENDING_DURING_EXIT", ("APC address", "APC disable count", "IRQL", "")),
        StopCode(0x39, "SYSTEM_EXIT_OWNED_MUTEX", _WORKER),
        StopCode(
            0x3B, "SYSTEM_SERVICE_EXCEPTION", ("exception code", "instruction address", "context record", "")
        ),
        StopCode(0x3D, "INTERRUPT_EXCEPTION_NOT_HANDLED", ("exception record", "context record", "", "")),
        StopCode(0x44, "MULTIPLE_IRP_COMPLETE_REQUESTS", ("IRP address", "", "", "")),
        StopCode(0x49, "PAGE_FAULT_WITH_INTERRUPTS_OFF"),
        StopCode(0x4A, "IRQL_GT_ZERO_AT_SYSTEM_SERVICE", ("system function", "IRQL", "", "")),
        StopCode(0x4E, "PFN_LIST_CORRUPT"),
        StopCode(
            0x50,
            "PAGE_FAULT_IN_NONPAGED_AREA",
            ("memory referenced", "operation", "address that referenced it", ""),
        ),
        StopCode(0x7A, "KERNEL_DATA_INPAGE_ERROR"),
        StopCode(0x7B, "INACCESSIBLE_BOOT_DEVICE"),
        StopCode(
            0x7E,
            "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
            ("exception code", "address of the exception", "exception record", "context record"),
        ),
        StopCode(0x7F, "UNEXPECTED_KERNEL_MODE_TRAP", ("trap number (8: double fault)", "", "", "")),
        StopCode(0x80, "NMI_HARDWARE_FAILURE"),
        StopCode(
            0x8E,
            "KERNEL_MODE_EXCEPTION_NOT_HANDLED",
            ("exception code", "address of the exception", "trap frame", ""),
        ),
        StopCode(0x9F, "DRIVER_POWER_STATE_FAILURE", ("subtype", "", "", "")),
        StopCode(
            0xB8,
            "ATTEMPTED_SWITCH_FROM_DPC",
            ("original thread", "new thread", "original thread's stack", ""),
        ),
        StopCode(0xBE, "ATTEMPTED_WRITE_TO_READONLY_MEMORY", ("virtual address", "PTE", "", "")),
        StopCode(0xBF, "MUTEX_ALREADY_OWNED", ("mutex", "thread that tried to acquire it again", "", "")),
        StopCode(0xC1, "SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION"),
        StopCode(0xC2, "BAD_POOL_CALLER", ("violation type", "", "", "")),
        StopCode(0xC4, "DRIVER_VERIFIER_DETECTED_VIOLATION", ("violation type", "", "", "")),
        StopCode(
            0xC5,
            "DRIVER_CORRUPTED_EXPOOL",
            ("memory referenced", "IRQL", "operation (0 read, 1 write)", "address that referenced it"),
        ),
        StopCode(0xC7, "TIMER_OR_DPC_INVALID"),
        StopCode(0xC8, "IRQL_UNEXPECTED_VALUE"),
        StopCode(0xC9, "DRIVER_VERIFIER_IOMANAGER_VIOLATION", ("violation type", "", "", "")),
        StopCode(0xCB, "DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS"),
        StopCode(0xCC, "PAGE_FAULT_IN_FREED_SPECIAL_POOL"),
        StopCode(
            0xCE,
            "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
            ("memory referenced", "operation", "address that referenced it", ""),
        ),
        StopCode(0xD1, "DRIVER_IRQL_NOT_LESS_OR_EQUAL", _DRIVER_ACCESS),
        StopCode(0xD3, "DRIVER_PORTION_MUST_BE_NONPAGED", _ACCESS),
        StopCode(0xD5, "DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL"),
        StopCode(0xD6, "DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION"),
        StopCode(
            0xE1,
            "WORKER_THREAD_RETURNED_AT_BAD_IRQL",
            ("worker routine", "IRQL it returned at", "work item parameter", "work item"),
        ),
        StopCode(0xE2, "MANUALLY_INITIATED_CRASH"),
        StopCode(0xE3, "RESOURCE_NOT_OWNED", ("resource", "thread", "owner table (if any)", "")),
        StopCode(
            0xE4,
            "WORKER_INVALID",
            ("code position", "work item", "start of the pool block", "end of the pool block"),
        ),
        StopCode(
            0xEA,
            "THREAD_STUCK_IN_DEVICE_DRIVER",
            ("stuck thread", "DEFERRED_WATCHDOG object", "driver name", "times 0xEA was hit"),
        ),
        StopCode(0xEF, "CRITICAL_PROCESS_DIED", ("process", "", "", "")),
        StopCode(0xF4, "CRITICAL_OBJECT_TERMINATION"),
        StopCode(0xF7, "DRIVER_OVERRAN_STACK_BUFFER"),
        StopCode(0xFC, "ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY", ("virtual address", "PTE", "", "")),
        StopCode(0x101, "CLOCK_WATCHDOG_TIMEOUT", ("clock interrupt time-out (ticks)", "", "", "")),
        StopCode(0x109, "CRITICAL_STRUCTURE_CORRUPTION", ("", "", "", "type of corrupted region")),
        StopCode(0x124, "WHEA_UNCORRECTABLE_ERROR", ("error source", "WHEA_ERROR_RECORD", "", "")),
        StopCode(
            0x133,
            "DPC_WATCHDOG_VIOLATION",
            ("0: one DPC too long, 1: too long at DISPATCH_LEVEL", "time (ticks)", "limit (ticks)", ""),
        ),
        StopCode(
            0x139,
            "KERNEL_SECURITY_CHECK_FAILURE",
            ("type of corruption", "trap frame", "exception record", ""),
        ),
        StopCode(0x13A, "KERNEL_MODE_HEAP_CORRUPTION", ("type of corruption", "", "", "")),
    )
}
"""The table, by code."""

EXCEPTION_CODES: Mapping[int, str] = {
    0x80000002: "STATUS_DATATYPE_MISALIGNMENT",
    0x80000003: "STATUS_BREAKPOINT",
    0x80000004: "STATUS_SINGLE_STEP",
    0xC0000005: "STATUS_ACCESS_VIOLATION",
    0xC0000006: "STATUS_IN_PAGE_ERROR",
    0xC000001D: "STATUS_ILLEGAL_INSTRUCTION",
    0xC0000046: "STATUS_MUTANT_NOT_OWNED",
    0xC0000094: "STATUS_INTEGER_DIVIDE_BY_ZERO",
    0xC0000096: "STATUS_PRIVILEGED_INSTRUCTION",
    0xC00000FD: "STATUS_STACK_OVERFLOW",
    0xC0000409: "STATUS_STACK_BUFFER_OVERRUN",
    0xC0000420: "STATUS_ASSERTION_FAILURE",
}
"""NTSTATUS exception codes seen as the first parameter of the "exception not handled" bugchecks
(``STATUS_MUTANT_NOT_OWNED``: releasing a KMUTEX the thread does not own)."""

_BY_NAME = {row.name: row.code for row in STOP_CODES.values()}


def stop_code_name(code: int) -> str:
    """The stop code's name, or ``UNKNOWN_STOP_CODE``."""
    row = STOP_CODES.get(code & ~_EXTENDED)
    if row is None:
        return "UNKNOWN_STOP_CODE"
    return row.name + ("_M" if code & _EXTENDED else "")


def known_stop_code_name(code: int) -> str | None:
    """The name in this table (``_M`` for extended codes), or None if the code is not in it."""
    return None if STOP_CODES.get(code & ~_EXTENDED) is None else stop_code_name(code)


def stop_code_by_name(name: str) -> int | None:
    """The code of a stop code name (case-insensitive; ``_M`` names give the extended code)."""
    upper = name.strip().upper()
    if upper.endswith("_M") and upper[:-2] in _BY_NAME:
        return _BY_NAME[upper[:-2]] | _EXTENDED
    return _BY_NAME.get(upper)


def describe_stop(code: int, params: Sequence[int]) -> str:
    """``0xD1 DRIVER_IRQL_NOT_LESS_OR_EQUAL (memory referenced 0x0, IRQL 0x2, ...)``."""
    text = f"{code:#x} {stop_code_name(code)}"
    row = STOP_CODES.get(code & ~_EXTENDED)
    names = row.params if row is not None else ("", "", "", "")
    parts = []
    for index, value in enumerate(params[:4]):
        label = names[index] or f"parameter {index + 1}"
        part = f"{label} {value:#x}"
        status = value & 0xFFFFFFFF  # KD prints NTSTATUS sign-extended to 64 bits
        if label == "exception code" and status in EXCEPTION_CODES:
            part += f" {EXCEPTION_CODES[status]}"
        parts.append(part)
    return f"{text} ({', '.join(parts)})" if parts else text
