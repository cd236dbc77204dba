"""``driver.verifier``: run the Windows driver under Driver Verifier, with the rules the user names.

Off unless the section is present. ``rules`` is ``standard`` (``verifier /standard``) or a list of
option names from :data:`vmtest.verdict.verifier_rules.OPTIONS`. Rules that Windows 11 can switch on
at once (``verifier /volatile``: deadlock detection, DMA checking, ...) need no reboot; the others
(IRQL checking, special pool, ...) take effect at the next boot, so vmtest reboots the guest once
before the driver loads, which it may do only when ``reboot`` is true.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vmtest.verdict.verifier_rules import OPTIONS, STANDARD_FLAGS, VerifierOption, option_by_name

__all__ = ["VerifierConfig"]


class VerifierConfig(BaseModel):
    """Which Driver Verifier rules to apply to the driver under test, and whether a reboot is allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: Literal["standard"] | tuple[str, ...] = Field(
        ("irql_checking", "deadlock_detection"),
        description="'standard' or option names: " + ", ".join(option.name for option in OPTIONS),
    )
    reboot: bool = Field(
        True,
        description="allow one guest reboot when a rule cannot take effect without one (IRQL checking, "
        "special pool, ...); with false, only rules Windows 11 applies at once are accepted",
    )

    @field_validator("rules")
    @classmethod
    def _known(cls, value: Literal["standard"] | tuple[str, ...]) -> Literal["standard"] | tuple[str, ...]:
        if value == "standard":
            return value
        if not value:
            raise ValueError("name at least one rule, or write 'standard'")
        unknown = [name for name in value if option_by_name(name) is None]
        if unknown:
            known = ", ".join(option.name for option in OPTIONS)
            raise ValueError(f"unknown Driver Verifier rule {', '.join(unknown)} (known: {known})")
        return value

    @model_validator(mode="after")
    def _reboot_allowed(self) -> VerifierConfig:
        if not self.reboot and not self.volatile:
            slow = ", ".join(name for name in self.names if not _option(name).volatile)
            raise ValueError(
                f"{slow or 'standard'} take(s) effect only after a reboot on Windows 11 (Microsoft Learn, "
                "'Using Volatile Settings'): set reboot: true, or keep only rules that apply at once"
            )
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """The option names asked for (``standard`` spelt out)."""
        if self.rules == "standard":
            return tuple(option.name for option in OPTIONS if option.flag & STANDARD_FLAGS)
        return tuple(_option(name).name for name in self.rules)

    @property
    def flags(self) -> int:
        """The ``/flags`` value of the rules."""
        if self.rules == "standard":
            return STANDARD_FLAGS
        flags = 0
        for name in self.rules:
            flags |= _option(name).flag
        return flags

    @property
    def volatile(self) -> bool:
        """Every rule can be switched on with ``/volatile`` (no reboot)."""
        return self.rules != "standard" and all(_option(name).volatile for name in self.rules)


def _option(name: str) -> VerifierOption:
    found = option_by_name(name)
    if found is None:
        raise ValueError(f"unknown Driver Verifier rule {name!r}")
    return found
