"""The verdict's settings: negative controls (expected crashes, expected findings) and text verdicts.

``VerdictConfig`` is the ``verdict:`` section of a configuration file; ``AnalyzeConfig`` is what
``vmtest analyze --config`` reads (only that section; other sections of a full ``vmtest.yaml`` are
ignored there). The defaults are the scenario catalogue's (``drivers/scenarios.json``, each
scenario's ``verdict``): ``neg_wait_at_dispatch`` must crash, ``drop_safe_then_drop`` may (a crash
with ``required: false``), ``neg_lock_inversion`` must be flagged by ``lock_order``. Scenarios named
in ``expected_crashes`` / ``expected_findings`` replace the defaults for that scenario; ``null``
removes a default.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vmtest.events.scenarios import CATALOGUE
from vmtest.verdict.crashes import WINDOWS_SOURCES, Crash
from vmtest.verdict.stop_codes import stop_code_by_name
from vmtest.verdict.text import TextVerdictConfig
from vmtest.verdict.verifier_rules import OPTIONS, violation_names

__all__ = ["CHECK_NAMES", "AnalyzeConfig", "ExpectedCrash", "VerdictConfig"]

CHECK_NAMES = ("sequence", "exclusion", "results", "lock_order", "contracts")
"""The checks over the events, by the name their findings carry."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpectedCrash(_Model):
    """A negative control that must crash the guest: it passes only with one of these crashes."""

    stop_codes: frozenset[int] = Field(
        frozenset(),
        description="Windows stop codes accepted: numbers (0xD1) or names (DRIVER_IRQL_NOT_LESS_OR_EQUAL)",
    )
    linux_panic: bool = Field(
        True, description="accept a Linux kernel panic (or a panic QEMU reports without code)"
    )
    verifier: frozenset[str] = Field(
        frozenset(),
        description="Driver Verifier catches accepted, by option (deadlock_detection, irql_checking) or by "
        "violation (lock_hierarchy_violation, wait_at_dispatch_with_timeout)",
    )
    required: bool = Field(
        True,
        description="false: the scenario may also end normally (a crash is allowed, not demanded)",
    )
    linux_bugs: tuple[str, ...] = Field(
        ("scheduling while atomic", "sleeping function called from invalid context"),
        description="regular expressions: a Linux 'BUG:' report whose message matches one is accepted",
    )

    @field_validator("stop_codes", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple | set | frozenset):
            return value
        codes = []
        for item in value:
            if isinstance(item, str):
                code = stop_code_by_name(item)
                if code is None:
                    try:
                        code = int(item, 0)
                    except ValueError:
                        raise ValueError(
                            f"unknown stop code {item!r}: give a number (0xD1) or a name"
                        ) from None
                item = code
            codes.append(item)
        return codes

    @field_validator("verifier")
    @classmethod
    def _verifier(cls, value: frozenset[str]) -> frozenset[str]:
        known = violation_names() | {option.name for option in OPTIONS}
        unknown = sorted(value - known)
        if unknown:
            raise ValueError(
                f"unknown Driver Verifier option or violation {', '.join(unknown)}; "
                f"options: {', '.join(option.name for option in OPTIONS)}"
            )
        return value

    @field_validator("linux_bugs")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"invalid regular expression {pattern!r}: {error.msg}") from None
        return value

    def accepts(self, crash: Crash) -> bool:
        """Whether ``crash`` is one this negative control is meant to cause."""
        if crash.source in WINDOWS_SOURCES:
            violation = crash.violation
            if violation is not None and {violation.option, violation.name} & self.verifier:
                return True
            return crash.code is not None and (crash.code & ~0x10000000) in self.stop_codes
        if crash.source in ("linux-panic", "qemu-panic"):
            return self.linux_panic
        return any(re.search(pattern, crash.message) for pattern in self.linux_bugs)

    def describe(self) -> str:
        """What is accepted, in words."""
        parts = []
        if self.stop_codes:
            parts.append("a bugcheck " + "/".join(f"{code:#x}" for code in sorted(self.stop_codes)))
        if self.verifier:
            parts.append("a Driver Verifier catch (" + " | ".join(sorted(self.verifier)) + ")")
        if self.linux_bugs:
            parts.append("a Linux BUG (" + " | ".join(self.linux_bugs) + ")")
        if self.linux_panic:
            parts.append("a Linux panic")
        return " or ".join(parts) or "no crash at all"


