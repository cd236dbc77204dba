"""``vmtest merge-reports``: one JUnit file, one verdicts file and one job summary from the shards of a run.

Each shard directory holds what a sharded ``vmtest run`` left: a ``junit.xml`` and, somewhere below it,
its run directory's ``verdicts.json``. A shard that left nothing is reported as missing, which fails
the merged result: a shard that did not report is not a pass.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from vmtest.errors import EXIT_TEST_FAILURE

__all__ = ["merge_command", "merge_shards"]


def _load_verdicts(shard: Path) -> dict[str, Any] | None:
    found = sorted(shard.rglob("verdicts.json"))
    if not found:
        return None
    try:
        data: dict[str, Any] = json.loads(found[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def merge_shards(output: Path, shards: list[Path]) -> dict[str, Any]:
    """Merge ``shards`` into ``output`` (``junit.xml``, ``verdicts.json``); return the merged verdicts."""
    output.mkdir(parents=True, exist_ok=True)
    suites = ET.Element("testsuites", name="vmtest")
    scenarios: list[dict[str, Any]] = []
    missing: list[str] = []
    statuses: list[str] = []
    for shard in shards:
        junit = shard / "junit.xml"
        if junit.is_file():
            try:
                suites.append(ET.parse(junit).getroot())
            except ET.ParseError:
                missing.append(f"{shard} (unreadable junit.xml)")
        verdicts = _load_verdicts(shard)
        if verdicts is None:
            missing.append(str(shard))
            continue
        statuses.append(str(verdicts.get("status", "failed")))
        for item in verdicts.get("scenarios", []):
            scenarios.append({**item, "shard": shard.name})
    passed = not missing and bool(scenarios) and all(s == "passed" for s in statuses)
    merged = {"passed": passed, "missing_shards": missing, "shard_statuses": statuses, "scenarios": scenarios}
    ET.indent(suites)
    ET.ElementTree(suites).write(output / "junit.xml", encoding="utf-8", xml_declaration=True)
    (output / "verdicts.json").write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return merged


def _summary(merged: dict[str, Any]) -> str:
    lines = [f"## vmtest (all shards): {'passed' if merged['passed'] else 'failed'}", ""]
    lines += ["| scenario | shard | verdict |", "| --- | --- | --- |"]
    for item in merged["scenarios"]:
        name = str(item.get("name", "")).replace("|", "\\|")
        lines.append(f"| `{name}` | {item.get('shard', '')} | {item.get('status', '')} |")
    for shard in merged["missing_shards"]:
        lines.append(f"\n**missing shard:** `{shard}` left no verdicts (it failed before reporting)")
    return "\n".join(lines) + "\n"


def merge_command(output: Path, shards: list[Path]) -> int:
    """Merge, print the summary (and append it to ``GITHUB_STEP_SUMMARY``); 0 only if every shard passed."""
    merged = merge_shards(output, shards)
    text = _summary(merged)
    print(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(text)
    if merged["missing_shards"]:
        print(f"vmtest: {len(merged['missing_shards'])} shard(s) left no verdicts", file=sys.stderr)
    return 0 if merged["passed"] else EXIT_TEST_FAILURE
