"""Kernel reports in a Linux guest's log: what fails a smoke test even when the driver loaded and unloaded.

The kinds and the first line each starts with (after the ``[   12.345678] `` timestamp), as the kernel
prints them:

* ``oops``: ``Oops: ...``, ``BUG: ...`` (a NULL dereference, a soft lockup), ``kernel BUG at ...``,
  ``general protection fault ...``, ``Unable to handle kernel ...``, ``Kernel panic - not syncing: ...``;
* ``warning``: ``WARNING: CPU: 0 PID: 123 at <file>:<line> <function>`` (``WARN()``/``WARN_ON()``);
* ``lockdep``: ``WARNING: possible circular locking dependency detected`` and its relatives (recursive
  locking, inconsistent lock state, bad unlock balance, a lock held when returning to user space,
  suspicious RCU usage), and ``INFO: trying to register non-static key``;
* ``kasan``: ``BUG: KASAN: <bug type> in <function>``;
* ``ubsan``: ``UBSAN: <check> in <file>:<line>`` (older kernels: ``UBSAN: Undefined behaviour in ...``);
* ``hung-task``: ``INFO: task <comm>:<pid> blocked for more than <n> seconds.``;
* ``rcu-stall``: ``rcu: INFO: rcu_sched self-detected stall on CPU`` / ``... detected stalls on CPUs/tasks``.

Each report keeps its first line and the lines that follow it (up to the ``---[ end trace ... ]---``
marker, or :data:`QUOTED_LINES` lines), so that a failure can quote it. A ``WARN()`` prints its message
before its ``WARNING:`` line, after ``------------[ cut here ]------------``: the report starts there.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

__all__ = ["QUOTED_LINES", "KernelReport", "KernelReportScanner"]

QUOTED_LINES = 16
"""Lines quoted per report: its first line and those after it."""
_MAX_REPORTS = 50

_TIMESTAMP = re.compile(r"^\s*(?:<\d+>)?\[\s*\d+\.\d+\]\s*")
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kasan", re.compile(r"\bBUG: KASAN: ")),
    (
        "lockdep",
        re.compile(
            r"^WARNING: (?:possible (?:circular|recursive) locking|inconsistent lock state|bad unlock "
            r"balance|lock held when returning|suspicious RCU usage|possible irq lock inversion)"
            r"|^INFO: trying to register non-static key"
        ),
    ),
    ("warning", re.compile(r"^WARNING: ")),
    ("ubsan", re.compile(r"^UBSAN: ")),
    ("hung-task", re.compile(r"^INFO: task \S+ blocked for more than \d+ seconds")),
    ("rcu-stall", re.compile(r"\brcu: INFO: \S+ (?:self-)?detected stalls?\b|detected stalls on CPUs")),
    (
        "oops",
        re.compile(
            r"^Oops: |\bBUG: |^kernel BUG at |^general protection fault|^Unable to handle kernel "
            r"|^Kernel panic - not syncing"
        ),
    ),
)
_END = re.compile(r"---\[ end (?:trace|Kernel panic)")
_CUT_HERE = re.compile(r"-+\[ cut here \]-+")
_BEFORE = 4  # lines a report may begin before its headline (a WARN's message after "cut here")


@dataclass
class KernelReport:
    """One kernel report: its kind, the capture line it started at, and its quoted lines."""

    kind: str
    lineno: int
    headline: str
    """The line that says what it is (``WARNING: CPU: ...``), without its timestamp."""
    lines: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for a report."""
        return f"kernel {self.kind} report at line {self.lineno}: {self.headline}"


class KernelReportScanner:
    """Finds kernel reports in log lines, streaming (feed it every line, numbered)."""

    def __init__(self) -> None:
        self.reports: list[KernelReport] = []
        self.dropped = 0
        """Reports found beyond the number kept."""
        self._open: KernelReport | None = None
        self._recent: deque[tuple[int, str]] = deque(maxlen=_BEFORE)

    def feed(self, line: str, lineno: int) -> None:
        """Look at one line."""
        text = _TIMESTAMP.sub("", line.rstrip())
        kind = next((name for name, pattern in _KINDS if pattern.search(text)), None)
        if kind is not None and not self._inside_report(kind):
            self._start(kind, text, line.rstrip(), lineno)
            self._recent.clear()
            return
        self._recent.append((lineno, line.rstrip()))
        report = self._open
        if report is None:
            return
        report.lines.append(line.rstrip())
        if _END.search(text) or len(report.lines) >= QUOTED_LINES:
            self._open = None

    def _inside_report(self, kind: str) -> bool:
        """Whether a line of ``kind`` belongs to the report still open (an oops inside a KASAN report)."""
        return self._open is not None and kind == "oops" and self._open.kind in ("kasan", "oops", "warning")

    def _start(self, kind: str, headline: str, line: str, lineno: int) -> None:
        if len(self.reports) >= _MAX_REPORTS:
            self.dropped += 1
            self._open = None
            return
        recent = list(self._recent)
        cut = max((index for index, (_, seen) in enumerate(recent) if _CUT_HERE.search(seen)), default=None)
        before = recent[cut:] if cut is not None else []
        start = before[0][0] if before else lineno
        report = KernelReport(kind, start, headline, [*(seen for _, seen in before), line])
        self.reports.append(report)
        self._open = report
