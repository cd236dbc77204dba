"""GitHub Actions: a Markdown job summary (``GITHUB_STEP_SUMMARY``) and ``::error`` annotations.

GitHub's limits, from its documentation, are kept here:

* A step's job summary is at most 1 MiB; a larger one is not shown and the step gets an error
  (docs.github.com, "Workflow commands for GitHub Actions", *Adding a job summary*: "The job summary
  size limit is 1MiB"). The summary is cut, at a line, below :data:`SUMMARY_LIMIT_BYTES`.
* At most 10 error annotations per step are shown (same page and "Troubleshooting workflows":
  "10 error annotations and 10 warning annotations per step ... 50 annotations per job"); beyond
  :data:`ANNOTATION_LIMIT` - 1 failed scenarios, one annotation names how many more there are.
* Annotations are workflow commands, so they must not be printed while commands are stopped. When
  ``VMTEST_GITHUB_ANNOTATIONS`` names a file, they are appended there instead, and the workflow prints
  that file after ``vmtest run`` finished inside ``::stop-commands::TOKEN`` ... ``::TOKEN::`` (which
  keeps guest text printed during the run from being read as a command: actions/runner
  ``src/Runner.Worker/ActionCommandManager.cs``, ``StopCommandsCommand``).
* The summary links the run's page and names the artifact (``VMTEST_ARTIFACT_NAME``) instead of a
  path on the runner, which nobody reading the pull request can open.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from vmtest.capture.source import printable
from vmtest.report.model import RunReport

__all__ = ["ANNOTATION_LIMIT", "SUMMARY_LIMIT_BYTES", "annotation", "summary_markdown", "write_github"]

SUMMARY_LIMIT_BYTES = 1024 * 1024 - 16 * 1024  # GitHub's 1 MiB per step, with room for the cut notice
ANNOTATION_LIMIT = 10  # error annotations GitHub shows per step

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


def _artifacts_line(report: RunReport, env: Mapping[str, str]) -> str:
    server, repository, run_id = (
        env.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    )
    name = env.get("VMTEST_ARTIFACT_NAME")
    if server and repository and run_id:
        where = f"[this run's page]({server}/{repository}/actions/runs/{run_id})"
        what = f"the artifact `{_cell(name)}`" if name else "the run's artifacts"
        return f"Logs, serial console, screenshots and the HTML report: {what} on {where}."
    return f"Artifacts: `{report.run_dir}`"


def summary_markdown(report: RunReport, environ: Mapping[str, str] | None = None) -> str:
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
    lines += ["", _artifacts_line(report, {} if environ is None else environ), ""]
    return _within_limit("\n".join(lines))


def _within_limit(text: str) -> str:
    """``text``, cut at a line so that its UTF-8 form stays under :data:`SUMMARY_LIMIT_BYTES`."""
    if len(text.encode("utf-8")) <= SUMMARY_LIMIT_BYTES:
        return text
    kept: list[str] = []
    size = 0
    for line in text.split("\n"):
        size += len(line.encode("utf-8")) + 1
        if size > SUMMARY_LIMIT_BYTES:
            break
        kept.append(line)
    if sum(1 for line in kept if line.strip() == "```") % 2:
        kept.append("```")  # close a fence the cut left open
    notice = "**The summary was cut to stay under GitHub's 1 MiB limit; the HTML report has everything.**"
    return "\n".join([*kept, "", notice, ""])


def write_github(
    report: RunReport, environ: Mapping[str, str] | None = None, out: TextIO | None = None
) -> bool:
    """On GitHub Actions, append the summary and print one annotation per failed scenario; else do nothing."""
    env = os.environ if environ is None else environ
    summary = env.get("GITHUB_STEP_SUMMARY")
    if not summary:
        return False
    with Path(summary).open("a", encoding="utf-8") as handle:
        handle.write(summary_markdown(report, env))
    lines = _annotations(report)
    target = env.get("VMTEST_GITHUB_ANNOTATIONS")
    if target:
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)
        return True
    stream = sys.stdout if out is None else out
    stream.writelines(line + "\n" for line in lines)
    stream.flush()
    return True


def _annotations(report: RunReport) -> list[str]:
    """One annotation per failed scenario, at most :data:`ANNOTATION_LIMIT` in all."""
    lines: list[str] = []
    if report.status == "infrastructure":
        lines.append(annotation("vmtest: infrastructure failure", report.message))
    failed = list(report.failed)
    room = ANNOTATION_LIMIT - len(lines)
    shown = failed if len(failed) <= room else failed[: room - 1]
    for scenario in shown:
        message = "; ".join(f.message for f in scenario.findings) or scenario.status
        lines.append(annotation(f"vmtest {scenario.name}: {scenario.status}", message))
    rest = failed[len(shown) :]
    if rest:
        names = ", ".join(s.name for s in rest)
        lines.append(
            annotation(f"vmtest: {len(rest)} more failed scenario(s)", f"{names}; see the job summary")
        )
    return lines
