"""What a probe is made of: checks of Windows (or Linux) assumptions, and what each one observed.

A :class:`Check` states one assumption vmtest relies on and the observation that confirms it; running
it gives an :class:`Observation` with the raw outputs it saw. The rows of the Windows behaviour table
(``docs/WINDOWS.md``) a check confirms or corrects are named in ``Check.rows``, so a maintainer can
update the table from a report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Check", "Observation", "RawOutput", "Status"]


class Status(str, enum.Enum):
    """How an observation compares with the assumption."""

    AS_EXPECTED = "as-expected"
    """The guest behaves as vmtest assumes."""
    HANDLED = "differs-handled"
    """The guest differs from the documented default, and vmtest copes with it: nothing to do."""
    DIFFERS = "differs"
    """The assumption does not hold: a run that depends on it would fail or judge wrongly."""
    FAILED = "probe-failed"
    """The probe itself could not observe anything (a command that could not run, a deadline)."""
    NOT_RUN = "not-run"
    """Not applicable to this configuration (for example DebugView when kernel debugging is used)."""


@dataclass(frozen=True)
class RawOutput:
    """One command the probe ran, and what came back, decoded with the guest's code page."""

    command: str
    exit_code: int | None
    output: str
    encoding: str

    def to_dict(self) -> dict[str, object]:
        """Plain data for the JSON report."""
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "output": self.output,
            "encoding": self.encoding,
        }


@dataclass(frozen=True)
class Check:
    """One assumption vmtest makes about the guest, and how the probe confirms it.

    ``needed_by_run`` marks the assumptions a ``vmtest run`` with this configuration depends on: one
    that does not hold stops the run before its scenarios, with the fidelity report.
    """

    id: str
    title: str
    assumption: str
    expected: str
    rows: tuple[str, ...] = ()
    needed_by_run: bool = False


@dataclass(frozen=True)
class Observation:
    """What one check saw: the verdict against the assumption, in words, with the raw outputs."""

    check: Check
    status: Status
    observed: str
    advice: str = ""
    raw: tuple[RawOutput, ...] = field(default_factory=tuple)

    @property
    def blocks_run(self) -> bool:
        """A run with this configuration cannot be trusted while this holds."""
        return self.check.needed_by_run and self.status in (Status.DIFFERS, Status.FAILED)

    def to_dict(self) -> dict[str, object]:
        """Plain data for the JSON report."""
        return {
            "id": self.check.id,
            "title": self.check.title,
            "assumption": self.check.assumption,
            "expected": self.check.expected,
            "rows": list(self.check.rows),
            "needed_by_run": self.check.needed_by_run,
            "status": self.status.value,
            "observed": self.observed,
            "advice": self.advice,
            "raw": [item.to_dict() for item in self.raw],
        }
