"""What the KD host reports: printed lines, module loads, bugchecks, stalls and link statistics.

Every event is a frozen dataclass with ``time``, the host's wall clock (``time.time()``) when the event
happened; for a printed line, when its first byte arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BugcheckSource",
    "KdBugcheck",
    "KdEvent",
    "KdLinkStats",
    "KdModule",
    "KdModuleLoad",
    "KdPrint",
    "KdStalled",
]

BugcheckSource = Literal["banner", "kdbg", "break-status"]
"""Where a bugcheck's code came from: the "*** Fatal System Error" print (§5.7A), KiBugCheckData read
over KD (§5.7B), or only the break status in RCX, when neither gave the code."""


@dataclass(frozen=True, slots=True)
class KdModule:
    """A driver image the target reported through a load-symbols state change (§6.1)."""

    name: str
    path: str
    base: int
    size: int
    checksum: int


@dataclass(frozen=True, slots=True)
class KdPrint:
    """One line of DbgPrint output, without its newline."""

    time: float
    text: str


@dataclass(frozen=True, slots=True)
class KdModuleLoad:
    """A driver image loaded, or unloaded when ``unload`` (base ``UNLOAD_ALL_BASE``: all of them)."""

    time: float
    module: KdModule
    unload: bool


@dataclass(frozen=True, slots=True)
class KdBugcheck:
    """A bugcheck: its code and parameters, the driver Windows blamed, the modules loaded at the time.

    ``break_status`` is RCX at the break (3: first bugcheck break, §5.7) when the context was read;
    ``held`` says the guest was left stopped there rather than continued.
    """

    time: float
    code: int | None
    parameters: tuple[int, ...]
    driver: str | None
    modules: tuple[KdModule, ...]
    processor: int
    thread: int
    program_counter: int
    break_status: int | None
    source: BugcheckSource
    held: bool

    @property
    def summary(self) -> str:
        """One line: ``0x000000D1 (0x..., 0x..., 0x..., 0x...) in mydrv.sys``."""
        code = "unknown code" if self.code is None else f"0x{self.code:08X}"
        params = f" ({', '.join(f'0x{p:016X}' for p in self.parameters)})" if self.parameters else ""
        driver = f" in {self.driver}" if self.driver else ""
        return f"{code}{params}{driver}"


@dataclass(frozen=True, slots=True)
class KdStalled:
    """The target did not answer within its deadline while a reply was due; the host carries on."""

    time: float
    waiting_for: str
    silent_for: float


@dataclass(frozen=True, slots=True)
class KdLinkStats:
    """Counters of the serial link; emitted when the capture ends, and readable at any time."""

    time: float
    bytes_received: int
    bytes_sent: int
    junk_bytes: int
    packets_received: int
    duplicates: int
    corrupt_frames: int
    acks_sent: int
    resends_sent: int
    resends_received: int
    resets_sent: int
    resets_received: int
    retransmissions: int
    breakins_sent: int


KdEvent = KdPrint | KdModuleLoad | KdBugcheck | KdStalled | KdLinkStats
