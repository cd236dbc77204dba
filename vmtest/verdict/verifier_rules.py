"""Driver Verifier, as data: its options (flags and Windows 11 rule classes) and the violations it reports.

Sources (Microsoft Learn, windows-driver-docs):

* "Driver Verifier Command Syntax" (devtest/verifier-command-line): the ``/flags`` bits, the Windows 11
  standard and additional rule classes and which of them ``/dif ... /now`` enables without a reboot.
* "Using Volatile Settings" (devtest/using-volatile-settings): as of Windows 11 only the flags 0x4,
  0x20 (deadlock detection), 0x80, 0x200 and 0x400 can be set with ``/volatile``; every other change
  takes effect at the next boot.
* "Bug Check 0xC4: DRIVER_VERIFIER_DETECTED_VIOLATION" (debugger/bug-check-0xc4--driver-verifier-
  detected-violation): parameter 1 is the violation; the table gives the other parameters' meaning.
  0x1000-0x100B occur "only when the Deadlock Detection option of Driver Verifier is active".
* Bug checks 0xC1 SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION, 0xC9 DRIVER_VERIFIER_IOMANAGER_VIOLATION and
  0xE6 DRIVER_VERIFIER_DMA_VIOLATION are raised by the Special Pool, I/O Verification and DMA Checking
  options (their bug-check pages).

Which option raised a 0xC4 subcode is the documentation's word for 0x1000-0x100B and the pool
tracking rows; for the IRQL rows (0x30-0x42, 0x120-0x122) it is our attribution to Force IRQL
Checking, marked ``attributed`` below, since the table names no option for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "OPTIONS",
    "STANDARD_FLAGS",
    "VERIFIER_STOP_CODES",
    "VerifierOption",
    "Violation",
    "decode_violation",
    "option_by_name",
    "violation_names",
]


@dataclass(frozen=True)
class VerifierOption:
    """One Driver Verifier option: its ``/flags`` bit and whether it can start without a reboot."""

    name: str
    title: str
    flag: int
    rule_class: int | None
    volatile: bool
    """Settable with ``verifier /volatile /flags`` on Windows 11 (takes effect at once)."""
    label: str = ""
    """Its line in ``verifier /querysettings`` where that differs from ``title``."""

    @property
    def setting(self) -> str:
        """The name ``verifier /querysettings`` prints for it."""
        return self.label or self.title


OPTIONS: tuple[VerifierOption, ...] = (
    VerifierOption("special_pool", "Special pool", 0x1, 1, False),
    VerifierOption("irql_checking", "Force IRQL checking", 0x2, 2, False),
    VerifierOption(
        "low_resources", "Randomized low resources simulation", 0x4, 3, True, "Low resources simulation"
    ),
    VerifierOption("pool_tracking", "Pool tracking", 0x8, 4, False),
    VerifierOption("io_verification", "I/O verification", 0x10, 5, False),
    VerifierOption("deadlock_detection", "Deadlock detection", 0x20, 6, True),
    VerifierOption("dma_checking", "DMA checking", 0x80, 8, True),
    VerifierOption("security_checks", "Security checks", 0x100, 9, False),
    VerifierOption("force_pending_io", "Force pending I/O requests", 0x200, 10, True),
    VerifierOption("irp_logging", "IRP logging", 0x400, 11, True),
    VerifierOption("miscellaneous_checks", "Miscellaneous checks", 0x800, 12, False),
    VerifierOption("ddi_compliance", "DDI compliance checking", 0x20000, 18, False),
)
"""The options vmtest can ask for, by the name a configuration uses."""

STANDARD_FLAGS = 0x209BB
"""``verifier /standard``: special pool, IRQL checking, pool tracking, I/O verification, deadlock
detection, DMA checking, security checks, miscellaneous checks, DDI compliance checking (the "Standard
Setting" column of the ``/flags`` table)."""

_BY_NAME = {option.name: option for option in OPTIONS}


def option_by_name(name: str) -> VerifierOption | None:
    """The option called ``name`` (``deadlock_detection``), or None."""
    return _BY_NAME.get(name.strip().lower().replace("-", "_").replace(" ", "_"))


@dataclass(frozen=True)
class Violation:
    """One violation Driver Verifier reports with a bug check: which option caught what."""

    code: int
    subcode: int | None
    option: str
    name: str
    meaning: str
    params: tuple[str, str, str] = ("", "", "")
    """What parameters 2-4 hold."""
    attributed: bool = False
    """The option is our attribution, not the documentation's (see the module's docstring)."""

    def describe(self, params: Sequence[int] = ()) -> str:
        """``Driver Verifier, deadlock detection: lock hierarchy violation (0x1001); resource 0x...``."""
        option = option_by_name(self.option)
        title = option.title if option is not None else self.option.replace("_", " ")
        where = f"{self.subcode:#x}" if self.subcode is not None else f"bug check {self.code:#x}"
        text = f"Driver Verifier, {title[0].lower()}{title[1:]}: {self.meaning} ({where})"
        details = [
            f"{label} {value:#x}" for label, value in zip(self.params, params[1:4], strict=False) if label
        ]
        return f"{text}; {', '.join(details)}" if details else text


_C4 = 0xC4
VIOLATIONS: tuple[Violation, ...] = (
    Violation(_C4, 0x00, "pool_tracking", "zero_byte_allocation", "zero-byte pool allocation",
              ("current IRQL", "pool type", "")),
    Violation(_C4, 0x01, "irql_checking", "paged_alloc_above_apc", "paged pool allocated at IRQL > APC_LEVEL",
              ("current IRQL", "pool type", "size in bytes"), attributed=True),
    Violation(_C4, 0x30, "irql_checking", "bad_raise_irql", "KeRaiseIrql to a lower or invalid IRQL",
              ("current IRQL", "requested IRQL", ""), attributed=True),
    Violation(_C4, 0x31, "irql_checking", "bad_lower_irql", "KeLowerIrql to a higher or invalid IRQL",
              ("current IRQL", "requested IRQL", ""), attributed=True),
    Violation(_C4, 0x32, "irql_checking", "spinlock_release_irql",
              "KeReleaseSpinLock at an IRQL other than DISPATCH_LEVEL (a double release?)",
              ("current IRQL", "spin lock address", ""), attributed=True),
    Violation(_C4, 0x33, "irql_checking", "fast_mutex_acquire_irql",
              "fast mutex acquired at IRQL > APC_LEVEL",
              ("current IRQL", "fast mutex address", ""), attributed=True),
    Violation(_C4, 0x34, "irql_checking", "fast_mutex_release_irql",
              "fast mutex released at an IRQL other than APC_LEVEL",
              ("current IRQL", "fast mutex address", ""), attributed=True),
    Violation(_C4, 0x39, "irql_checking", "unsafe_mutex_acquire_irql",
              "mutex acquired \"unsafe\" with IRQL not APC_LEVEL on entry",
              ("current IRQL", "thread APC disable count", "mutex"), attributed=True),
    Violation(_C4, 0x3A, "irql_checking", "unsafe_mutex_release_irql",
              "mutex released \"unsafe\" with IRQL not APC_LEVEL on entry",
              ("current IRQL", "thread APC disable count", "mutex"), attributed=True),
    Violation(_C4, 0x3E, "miscellaneous_checks", "leave_critical_region_unbalanced",
              "KeLeaveCriticalRegion for a thread not in a critical region", attributed=True),
    Violation(_C4, 0x40, "irql_checking", "spinlock_at_dpc_below_dispatch",
              "KeAcquireSpinLockAtDpcLevel with IRQL < DISPATCH_LEVEL",
              ("current IRQL", "spin lock address", ""), attributed=True),
    Violation(_C4, 0x42, "irql_checking", "spinlock_above_dispatch",
              "KeAcquireSpinLock with IRQL > DISPATCH_LEVEL",
              ("current IRQL", "spin lock address", ""), attributed=True),
    Violation(_C4, 0x62, "pool_tracking", "unload_with_allocations",
              "driver unloading without freeing its pool allocations",
              ("name of the driver", "", "allocations not freed")),
    Violation(_C4, 0x120, "irql_checking", "wait_above_dispatch", "wait at IRQL > DISPATCH_LEVEL",
              ("address of the IRQL value", "object waited on", "timeout address"), attributed=True),
    Violation(_C4, 0x121, "irql_checking", "wait_at_dispatch_no_timeout",
              "wait at DISPATCH_LEVEL with a NULL timeout",
              ("address of the IRQL value", "object waited on", "timeout address"), attributed=True),
    Violation(_C4, 0x122, "irql_checking", "wait_at_dispatch_with_timeout",
              "wait at DISPATCH_LEVEL with a non-zero timeout",
              ("address of the IRQL value", "object waited on", "timeout address"), attributed=True),
    Violation(_C4, 0x1000, "deadlock_detection", "self_deadlock",
              "self-deadlock: a resource acquired recursively", ("resource address", "", "")),
    Violation(_C4, 0x1001, "deadlock_detection", "lock_hierarchy_violation",
              "lock-order violation", ("resource that caused the deadlock", "", "")),
    Violation(_C4, 0x1002, "deadlock_detection", "uninitialized_resource",
              "a resource acquired before it was initialized", ("resource address", "", "")),
    Violation(_C4, 0x1003, "deadlock_detection", "unexpected_release",
              "a resource released in the wrong order",
              ("resource released", "resource that should have been released first", "")),
    Violation(_C4, 0x1004, "deadlock_detection", "unexpected_thread",
              "a resource released by another thread than the one that acquired it",
              ("resource address", "thread that acquired it", "current thread")),
    Violation(_C4, 0x1005, "deadlock_detection", "multiple_initialization",
              "a resource initialized more than once", ("resource address", "", "")),
    Violation(_C4, 0x1007, "deadlock_detection", "unacquired_resource",
              "a resource released before it was acquired", ("resource address", "", "")),
    Violation(_C4, 0x1008, "deadlock_detection", "mismatched_acquire_api",
              "a lock acquired with an API meant for another lock type", ("lock address", "", "")),
    Violation(_C4, 0x1009, "deadlock_detection", "mismatched_release_api",
              "a lock released with an API meant for another lock type", ("lock address", "", "")),
    Violation(_C4, 0x100A, "deadlock_detection", "terminated_thread_owns_lock",
              "a terminated thread still owns a lock", ("owner thread", "", "")),
    Violation(_C4, 0x100B, "deadlock_detection", "deleted_lock_owned",
              "a deleted lock is still owned", ("lock address", "owner thread", "")),
    Violation(0xC1, None, "special_pool", "special_pool_corruption",
              "special pool detected memory corruption"),
    Violation(0xC9, None, "io_verification", "io_manager_violation", "I/O manager violation"),
    Violation(0xE6, None, "dma_checking", "dma_violation", "DMA violation"),
)  # fmt: skip
"""Every violation vmtest names, from the bug-check pages (parameters 2-4 as documented)."""

VERIFIER_STOP_CODES = frozenset(violation.code for violation in VIOLATIONS)
"""Bug checks only Driver Verifier raises."""

_BY_CODE = {(violation.code, violation.subcode): violation for violation in VIOLATIONS}
_DDI_COMPLIANCE = range(0x20002, 0x20023)  # "DDI compliance bugs - 0x20002 - 0x20022" (0xC4 debugging page)


def decode_violation(code: int, params: Sequence[int]) -> Violation | None:
    """The Verifier violation a bug check reports, or None when it is not a Verifier bug check."""
    code &= ~0x10000000  # the _M (extended) form of a code reports the same violation
    if code not in VERIFIER_STOP_CODES:
        return None
    subcode = params[0] if params else None
    known = _BY_CODE.get((code, subcode)) or _BY_CODE.get((code, None))
    if known is not None:
        return known
    if code == _C4 and subcode is not None and subcode in _DDI_COMPLIANCE:
        return Violation(
            _C4, subcode, "ddi_compliance", "ddi_compliance_rule", "DDI compliance rule violated"
        )
    return Violation(
        code, subcode, "unknown", "unlisted_violation", "a violation vmtest's table does not list"
    )


def violation_names() -> frozenset[str]:
    """The names ``expected_crashes`` may give for a violation (``lock_hierarchy_violation``)."""
    return frozenset(violation.name for violation in VIOLATIONS)
