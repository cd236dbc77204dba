"""Reports: JUnit, GitHub summary and annotations, the HTML report's escaping, shards and their merge."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmtest.cli_run import shard
from vmtest.errors import ConfigError
from vmtest.events.protocol import parse_line
from vmtest.report.github import annotation, summary_markdown, write_github
from vmtest.report.html import LockEdge, critical_sections, render_html
from vmtest.report.junit import write_junit
from vmtest.report.merge import merge_shards
from vmtest.report.model import FindingReport, RunReport, ScenarioReport

HOSTILE = '<script>alert("x")</script> \x1b[31mred\x1b[0m & "quotes" | pipes'


def report(tmp_path: Path) -> RunReport:
    (tmp_path / "capture.log").write_text("log\n")
    return RunReport(
        run_dir=tmp_path,
        driver="wdk-mutex tests",
        guest="linux",
        scenarios=[
            ScenarioReport("kmutex_contention", "passed"),
            ScenarioReport(
                "irql_errors",
                "failed",
                (
                    FindingReport(
                        "contracts", f"lock at irql=2 returned Ok {HOSTILE}", (f"line 7: {HOSTILE}",)
                    ),
                ),
            ),
            ScenarioReport("to_owned", "skipped"),
            ScenarioReport("grt_errors", "hang", (FindingReport("completeness", "hang"),)),
        ],
        status="failed",
        duration=12.5,
        capture_tail=[HOSTILE],
    )


def test_junit_has_a_case_per_scenario_with_failures_and_artifact_properties(tmp_path: Path) -> None:
    path = write_junit(report(tmp_path), tmp_path / "junit.xml")
    suite = ET.parse(path).getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("errors") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"kmutex_contention", "irql_errors", "to_owned", "grt_errors"}
    failure = cases["irql_errors"].find("failure")
    assert failure is not None and "lock at irql=2 returned Ok" in (failure.get("message") or "")
    assert "\x1b" not in (failure.text or "") and "line 7:" in (failure.text or "")
    assert cases["grt_errors"].find("error") is not None
    assert cases["to_owned"].find("skipped") is not None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["artifact:capture.log"] == str(tmp_path / "capture.log")


def test_github_summary_and_annotations(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    out = io.StringIO()
    assert write_github(report(tmp_path), {"GITHUB_STEP_SUMMARY": str(summary)}, out)
    text = summary.read_text()
    assert "| `irql_errors` | ❌ failed |" in text
    outside_code = "".join(part for index, part in enumerate(text.split("```")) if index % 2 == 0)
    assert "<script>" not in outside_code, "HTML in guest text is shown as text, not markup"
    assert "\x1b" not in text
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("::error title=vmtest ") for line in lines)
    assert not write_github(report(tmp_path), {}, out), "outside GitHub Actions nothing is written"


def test_annotation_escapes_newlines_and_property_separators() -> None:
    assert annotation("a: b, c", "one\ntwo 100%") == "::error title=a%3A b%2C c::one%0Atwo 100%25"


def test_markdown_table_cells_cannot_break_the_table(tmp_path: Path) -> None:
    rows = [
        line for line in summary_markdown(report(tmp_path)).splitlines() if line.startswith("| `irql_errors`")
    ]
    assert rows and rows[0].count(" | ") == 2


def test_html_escapes_guest_text_everywhere(tmp_path: Path) -> None:
    hostile_event = parse_line(
        f"VMTEST1 seq=1 ev=acquired sc=irql_errors t=0 m=fm k=fast_mutex irql=0 depth=1 msg={HOSTILE}"
    )
    assert hostile_event is not None
    page = render_html(report(tmp_path), [hostile_event], [LockEdge("sc:<b>", "sc:a", True)])
    assert "<script>" not in page and "\x1b" not in page
    assert "&lt;script&gt;" in page
    assert 'src="http' not in page and "<link" not in page, "the report fetches nothing"


def test_critical_sections_follow_sequence_order() -> None:
    lines = [
        "VMTEST1 seq=3 ev=release sc=s t=0 m=c k=kmutex irql=0 depth=1",
        "VMTEST1 seq=1 ev=acquired sc=s t=0 m=c k=kmutex irql=0 depth=1",
        "VMTEST1 seq=2 ev=acquired sc=s t=0 m=c k=kmutex irql=0 depth=2",
        "VMTEST1 seq=4 ev=acquired sc=s t=1 m=c k=kmutex irql=0 depth=1",
        "VMTEST1 seq=5 ev=release sc=s t=1 m=c k=kmutex irql=0 depth=1",
    ]
    events = [e for e in (parse_line(line) for line in lines) if e is not None]
    sections = critical_sections(events)
    assert [(s.thread, s.start, s.end) for s in sections] == [("0", 1, 3), ("1", 4, 5)]


def test_shards_are_stable_disjoint_and_complete() -> None:
    names = ["e", "a", "d", "b", "c"]
    parts = [shard(names, f"{i}/3") for i in (1, 2, 3)]
    assert parts == [("e", "b"), ("a", "c"), ("d",)]  # the order given (the catalogue's by default)
    assert sorted(n for part in parts for n in part) == sorted(names)
    assert shard(names, None) == tuple(names)
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(ConfigError):
            shard(names, bad)


def test_merge_reports_fails_when_a_shard_is_missing(tmp_path: Path) -> None:
    first = tmp_path / "shard-1"
    run = first / "artifacts" / "run-1"
    run.mkdir(parents=True)
    write_junit(report(tmp_path), first / "junit.xml")
    verdicts = {"status": "passed", "scenarios": [{"name": "a", "status": "passed"}]}
    (run / "verdicts.json").write_text(json.dumps(verdicts))
    merged = merge_shards(tmp_path / "out", [first])
    assert merged["passed"] is True
    assert ET.parse(tmp_path / "out" / "junit.xml").getroot().tag == "testsuites"
    merged = merge_shards(tmp_path / "out", [first, tmp_path / "shard-2"])
    assert merged["passed"] is False and merged["missing_shards"] == [str(tmp_path / "shard-2")]
