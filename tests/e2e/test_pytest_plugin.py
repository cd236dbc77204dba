"""The pytest plugin seen from a user's test suite: fixtures, marker, failure reports, JUnit properties."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmtest.images.linux import build_linux_image

pytestmark = pytest.mark.e2e
pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest

def test_passes(run_scenario):
    assert run_scenario("kmutex_recursion").passed

def test_fails_on_purpose(run_scenario, vmtest_guest):
    result = run_scenario("to_owned")
    assert result.passed
    assert vmtest_guest.transport.run(["false"], timeout=30).ok, "deliberate failure"

@pytest.mark.vmtest_guest("windows11")
def test_windows_only(run_scenario):
    raise AssertionError("must be skipped on a linux guest")
"""


def test_plugin_fixtures_marker_and_failure_report(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytester gives the inner run a fresh HOME; keep using the image cache this machine built.
    monkeypatch.setenv("VMTEST_CACHE", str(build_linux_image().root.parent.parent))
    pytester.makepyfile(test_user=USER_TESTS)
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "--vmtest-artifacts", str(tmp_path / "runs"), f"--junitxml={junit}",
        "-o", "junit_family=xunit1", "-rs",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    output = result.stdout.str()
    assert "needs a windows11 guest; the configured guest is linux" in output
    assert "vmtest capture (last lines)" in output and "vmtest artifacts" in output
    properties = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    artifacts = Path(properties["vmtest_artifacts"])
    assert artifacts.is_dir() and (artifacts / "capture.log").is_file()
    assert artifacts.parent == tmp_path / "runs" / "main"
