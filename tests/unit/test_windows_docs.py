"""docs/WINDOWS.md and tests/data/windows/SOURCES.md stay true to the tests they name.

Every row of the Windows behaviour table has a stable ID, a source, and tests that exist; every sample a
scripted guest answers with is listed in the samples' sources file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "WINDOWS.md"
SAMPLES = ROOT / "tests" / "data" / "windows"
ROW_ID = re.compile(r"^W-[A-Z0-9]+(?:-[A-Z0-9]+)*$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


def rows() -> list[list[str]]:
    found = []
    for line in TABLE.read_text().splitlines():
        if line.startswith("| W-"):
            cells = [cell.strip() for cell in CELL_SPLIT.split(line.strip())[1:-1]]
            found.append(cells)
    return found


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_row_has_an_id_a_source_tests_and_a_seen_column() -> None:
    table = rows()
    assert len(table) >= 40
    ids = [row[0] for row in table]
    assert len(ids) == len(set(ids)), "row IDs are unique"
    for row in table:
        assert len(row) == 5, row
        row_id, behaviour, source, replayed, seen = row
        assert ROW_ID.match(row_id), row_id
        assert behaviour and source and replayed, row_id
        assert seen in ("yes", "no"), row_id


def test_every_test_the_table_names_exists() -> None:
    missing = []
    for row in rows():
        for reference in (part.strip() for part in row[3].split(",")):
            path, _, function = reference.partition("::")
            file = ROOT / path
            if not file.is_file() or function not in defined_functions(file):
                missing.append(f"{row[0]}: {reference}")
    assert missing == []


def test_every_windows_sample_is_listed_in_its_sources_file() -> None:
    sources = (SAMPLES / "SOURCES.md").read_text()
    samples = sorted(path.name for path in SAMPLES.iterdir() if path.suffix in (".txt", ".inf"))
    assert samples
    assert [name for name in samples if f"`{name}`" not in sources] == []
