"""A self-contained HTML report: no scripts, no fetches; every guest-provided text escaped.

Per scenario: its verdict and findings with the quoted lines, a timeline of critical sections (threads
by true order, per mutex), and the API calls with their IRQL and result. For the run: the lock-order
graph with any cycle marked, crash details with the screenshot, and links to the raw logs.
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmtest.capture.source import printable
from vmtest.events.protocol import Event
from vmtest.report.model import RunReport, ScenarioReport

__all__ = ["LockEdge", "critical_sections", "render_html", "write_html"]

_RAW_LOGS = ("capture.log", "serial-console.log", "serial-kd.raw", "qemu.log", "qmp-events.jsonl",
             "events.jsonl", "verdicts.json", "vmtest.log", "config.json")  # fmt: skip
_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
.passed{color:#1a7f37}.failed,.crashed,.hang,.error,.infrastructure{color:#cf222e}.skipped,.not_run{color:#777}.warning{color:#9a6700;font-weight:bold}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}
svg{background:#fcfcfc;border:1px solid #ddd}.bad{color:#cf222e;font-weight:bold}
img{max-width:100%;border:1px solid #ccc}
"""


@dataclass(frozen=True)
class LockEdge:
    """'held ``held`` while acquiring ``acquired``', seen in ``scenario``; ``in_cycle`` marks an inversion."""

    held: str
    acquired: str
    in_cycle: bool = False


@dataclass(frozen=True)
class Section:
    """One critical section: a thread held a mutex from one sequence number to another."""

    mutex: str
    thread: str
    start: int
    end: int


def _e(text: object) -> str:
    return html.escape(printable(str(text)), quote=True)


def _lines(lines: Iterable[str]) -> str:
    """Several lines of guest text, each escaped, kept on lines of their own."""
    return "\n".join(_e(line) for line in lines)


def critical_sections(events: Iterable[Event]) -> list[Section]:
    """Outermost acquired→release intervals per (mutex, thread), in sequence order."""
    opened: dict[tuple[str, str], int] = {}
    sections: list[Section] = []
    for event in sorted(events, key=lambda e: e.seq):
        key = (event.mutex, event.thread)
        depth = event.int("depth", 1)
        if event.ev == "acquired" and depth == 1:
            opened[key] = event.seq
        elif event.ev == "release" and depth == 1 and key in opened:
            sections.append(Section(event.mutex, event.thread, opened.pop(key), event.seq))
    return sections


def _timeline(events: Sequence[Event]) -> str:
    sections = critical_sections(events)
    if not sections:
        return "<p>No critical sections were recorded.</p>"
    lanes = sorted({(s.mutex, s.thread) for s in sections})
    first = min(s.start for s in sections)
    last = max(s.end for s in sections)
    width, lane_height, left = 900, 18, 160
    scale = (width - left - 10) / max(1, last - first)
    height = lane_height * len(lanes) + 30
    mutexes = sorted({m for m, _ in lanes})
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="critical sections">']
    for index, (mutex, thread) in enumerate(lanes):
        y = 10 + index * lane_height
        parts.append(f'<text x="4" y="{y + 12}" font-size="11">{_e(mutex)} · thread {_e(thread)}</text>')
    for section in sections:
        y = 10 + lanes.index((section.mutex, section.thread)) * lane_height
        x = left + (section.start - first) * scale
        w = max(1.5, (section.end - section.start) * scale)
        colour = _COLOURS[mutexes.index(section.mutex) % len(_COLOURS)]
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{lane_height - 4}" fill="{colour}">'
            f"<title>{_e(section.mutex)} held by thread {_e(section.thread)}: seq {section.start}-{section.end}"
            "</title></rect>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" font-size="11">sequence {first} → {last} (the true order of '
        "critical sections)</text></svg>"
    )
    return "".join(parts)


def _lock_graph(edges: Sequence[LockEdge]) -> str:
    if not edges:
        return "<p>No lock was ever taken while another was held.</p>"
    nodes = sorted({e.held for e in edges} | {e.acquired for e in edges})
    size, radius = 420, 160
    centre = size / 2
    where = {
        node: (
            centre + radius * math.cos(2 * math.pi * i / len(nodes)),
            centre + radius * math.sin(2 * math.pi * i / len(nodes)),
        )
        for i, node in enumerate(nodes)
    }
    parts = [
        f'<svg width="{size}" height="{size}" role="img" aria-label="lock-order graph"><defs>'
        '<marker id="arrow" viewBox="0 0 10 10" refX="22" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>'
    ]
    for edge in edges:
        (x1, y1), (x2, y2) = where[edge.held], where[edge.acquired]
        colour = "#cf222e" if edge.in_cycle else "#555"
        width = 3 if edge.in_cycle else 1.5
        parts.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
            f'stroke-width="{width}" marker-end="url(#arrow)"><title>held {_e(edge.held)} while acquiring '
            f"{_e(edge.acquired)}{' (part of a cycle)' if edge.in_cycle else ''}</title></line>"
        )
    for node, (x, y) in where.items():
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="16" fill="#fff" stroke="#333"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{y + 30:.1f}" font-size="11" text-anchor="middle">{_e(node)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _calls(events: Sequence[Event]) -> str:
    calls = [e for e in events if e.ev == "call"]
    if not calls:
        return ""
    rows = "".join(
        f"<tr><td>{e.seq}</td><td>{_e(e.get('op'))}</td><td>{_e(e.get('k', '-'))}</td><td>{_e(e.get('m', '-'))}</td>"
        f"<td>{_e(e.get('irql'))}</td><td>{_e(e.get('r'))}</td></tr>"
        for e in calls
    )
    return (
        "<h4>API calls (IRQL at the call, result)</h4><table><tr><th>seq</th><th>op</th><th>kind</th>"
        f"<th>mutex</th><th>IRQL</th><th>result</th></tr>{rows}</table>"
    )


