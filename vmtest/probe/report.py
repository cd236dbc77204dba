"""The fidelity report: each assumption, what was expected and what the guest showed, in three forms.

The JSON is what a maintainer updates the Windows behaviour table (``docs/WINDOWS.md``) from, row by
row: each observation names the rows it confirms or corrects. The Markdown is the same for a person,
written to be attached to an issue as it is (it holds no secret: only command lines and outputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vmtest.probe.model import Observation, Status

__all__ = ["REPORT_JSON", "REPORT_MARKDOWN", "ProbeReport"]

REPORT_JSON = "probe.json"
REPORT_MARKDOWN = "probe.md"
_MARK = {
    Status.AS_EXPECTED: "ok",
    Status.HANDLED: "ok*",
    Status.DIFFERS: "DIFFERS",
    Status.FAILED: "FAILED",
    Status.NOT_RUN: "-",
}


@dataclass(frozen=True)
class ProbeReport:
    """Every observation of one probe of one guest."""

    guest: str
    image: str
    image_key: str
    observations: tuple[Observation, ...]

    @property
    def blocking(self) -> tuple[Observation, ...]:
        """The observations that stop a run: assumptions it depends on that do not hold."""
        return tuple(item for item in self.observations if item.blocks_run)

    @property
    def mismatches(self) -> tuple[Observation, ...]:
        """Every observation that did not match the assumption (handled ones included)."""
        return tuple(
            item for item in self.observations if item.status not in (Status.AS_EXPECTED, Status.NOT_RUN)
        )

    def to_dict(self) -> dict[str, object]:
        """Plain data for ``probe.json``."""
        return {
            "guest": self.guest,
            "image": self.image,
            "image_key": self.image_key,
            "blocking": [item.check.id for item in self.blocking],
            "observations": [item.to_dict() for item in self.observations],
        }

    def summary(self) -> str:
        """One screen: a line per check, then the advice for each mismatch."""
        width = max((len(item.check.id) for item in self.observations), default=10)
        lines = [f"probe of the {self.guest} guest ({self.image})"]
        for item in self.observations:
            lines.append(f"  {_MARK[item.status]:<8} {item.check.id:<{width}}  {item.observed}")
        advice = [item for item in self.mismatches if item.advice]
        if advice:
            lines.append("what to do:")
            lines += [f"  {item.check.id}: {item.advice}" for item in advice]
        verdict = (
            f"{len(self.blocking)} assumption(s) a run depends on do not hold"
            if self.blocking
            else "every assumption a run depends on holds"
        )
        lines.append(verdict)
        return "\n".join(lines)

    def markdown(self) -> str:
        """The report for a person or an issue: a table, the advice, then every raw output."""
        out = [
            f"# vmtest probe: {self.guest} guest",
            "",
            f"Image `{self.image}` (key `{self.image_key}`). Status: `ok` as documented, `ok*` differs but "
            "vmtest handles it, `DIFFERS` the assumption does not hold, `FAILED` nothing could be observed.",
            "",
            "| check | status | assumption | expected | observed | rows |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for item in self.observations:
            cells = (
                item.check.id,
                _MARK[item.status],
                item.check.assumption,
                item.check.expected,
                item.observed,
                ", ".join(item.check.rows),
            )
            out.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        advice = [item for item in self.mismatches if item.advice]
        if advice:
            out += ["", "## What to do", ""]
            out += [f"- **{item.check.id}**: {item.advice}" for item in advice]
        out += ["", "## Raw outputs", ""]
        for item in self.observations:
            for raw in item.raw:
                out += [
                    f"### {item.check.id}: `{raw.command}` (exit {raw.exit_code}, {raw.encoding})",
                    "",
                    "```",
                    raw.output.rstrip().replace("```", "'''"),
                    "```",
                    "",
                ]
        return "\n".join(out) + "\n"

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write ``probe.json`` and ``probe.md`` into ``folder``; return their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = folder / REPORT_JSON, folder / REPORT_MARKDOWN
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        markdown_path.write_text(self.markdown(), encoding="utf-8")
        return json_path, markdown_path


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
