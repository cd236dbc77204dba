"""Golden captures in tests/data/verdicts: each log's verdict must be exactly what its sidecar says.

A sidecar ``NAME.expected.json`` gives every scenario's status and every finding (scenario, check, a
piece of its message, and the capture lines it quotes), so a failure mode is caught, named by the right
check, and nothing else is reported alongside it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from vmtest.verdict.analyze import analyze_file
from vmtest.verdict.findings import Finding
from vmtest.verdict.verdict import RunVerdict

DATA = Path(__file__).resolve().parents[1] / "data" / "verdicts"
LOGS = sorted(DATA.glob("*.log"))
_QUOTED_LINE = re.compile(r"^line (\d+): ")


def expected_of(log: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(log.with_suffix(".expected.json").read_text())
    return data


def verdict_of(log: Path, expected: dict[str, Any]) -> RunVerdict:
    config = DATA / expected["config"] if "config" in expected else None
    return analyze_file(log, config, expected.get("requested", ()))


def quoted_lines(finding: Finding) -> list[int]:
    numbers = []
    for line in finding.lines:
        match = _QUOTED_LINE.match(line)
        assert match, f"every quoted line names its line number: {line!r}"
        numbers.append(int(match.group(1)))
    return numbers


def test_every_log_has_a_sidecar_and_every_sidecar_a_log() -> None:
    logs = {path.stem for path in LOGS}
    sidecars = {path.name.removesuffix(".expected.json") for path in DATA.glob("*.expected.json")}
    assert logs == sidecars
    assert len(logs) >= 20


@pytest.mark.parametrize("log", LOGS, ids=[path.stem for path in LOGS])
def test_golden_verdict(log: Path) -> None:
    expected = expected_of(log)
    verdict = verdict_of(log, expected)

    assert {item.name: item.status for item in verdict.scenarios} == expected["status"]
    assert verdict.passed is expected["passed"]

    found = [*verdict.findings, *(finding for item in verdict.scenarios for finding in item.findings)]
    wanted = expected["findings"]
    assert Counter((f.scenario, f.check) for f in found) == Counter(
        (w["scenario"], w["check"]) for w in wanted
    )
    for want in wanted:
        matches = [
            f
            for f in found
            if (f.scenario, f.check) == (want["scenario"], want["check"]) and want["message"] in f.message
        ]
        assert matches, (
            f"no {want['check']} finding in {want['scenario']!r} saying {want['message']!r}: {found}"
        )
        assert quoted_lines(matches[0]) == want["lines"]

    notes = {item.name: item.notes for item in verdict.scenarios}
    for name, pieces in expected.get("notes", {}).items():
        for piece in pieces:
            assert any(piece in note for note in notes[name]), (piece, notes[name])
    for piece in expected.get("run_notes", ()):
        assert any(piece in note for note in verdict.notes), (piece, verdict.notes)


@pytest.mark.parametrize("log", LOGS, ids=[path.stem for path in LOGS])
def test_golden_verdict_is_json_and_text(log: Path) -> None:
    verdict = verdict_of(log, expected_of(log))
    data = json.loads(verdict.to_json())
    assert data["passed"] is verdict.passed
    assert [item["name"] for item in data["scenarios"]] == [item.name for item in verdict.scenarios]
    text = verdict.render()
    assert text.startswith("vmtest verdict: " + ("PASSED" if verdict.passed else "FAILED"))
    assert all(line.isprintable() for line in text.splitlines()), "guest text is neutralised"


def test_a_capture_split_differently_gives_the_same_verdict() -> None:
    """The clean run in two capture formats (DebugView tabs; CSV with CRLF) is judged the same."""
    tab = verdict_of(DATA / "clean_run_debugview.log", {})
    csv = verdict_of(DATA / "clean_run_csv_crlf.log", {})
    assert tab.to_dict()["scenarios"] == csv.to_dict()["scenarios"]
    assert tab.events == csv.events == 111
