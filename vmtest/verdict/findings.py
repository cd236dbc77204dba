"""What a check reports: a :class:`Finding`, with the captured lines that show it, made safe to print.

Guest text (a quoted line, a panic message, a test name) may hold terminal escapes or other control
characters; every finding neutralises them when it is made, so no renderer has to remember to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmtest.events.protocol import Event

__all__ = ["Finding", "FindingLog", "compact_ranges", "printable", "quote"]

MAX_QUOTE = 400


def printable(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` with control and other non-printable characters escaped (ESC as x1b), cut at ``limit``."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if len(text) > limit:
        text = f"{text[:limit]} [... {len(text) - limit} more characters]"
    return text


def quote(item: Event | tuple[int, str] | str) -> str:
    """How a finding shows a captured line: ``line N: <text>``."""
    if isinstance(item, Event):
        return item.where()
    if isinstance(item, tuple):
        lineno, text = item
        return f"line {lineno}: {text.strip()}"
    return item


@dataclass(frozen=True)
class Finding:
    """One thing a check found wrong, in which scenario ("" for the run as a whole), quoting the lines."""

    check: str
    message: str
    lines: tuple[str, ...] = ()
    scenario: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", printable(self.message, limit=2000))
        object.__setattr__(self, "lines", tuple(printable(line) for line in self.lines))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "check": self.check,
            "scenario": self.scenario,
            "message": self.message,
            "lines": list(self.lines),
        }


class FindingLog:
    """Collects one check's findings, at most ``limit`` per scenario (the rest are only counted).

    A broken driver that repeats one mistake a million times cannot make the verdict grow with the log.
    """

    def __init__(self, check: str, limit: int = 20) -> None:
        self.check = check
        self.limit = limit
        self._kept: list[Finding] = []
        self._count: defaultdict[str, int] = defaultdict(int)

    def add(self, scenario: str, message: str, *lines: Event | tuple[int, str] | str) -> None:
        """Record a finding; ``lines`` are quoted (events, ``(lineno, text)`` pairs or ready text)."""
        self._count[scenario] += 1
        if self._count[scenario] <= self.limit:
            self._kept.append(Finding(self.check, message, tuple(quote(line) for line in lines), scenario))

    def findings(self) -> list[Finding]:
        """What was kept, plus one line per scenario saying how many more were found."""
        more = [
            Finding(
                self.check, f"... and {count - self.limit} more {self.check} findings like these", (), name
            )
            for name, count in self._count.items()
            if count > self.limit
        ]
        return self._kept + more


def compact_ranges(ranges: Iterable[tuple[int, int]], limit: int = 20) -> str:
    """``1, 3-5, 9`` for the inclusive ranges (1, 1), (3, 5), (9, 9): sorted, merged, at most ``limit``."""
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    shown = [str(low) if low == high else f"{low}-{high}" for low, high in merged[:limit]]
    if len(merged) > limit:
        shown.append(f"... ({len(merged) - limit} more ranges)")
    return ", ".join(shown)
