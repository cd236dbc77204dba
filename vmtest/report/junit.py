"""JUnit XML: one test case per scenario, failures with the quoted lines, artifacts as properties."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from vmtest.capture.source import printable
from vmtest.report.model import RunReport

__all__ = ["write_junit"]

_ARTIFACTS = ("capture.log", "serial-console.log", "qemu.log", "events.jsonl", "verdicts.json", "report.html")


def _xml_safe(text: str) -> str:
    """Guest text, escaped for terminals and stripped of what XML 1.0 cannot hold; line breaks kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


def write_junit(report: RunReport, path: Path) -> Path:
    """Write the JUnit XML for ``report`` to ``path``."""
    suite = ET.Element(
        "testsuite",
        name=f"vmtest.{report.driver}",
        tests=str(len(report.scenarios)),
        failures=str(sum(1 for s in report.scenarios if s.status == "failed")),
        errors=str(sum(1 for s in report.scenarios if s.status not in ("passed", "failed", "skipped"))),
        skipped=str(sum(1 for s in report.scenarios if s.status == "skipped")),
        time=f"{report.duration:.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="guest", value=report.guest)
    ET.SubElement(properties, "property", name="run_dir", value=str(report.run_dir))
    for name in _ARTIFACTS:
        if report.artifact(name).exists():
            ET.SubElement(properties, "property", name=f"artifact:{name}", value=str(report.artifact(name)))
    for shot in report.screenshots:
        ET.SubElement(properties, "property", name="screenshot", value=str(shot))
    for warning in report.warnings:
        ET.SubElement(properties, "property", name="warning", value=_xml_safe(warning))
    for scenario in report.scenarios:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"vmtest.{report.driver}",
            name=scenario.name,
            time=f"{scenario.duration:.3f}",
        )
        if scenario.status == "skipped":
            ET.SubElement(case, "skipped", message=_xml_safe(_summary(scenario.findings) or "skipped"))
        elif not scenario.passed:
            kind = "failure" if scenario.status == "failed" else "error"
            element = ET.SubElement(
                case, kind, message=_xml_safe(f"{scenario.status}: {_summary(scenario.findings)}")
            )
            element.text = _xml_safe(
                "\n\n".join(
                    "\n".join([f"[{f.check}] {f.message}", *(f"  {line}" for line in f.lines)])
                    for f in scenario.findings
                )
            )
    if report.capture_tail:
        out = ET.SubElement(suite, "system-out")
        out.text = _xml_safe("\n".join(report.capture_tail))
    tree = ET.ElementTree(suite)
    ET.indent(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def _summary(findings: tuple[object, ...]) -> str:
    messages = [getattr(f, "message", "") for f in findings]
    return "; ".join(m for m in messages if m)[:500]
