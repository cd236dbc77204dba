"""Options of this repository's test suite."""

from __future__ import annotations

import pytest

WRITE_RELIABILITY = "--vmtest-write-reliability"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--vmtest-write-reliability``: regenerate ``docs/RELIABILITY.md`` from a run of ``tests/faults``."""
    parser.addoption(
        WRITE_RELIABILITY,
        action="store_true",
        default=False,
        help="rewrite docs/RELIABILITY.md from this run of the whole fault suite (tests/faults); without it "
        "no test run touches the file",
    )
