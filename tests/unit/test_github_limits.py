"""GitHub's limits on what a step reports (issue 16 points 15 and 16): docs.github.com, "Workflow
commands for GitHub Actions" (job summaries up to 1 MiB per step; 10 error annotations per step) and
actions/runner's ``::stop-commands::`` handling."""

from __future__ import annotations

import io
from pathlib import Path

from vmtest.report.github import ANNOTATION_LIMIT, SUMMARY_LIMIT_BYTES, summary_markdown, write_github
from vmtest.report.model import FindingReport, RunReport, ScenarioReport

GITHUB = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "99"}


def failing_run(tmp_path: Path, count: int, line: str = "x" * 200, lines: int = 10) -> RunReport:
    finding = FindingReport("sequence", "out of order", tuple(f"{line} {i}" for i in range(lines)))
    return RunReport(
        run_dir=tmp_path,
        driver="d",
        guest="linux",
        scenarios=[ScenarioReport(f"s{i}", "failed", (finding,)) for i in range(count)],
        status="failed",
        duration=1.0,
    )


def test_a_huge_summary_is_cut_under_one_mib_with_a_closed_fence(tmp_path: Path) -> None:
    text = summary_markdown(failing_run(tmp_path, 2000, "é" * 150))
    assert len(text.encode("utf-8")) <= SUMMARY_LIMIT_BYTES + 200
    assert SUMMARY_LIMIT_BYTES < 1024 * 1024
    assert "cut to stay under GitHub's 1 MiB limit" in text
    assert sum(1 for line in text.splitlines() if line.strip() == "```") % 2 == 0


def test_at_most_ten_annotations_and_one_names_the_rest(tmp_path: Path) -> None:
    out = io.StringIO()
    write_github(failing_run(tmp_path, 25), {"GITHUB_STEP_SUMMARY": str(tmp_path / "s.md")}, out)
    lines = out.getvalue().splitlines()
    assert len(lines) == ANNOTATION_LIMIT == 10
    assert "16 more failed scenario" in lines[-1] and "s24" in lines[-1]


def test_annotations_go_to_the_file_the_workflow_prints_after_stop_commands(tmp_path: Path) -> None:
    out = io.StringIO()
    target = tmp_path / "annotations.txt"
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path / "s.md"), "VMTEST_GITHUB_ANNOTATIONS": str(target)}
    write_github(failing_run(tmp_path, 2), env, out)
    assert out.getvalue() == ""
    assert [line.split("::")[1][:5] for line in target.read_text().splitlines()] == ["error", "error"]


def test_the_summary_links_the_artifact_not_a_runner_path(tmp_path: Path) -> None:
    env = {**GITHUB, "VMTEST_ARTIFACT_NAME": "vmtest-artifacts-shard-2"}
    text = summary_markdown(failing_run(tmp_path, 1), env)
    assert "https://github.com/o/r/actions/runs/99" in text and "`vmtest-artifacts-shard-2`" in text
    assert str(tmp_path) not in text
    assert str(tmp_path) in summary_markdown(failing_run(tmp_path, 1)), "outside Actions the folder is named"
