"""``vmtest probe`` against the Linux self-test guest: the transport and report plumbing, for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmtest.cli import main

pytestmark = pytest.mark.e2e


def test_the_probe_checks_the_linux_guest_and_writes_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["probe", "--artifacts", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = json.loads(out)
    (run_dir,) = tmp_path.glob("probe-*")
    written = json.loads((run_dir / "probe" / "probe.json").read_text())
    assert written == printed
    by_id = {item["id"]: item for item in written["observations"]}
    assert set(by_id) == {"kernel", "shell", "module-tools", "rmmod-missing-module"}
    assert {item["status"] for item in by_id.values()} == {"as-expected"}, err
    assert by_id["shell"]["raw"][0]["output"] == "42"
    assert "vmtest_probe_missing" in by_id["rmmod-missing-module"]["raw"][0]["output"]
    assert "every assumption a run depends on holds" in err
    assert "| kernel | ok |" in (run_dir / "probe" / "probe.md").read_text()