def _catalogue_crashes() -> dict[str, ExpectedCrash | None]:
    """The crashes the catalogue (``drivers/scenarios.json``) demands or allows, by scenario.

    Each entry says why (its ``why``): ``neg_wait_at_dispatch`` must stop the system (wdk-mutex-api.md,
    "IRQL facts"), ``drop_safe_then_drop`` may (wdk-mutex-api.md, ``KMutexGuard::drop_safe``).
    """
    crashes: dict[str, ExpectedCrash | None] = {}
    for spec in CATALOGUE.scenarios:
        for key, required in (("expected_crash", True), ("allowed_crash", False)):
            if key in spec.verdict:
                codes = frozenset(spec.verdict[key]["stop_codes"])
                crashes[spec.name] = (
                    ExpectedCrash(stop_codes=codes)
                    if required
                    else ExpectedCrash(stop_codes=codes, required=False, linux_panic=False, linux_bugs=())
                )
    return crashes


DEFAULT_EXPECTED_CRASHES: dict[str, ExpectedCrash | None] = _catalogue_crashes()
DEFAULT_EXPECTED_FINDINGS: dict[str, tuple[str, ...] | None] = {
    spec.name: tuple(spec.verdict["expected_findings"])
    for spec in CATALOGUE.scenarios
    if "expected_findings" in spec.verdict
}
VERIFIER_EXPECTED_CRASHES: dict[str, ExpectedCrash] = {
    spec.name: ExpectedCrash(
        stop_codes=frozenset(spec.verdict["under_verifier"]["stop_codes"]),
        verifier=frozenset(spec.verdict["under_verifier"]["verifier"]),
        linux_panic=False,
    )
    for spec in CATALOGUE.scenarios
    if "under_verifier" in spec.verdict
}
"""What the negative controls expect under Driver Verifier (the catalogue's ``under_verifier``, with why)."""


class VerdictConfig(_Model):
    """How runs are judged."""

    expected_crashes: dict[str, ExpectedCrash | None] = Field(
        default_factory=lambda: dict(DEFAULT_EXPECTED_CRASHES),
        description="negative controls that must crash the guest, by scenario",
    )
    expected_findings: dict[str, tuple[str, ...] | None] = Field(
        default_factory=lambda: dict(DEFAULT_EXPECTED_FINDINGS),
        description="negative controls that pass only when these checks find something, by scenario",
    )
    text: TextVerdictConfig | None = Field(None, description="read the driver's own pass/fail lines")
    tail_lines: int = Field(8, ge=1, le=1000, description="lines quoted for a scenario that hung")
    reorder_window: int = Field(65536, ge=16, description="events held back to put late lines in seq order")
    findings_per_check: int = Field(20, ge=1, description="findings kept per check and scenario")

    def with_verifier(self) -> VerdictConfig:
        """These settings for a run under Driver Verifier: the negative controls expect its catches.

        A scenario the configuration set itself (to something other than the default) keeps its setting.
        """
        crashes = {**VERIFIER_EXPECTED_CRASHES, **self.expected_crashes}
        for name, default in DEFAULT_EXPECTED_CRASHES.items():
            if crashes.get(name) == default and name in VERIFIER_EXPECTED_CRASHES:
                crashes[name] = VERIFIER_EXPECTED_CRASHES[name]  # a default, not the user's: Verifier's wins
        return self.model_copy(update={"expected_crashes": crashes})

    @field_validator("expected_crashes")
    @classmethod
    def _crash_defaults(cls, value: dict[str, ExpectedCrash | None]) -> dict[str, ExpectedCrash | None]:
        merged: dict[str, ExpectedCrash | None] = {**DEFAULT_EXPECTED_CRASHES, **value}
        return {name: item for name, item in merged.items() if item is not None}

    @field_validator("expected_findings")
    @classmethod
    def _finding_defaults(cls, value: dict[str, tuple[str, ...] | None]) -> dict[str, tuple[str, ...] | None]:
        for name, checks in value.items():
            unknown = sorted(set(checks or ()) - set(CHECK_NAMES))
            if unknown:
                raise ValueError(
                    f"{name}: unknown check {', '.join(unknown)} (known: {', '.join(CHECK_NAMES)})"
                )
        merged: dict[str, tuple[str, ...] | None] = {**DEFAULT_EXPECTED_FINDINGS, **value}
        return {name: checks for name, checks in merged.items() if checks}


class AnalyzeConfig(BaseModel):
    """What ``vmtest analyze --config FILE`` reads: the ``verdict:`` section (others are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