def _scenario(scenario: ScenarioReport, events: Sequence[Event]) -> str:
    findings = "".join(
        f"<li><b>{_e(f.check)}</b>: {_e(f.message)}"
        + (f"<pre>{_lines(f.lines)}</pre>" if f.lines else "")
        + "</li>"
        for f in scenario.findings
    )
    return (
        f'<h3 id="sc-{_e(scenario.name)}">{_e(scenario.name)}: '
        f'<span class="{_e(scenario.status)}">{_e(scenario.status)}</span></h3>'
        + (f"<ul>{findings}</ul>" if findings else "")
        + "<h4>Critical sections</h4>"
        + _timeline(events)
        + _calls(events)
    )


def _screenshot(path: Path) -> str:
    try:
        data = base64.b64encode(path.read_bytes()).decode()
    except OSError:
        return f"<p>screenshot {_e(path.name)} could not be read</p>"
    return f'<figure><img alt="{_e(path.name)}" src="data:image/png;base64,{data}"><figcaption>{_e(path.name)}</figcaption></figure>'


def render_html(report: RunReport, events: Sequence[Event], edges: Sequence[LockEdge]) -> str:
    """The report as one HTML document."""
    by_scenario: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_scenario[event.scenario].append(event)
    rows = "".join(
        f'<tr><td><a href="#sc-{_e(s.name)}">{_e(s.name)}</a></td><td class="{_e(s.status)}">{_e(s.status)}</td>'
        f"<td>{_e(s.findings[0].message if s.findings else '')}</td></tr>"
        for s in report.scenarios
    )
    logs = " · ".join(
        f'<a href="{_e(name)}">{_e(name)}</a>' for name in _RAW_LOGS if report.artifact(name).exists()
    )
    crashes = "".join(f"<pre>{_lines(_crash_lines(crash))}</pre>" for crash in report.crashes)
    shots = "".join(_screenshot(p) for p in report.screenshots)
    tail = _lines(report.capture_tail)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>vmtest: {_e(report.driver)} — {_e(report.status)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>vmtest: {_e(report.driver)} on {_e(report.guest)} — "
        f'<span class="{_e(report.status)}">{_e(report.status)}</span></h1>'
        + (f"<p>{_e(report.message)}</p>" if report.message else "")
        + "".join(f'<p class="note">{_e(note)}</p>' for note in report.notes)
        + "".join(f'<p class="warning">Warning: {_e(warning)}</p>' for warning in report.warnings)
        + f"<p>{sum(1 for s in report.scenarios if s.passed)} of {len(report.scenarios)} scenario(s) passed in "
        f"{report.duration:.1f}s. Raw logs: {logs}</p>"
        f"<table><tr><th>scenario</th><th>verdict</th><th>first finding</th></tr>{rows}</table>"
        "<h2>Lock-order graph</h2><p>An arrow means a thread held the first mutex while acquiring the second; "
        "red arrows form a cycle: a potential deadlock.</p>"
        + _lock_graph(edges)
        + _two_referees(report.scenarios)
        + ("<h2>Crashes</h2>" + crashes if crashes else "")
        + "<h2>Scenarios</h2>"
        + "".join(_scenario(s, by_scenario.get(s.name, [])) for s in report.scenarios)
        + ("<h2>Screenshots</h2>" + shots if shots else "")
        + f"<h2>Last lines captured</h2><pre>{tail}</pre></body></html>"
    )


def _two_referees(scenarios: Sequence[ScenarioReport]) -> str:
    """Lock-order findings of vmtest's graph beside Driver Verifier's, per scenario that has either."""
    rows = []
    for scenario in scenarios:
        ours = [f.message for f in scenario.findings if f.check == "lock_order"]
        verifier = [f.message for f in scenario.findings if f.check == "verifier"]
        if ours or verifier:
            rows.append(
                f"<tr><td>{_e(scenario.name)}</td><td><pre>{_lines(ours or ['none'])}</pre></td>"
                f"<td><pre>{_lines(verifier or ['none'])}</pre></td></tr>"
            )
    if not rows:
        return ""
    return (
        "<h2>Lock order: two referees</h2><p>vmtest's lock-order graph and Driver Verifier (deadlock "
        "detection, IRQL checking) judged the same scenarios independently.</p>"
        "<table><tr><th>scenario</th><th>vmtest's lock-order graph</th><th>Driver Verifier</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _crash_lines(crash: dict[str, object]) -> list[str]:
    return [f"{key}: {value}" for key, value in crash.items()]


def write_html(report: RunReport, events: Sequence[Event], edges: Sequence[LockEdge], path: Path) -> Path:
    """Write the HTML report to ``path``."""
    path.write_text(render_html(report, events, edges), encoding="utf-8")
    return path
