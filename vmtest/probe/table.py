"""Filling the "Seen" column of the Windows behaviour table (``docs/WINDOWS.md``) from a probe report.

The column says whether a behaviour was seen on a real Windows 11 VM; it is written only from what a
probe of a real guest observed (``vmtest probe --record probe.json``), never by hand. A row whose
checks matched becomes ``yes``; a row a check found different becomes ``differs: <what was seen>``,
for a maintainer to correct the row from the report's raw outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["record_report", "table_ids"]

_ROW = re.compile(r"^\| (?P<id>W-[A-Z0-9-]+) \|")
_SEEN_OK = ("as-expected", "differs-handled")


def table_ids(table: str) -> set[str]:
    """Every row ID of the behaviour table."""
    return {match["id"] for line in table.splitlines() if (match := _ROW.match(line))}


def record_report(table: str, report: Mapping[str, object]) -> str:
    """``table`` with the Seen column of each row the report's observations name brought up to date.

    Raises ValueError for a report naming a row the table does not have (table and probe disagree).
    """
    seen: dict[str, str] = {}
    observations = report.get("observations")
    if not isinstance(observations, Sequence):
        raise ValueError("not a probe report: it has no observations")
    for item in observations:
        if not isinstance(item, Mapping):
            continue
        status = str(item.get("status", ""))
        for row in item.get("rows", ()):
            if status in _SEEN_OK and seen.get(row, "yes") == "yes":
                seen[row] = "yes"
            elif status == "differs":
                seen[row] = "differs: " + str(item.get("observed", "")).replace("|", "/")[:120]
    unknown = sorted(set(seen) - table_ids(table))
    if unknown:
        raise ValueError(f"the report names rows the table lacks: {', '.join(unknown)}")
    lines = []
    for line in table.splitlines():
        match = _ROW.match(line)
        if match and match["id"] in seen:
            cells = line.rstrip().rstrip("|").split(" | ")
            cells[-1] = seen[match["id"]]
            line = " | ".join(cells) + " |"
        lines.append(line)
    return "\n".join(lines) + "\n"
