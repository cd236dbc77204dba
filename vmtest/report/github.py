"""GitHub Actions: a Markdown job summary (``GITHUB_STEP_SUMMARY``) and ``::error`` annotations."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from vmtest.capture.source import printable
from vmtest.report.model import RunReport

__all__ = ["annotation", "summary_markdown", "write_github"]

_ICONS = {"passed": "✅", "skipped": "⏭️", "failed": "❌", "crashed": "💥", "hang": "⏳", "not_run": "⚪"}


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(title: str, message: str) -> str:
    """An ``::error`` workflow command, escaped as GitHub requires."""
    text = "\n".join(printable(line) for line in message.split("\n"))
    return f"::error title={_escape_property(printable(title))}::{_escape_data(text)}"


def _cell(text: str) -> str:
    return printable(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _unfenced(line: str) -> str:
    return printable(line).replace("```", "\u2035\u2035\u2035")


def summary_markdown(report: RunReport) -> str:
    """The job summary: the outcome, a table of scenarios, then each failure with its quoted lines."""
    passed = sum(1 for s in report.scenarios if s.passed)
    lines = [
        f"## vmtest: {report.driver} on {report.guest} — {report.status}",
        "",
        f"{passed} of {len(report.scenarios)} scenario(s) passed in {report.duration:.1f}s.",
    ]
    if report.message:
        lines += ["", f"> {_cell(report.message)}"]
    lines += ["", "| scenario | verdict | first finding |", "| --- | --- | --- |"]
    for scenario in report.scenarios:
        first = scenario.findings[0].message if scenario.findings else ""
        icon = _ICONS.get(scenario.status, "❔")
        lines.append(f"| `{_cell(scenario.name)}` | {icon} {scenario.status} | {_cell(first[:200])} |")
    for scenario in report.failed:
        lines += ["", f"### {_cell(scenario.name)}: {scenario.status}"]
        for finding in scenario.findings:
            lines.append(f"- **{_cell(finding.check)}**: {_cell(finding.message)}")
            if finding.lines:
                fence = [f"  {_unfenced(line)}" for line in finding.lines[:10]]
                lines += ["  ```", *fence, "  ```"]
    lines += ["", f"Artifacts: `{report.run_dir}`", ""]
    return "\n".join(lines)


def write_github(
    report: RunReport, environ: Mapping[str, str] | None = None, out: TextIO | None = None
) -> bool:
    """On GitHub Actions, append the summary and print one annotation per failed scenario; else do nothing."""
    env = os.environ if environ is None else environ
    summary = env.get("GITHUB_STEP_SUMMARY")
    if not summary:
        return False
    with Path(summary).open("a", encoding="utf-8") as handle:
        handle.write(summary_markdown(report))
    stream = sys.stdout if out is None else out
    for scenario in report.failed:
        message = "; ".join(f.message for f in scenario.findings) or scenario.status
        stream.write(annotation(f"vmtest {scenario.name}: {scenario.status}", message) + "\n")
    if report.status == "infrastructure":
        stream.write(annotation("vmtest: infrastructure failure", report.message) + "\n")
    stream.flush()
    return True
