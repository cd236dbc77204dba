r"""Text verdicts: for drivers that print their own pass/fail lines instead of protocol events.

A :class:`TextVerdictConfig` names three regular expressions: a test starts (optional), passed,
failed. The named group ``name`` gives the test's name; a pattern without it stands for the whole
suite (``suite``). So a driver such as the upstream ``wdk_mutex_tests`` (which prints
``[wdk-mutex-test] [-] Test <name> failed.`` or ``[wdk-mutex-test] [+] All tests passed!``) runs under
vmtest unchanged, e.g.::

    text:
      suite: wdk-mutex-test
      test_start: '\[wdk-mutex-test\] \[i\] Starting'
      passed: '\[wdk-mutex-test\] \[\+\] All tests passed'
      failed: '\[wdk-mutex-test\] \[-\] Test (?P<name>\S+) failed'

A test that started and never passed or failed hung (or crashed, when a crash is attributed to it by
position). A failure named inside an open test (a named test that did not start on its own) fails the
open tests too: the suite failed because one of its tests did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["TextResult", "TextVerdictConfig", "TextVerdictReader"]

TextOutcome = Literal["passed", "failed", "started"]
_MAX_TESTS = 10_000


class TextVerdictConfig(BaseModel):
    """How to read a driver's own human-readable results.

    Regular expressions (Python syntax) searched in every line, with an optional named group ``name``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = Field("driver", min_length=1, description="the test a pattern without (?P<name>...) names")
    test_start: str | None = Field(None, description="a test starts (optional)")
    passed: str = Field(description="a test passed")
    failed: str = Field(description="a test failed")

    @field_validator("test_start", "passed", "failed")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            re.compile(value)
        except re.error as error:
            where = f" at position {error.pos}" if error.pos is not None else ""
            raise ValueError(f"invalid regular expression: {error.msg}{where}") from None
        return value


@dataclass(frozen=True)
class TextResult:
    """One test's outcome as its lines said, with where they stand in the capture."""

    name: str
    outcome: TextOutcome
    start_line: int
    end_line: int | None
    lines: tuple[tuple[int, str], ...]


class TextVerdictReader:
    """Reads test results out of captured lines, streaming (feed it every line)."""

    def __init__(self, config: TextVerdictConfig) -> None:
        self.config = config
        self._start = re.compile(config.test_start) if config.test_start else None
        self._passed = re.compile(config.passed)
        self._failed = re.compile(config.failed)
        self._tests: dict[str, TextResult] = {}
        self._open: list[str] = []
        self._started = False

    def feed(self, line: str, lineno: int) -> None:
        """Look at one line."""
        failed = self._failed.search(line)
        if failed is not None:
            self._result(self._name(failed), "failed", line, lineno)
            return
        passed = self._passed.search(line)
        if passed is not None:
            self._result(self._name(passed), "passed", line, lineno)
            return
        if self._start is not None:
            started = self._start.search(line)
            if started is not None and len(self._tests) < _MAX_TESTS:
                name = self._name(started)
                self._tests[name] = TextResult(name, "started", lineno, None, ((lineno, line),))
                self._started = True
                if name not in self._open:
                    self._open.append(name)

    def results(self) -> list[TextResult]:
        """Every test seen, in the order they first appeared."""
        return list(self._tests.values())

    def settled(self) -> str | None:
        """Whether the suite's outcome is known yet, and by what; None while it is not.

        ``"suite-result"``: the suite's own passed or failed line (a pattern without ``name``) was seen,
        or a failure inside the open suite failed it; ``"tests-ended"``: tests started and every one of
        them has ended.
        """
        suite = self._tests.get(self.config.suite)
        if suite is not None and suite.outcome != "started":
            return "suite-result"
        if self._started and not self._open:
            return "tests-ended"
        return None

    def _name(self, match: re.Match[str]) -> str:
        name = match.groupdict().get("name")
        return name.strip() if name else self.config.suite

    def _result(self, name: str, outcome: TextOutcome, line: str, lineno: int) -> None:
        known = self._tests.get(name)
        if known is None and len(self._tests) >= _MAX_TESTS:
            return
        before = known.lines if known is not None else ()
        self._tests[name] = TextResult(
            name,
            outcome,
            known.start_line if known is not None else lineno,
            lineno,
            (*before, (lineno, line)),
        )
        if name in self._open:
            self._open.remove(name)
        elif outcome == "failed":
            for parent in self._open:  # a failure inside the open tests fails them too
                test = self._tests[parent]
                self._tests[parent] = TextResult(
                    parent, "failed", test.start_line, lineno, (*test.lines, (lineno, line))
                )
            self._open.clear()
