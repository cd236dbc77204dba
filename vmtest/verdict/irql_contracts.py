"""The IRQL contract table of wdk-mutex: for each (operation, mutex kind), what a call must return.

This is the one place the contracts live; the contracts check reads it, tests read it, and every row
says where the rule is documented. "API notes" is ``wdk-mutex-api.md`` (the project's notes on the
crate, version 1.3.2); the crate source files are those of 0xflux/wdk-mutex. The Linux test module
mirrors the same table with its context numbers (``drivers/PROTOCOL.md``, key ``irql``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["IRQL_CONTRACTS", "IRQL_NAMES", "IrqlContract", "contract_for", "irql_name"]

PASSIVE_LEVEL, APC_LEVEL, DISPATCH_LEVEL = 0, 1, 2

IRQL_NAMES: Mapping[int, str] = {
    PASSIVE_LEVEL: "PASSIVE_LEVEL",
    APC_LEVEL: "APC_LEVEL",
    DISPATCH_LEVEL: "DISPATCH_LEVEL",
    12: "SYNCH_LEVEL",
    13: "CLOCK_LEVEL",
    14: "IPI_LEVEL",
    15: "HIGH_LEVEL",
}
"""x64 IRQL names (3..11 are device IRQLs)."""


def irql_name(irql: int) -> str:
    """``2 (DISPATCH_LEVEL)``."""
    name = IRQL_NAMES.get(irql)
    return f"{irql} ({name})" if name else str(irql)


@dataclass(frozen=True)
class IrqlContract:
    """One row: the call proceeds at ``lowest <= IRQL <= highest`` and returns one of ``results``.

    At any other IRQL it returns ``error`` without doing anything.
    """

    op: str
    kind: str
    highest: int | None
    """None: no upper limit."""
    lowest: int
    error: str
    results: frozenset[str]
    source: str
    """Where the rule is documented."""

    def expected(self, irql: int) -> frozenset[str]:
        """The results allowed for a call at ``irql``."""
        if irql < self.lowest or (self.highest is not None and irql > self.highest):
            return frozenset({self.error})
        return self.results

    def describe(self) -> str:
        """The rule in words: ``proceeds at IRQL <= 1 (APC_LEVEL), else IrqlTooHigh``."""
        if self.highest is None:
            where = "at any IRQL"
        elif self.lowest == self.highest:
            where = f"only at IRQL {irql_name(self.lowest)}"
        elif self.lowest > 0:
            where = f"at IRQL {irql_name(self.lowest)} to {irql_name(self.highest)}"
        else:
            where = f"at IRQL <= {irql_name(self.highest)}"
        otherwise = f", else {self.error}" if self.highest is not None else ""
        return f"{self.op} on {self.kind} proceeds {where}{otherwise}"


_OK = frozenset({"Ok"})
_ALLOCATES = frozenset({"Ok", "PagedPoolAllocFailed"})

IRQL_CONTRACTS: tuple[IrqlContract, ...] = (
    IrqlContract(
        "lock",
        "kmutex",
        APC_LEVEL,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "KMutex<T>": lock returns IrqlTooHigh when the IRQL is above APC_LEVEL '
        "(src/kmutex.rs KMutex::lock)",
    ),
    IrqlContract(
        "lock",
        "fast_mutex",
        APC_LEVEL,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "FastMutex<T>": lock returns IrqlTooHigh above APC_LEVEL '
        "(src/fast_mutex.rs FastMutex::lock)",
    ),
    IrqlContract(
        "drop_safe",
        "kmutex",
        DISPATCH_LEVEL,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "KMutexGuard": drop_safe returns IrqlTooHigh above DISPATCH_LEVEL '
        "(src/kmutex.rs KMutexGuard::drop_safe)",
    ),
    IrqlContract(
        "drop_safe",
        "fast_mutex",
        APC_LEVEL,
        APC_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "FastMutex<T>": FastMutexGuard::drop_safe returns IrqlTooHigh unless the IRQL is exactly '
        "APC_LEVEL (src/fast_mutex.rs FastMutexGuard::drop_safe)",
    ),
    IrqlContract(
        "new",
        "fast_mutex",
        DISPATCH_LEVEL,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _ALLOCATES,
        'API notes "FastMutex<T>": new returns IrqlTooHigh above DISPATCH_LEVEL, PagedPoolAllocFailed when '
        "the non-paged allocation fails (src/fast_mutex.rs FastMutex::new)",
    ),
    IrqlContract(
        "new",
        "kmutex",
        None,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _ALLOCATES,
        'API notes "KMutex<T>": new is callable at any IRQL; PagedPoolAllocFailed on a null allocation '
        "(src/kmutex.rs KMutex::new)",
    ),
    IrqlContract(
        "to_owned",
        "kmutex",
        None,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "KMutex<T>": to_owned moves the data out, no error exists (the driver reports r=Ok)',
    ),
    IrqlContract(
        "to_owned",
        "fast_mutex",
        None,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "FastMutex<T>": to_owned "as for KMutex", no error exists (the driver reports r=Ok)',
    ),
    IrqlContract(
        "to_owned_box",
        "kmutex",
        None,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "KMutex<T>": to_owned_box moves the data into a Box, no error exists (r=Ok)',
    ),
    IrqlContract(
        "to_owned_box",
        "fast_mutex",
        None,
        PASSIVE_LEVEL,
        "IrqlTooHigh",
        _OK,
        'API notes "FastMutex<T>": to_owned_box "as for KMutex", no error exists (r=Ok)',
    ),
)
"""The table. ``drop`` and ``wait`` are absent on purpose: what the OS does is the finding."""

_INDEX: Mapping[tuple[str, str], IrqlContract] = {(row.op, row.kind): row for row in IRQL_CONTRACTS}


def contract_for(op: str, kind: str) -> IrqlContract | None:
    """The row for ``op`` on ``kind``, if the table has one."""
    return _INDEX.get((op, kind))
