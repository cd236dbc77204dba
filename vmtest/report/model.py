"""What every report is made from: one run's verdicts, with where its evidence lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FindingReport", "RunReport", "ScenarioReport"]


@dataclass(frozen=True)
class FindingReport:
    """One failed check: which check, what it says, the captured lines it quotes."""

    check: str
    message: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScenarioReport:
    """One scenario's verdict."""

    name: str
    status: str
    findings: tuple[FindingReport, ...] = ()
    duration: float = 0.0

    @property
    def passed(self) -> bool:
        """True for a pass (a skip is not a failure either)."""
        return self.status in ("passed", "skipped")


@dataclass
class RunReport:
    """A whole run, ready to be rendered."""

    run_dir: Path
    driver: str
    guest: str
    scenarios: list[ScenarioReport]
    status: str
    """``passed``, ``failed``, ``infrastructure`` or ``interrupted``."""
    message: str = ""
    duration: float = 0.0
    screenshots: list[Path] = field(default_factory=list)
    capture_tail: list[str] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Facts stated beside the verdict, such as the Driver Verifier rules the driver ran under."""
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What the reader must know about how the run was made (QEMU without its seccomp filter, say)."""

    def artifact(self, name: str) -> Path:
        """A file of the run directory."""
        return self.run_dir / name

    @property
    def failed(self) -> list[ScenarioReport]:
        """The scenarios that did not pass."""
        return [s for s in self.scenarios if not s.passed]
