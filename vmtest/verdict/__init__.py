"""Verdicts: judge a run from its captured events, crashes and (optionally) a driver's own text lines.

One module per check (:mod:`.sequence`, :mod:`.exclusion`, :mod:`.results`, :mod:`.lock_order`,
:mod:`.contracts`, :mod:`.completeness`), the data they rely on (:mod:`.irql_contracts`,
:mod:`.grt_contracts`, :mod:`.stop_codes`), crashes (:mod:`.crashes`), text verdicts (:mod:`.text`),
and :mod:`.verdict`, which puts them together. ``vmtest analyze`` (:mod:`.analyze`) runs it all on a
saved capture.
"""

from vmtest.verdict.config import AnalyzeConfig, ExpectedCrash, VerdictConfig
from vmtest.verdict.crashes import Crash, crash_from_console, crash_from_qmp
from vmtest.verdict.findings import Finding
from vmtest.verdict.text import TextVerdictConfig
from vmtest.verdict.verdict import Judge, RunVerdict, ScenarioVerdict, Status, judge

__all__ = [
    "AnalyzeConfig",
    "Crash",
    "ExpectedCrash",
    "Finding",
    "Judge",
    "RunVerdict",
    "ScenarioVerdict",
    "Status",
    "TextVerdictConfig",
    "VerdictConfig",
    "crash_from_console",
    "crash_from_qmp",
    "judge",
]
