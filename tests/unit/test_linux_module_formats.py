"""The Linux mutex module's printk formats against vmtest's event parser and the protocol's text.

Everything is read from the sources: the ``VMTEST1`` formats from the module's C files, the names it
prints from its C tables, the events, keys and names from drivers/PROTOCOL.md. A format rendered with
sample values must be a line ``parse_line`` accepts with a known ``ev`` and the keys the protocol
requires, so the module and the parser cannot drift apart silently.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmtest.events.protocol import EVENT_KINDS, MAX_LINE, parse_line

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "drivers" / "linux-mutex-tests"
PROTOCOL = ROOT / "drivers" / "PROTOCOL.md"
GOLDEN = ROOT / "drivers" / "event-golden.txt"
FORMATS_HEADER = "vm_events.h"

# Keys the module adds beyond PROTOCOL.md's table (the protocol lets consumers ignore unknown keys):
# ctx= on call events names the Linux context behind the irql number (README.md of the module).
EXTENSION_KEYS = {"call": {"ctx"}}

_C_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_DEFINE = re.compile(r'^#define\s+(VM_EV_\w+)\s+"((?:[^"\\\n]|\\.)*)"\s*$', re.M)
_SPEC = re.compile(
    r"%(?P<flags>[-+ #0]*)(?P<width>\d*)(?:\.(?P<precision>\d+))?(?:hh|h|ll|l|z|t|j)?(?P<conv>[diuxs%])"
)
_VALUE = re.compile(r"[A-Za-z0-9_.:,+-]+")


@functools.cache
def module_sources() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(MODULE.glob("*.[ch]"))}


def without_comments(source: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", source, flags=re.S)


def c_unescape(literal: str) -> str:
    return literal.encode().decode("unicode_escape")


@dataclass(frozen=True)
class Format:
    name: str
    text: str
    """The format without its trailing newline."""


def event_formats() -> list[Format]:
    header = (MODULE / FORMATS_HEADER).read_text()
    formats = []
    for name, literal in _DEFINE.findall(header):
        text = c_unescape(literal)
        assert text.endswith("\n") and text.count("\n") == 1, f"{name} must end with exactly one newline"
        formats.append(Format(name, text[:-1]))
    return formats


def c_table(source: str, array: str) -> list[str]:
    """The strings of ``static const char *const <array>[...] = { ... };`` in ``source``."""
    match = re.search(rf"\b{array}\[[^\]]*\]\s*=\s*\{{(.*?)\}};", module_sources()[source], re.S)
    assert match, f"no table {array} in {source}"
    return _C_STRING.findall(match.group(1))


def scenario_table() -> list[tuple[str, bool]]:
    """(name, negative) for each row of VM_SCENARIO_ROWS, the catalogue's scenarios (vm_catalogue.h)."""
    match = re.search(r"#define VM_SCENARIO_ROWS \\\n(.*?)\n\n", module_sources()["vm_catalogue.h"], re.S)
    assert match
    rows = re.findall(r'\{\s*"(\w+)",\s*(true|false),', match.group(1))
    return [(name, negative == "true") for name, negative in rows]


def protocol_sections() -> dict[str, str]:
    text = PROTOCOL.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def protocol_event_table() -> dict[str, tuple[set[str], set[str]]]:
    """ev -> (required keys, optional keys), from PROTOCOL.md's Events table."""
    table = {}
    for row in re.findall(
        r"^\| `([a-z-]+)` \|[^|]*\|([^|]*)\|([^|]*)\|$", protocol_sections()["Events"], re.M
    ):
        name, required, optional = row
        if name == "ev":
            continue  # the header row
        table[name] = (
            {token.split("=")[0] for token in re.findall(r"`([^`]+)`", required)},
            {token.split("=")[0] for token in re.findall(r"`([^`]+)`", optional)},
        )
    return table


def protocol_names(key: str) -> set[str]:
    """The backticked value names in PROTOCOL.md's bullet for ``key`` (the ``- `key`: ...`` item)."""
    text = protocol_sections()["Events"]
    match = re.search(rf"^- `{key}`:(.*?)(?=^- |^$)", text, re.M | re.S)
    assert match, f"no bullet for {key} in PROTOCOL.md"
    return {token for token in re.findall(r"`([^`]+)`", match.group(1)) if _VALUE.fullmatch(token)}


def protocol_scenarios() -> list[str]:
    return re.findall(r"^\| `([a-z_]+)` \|", protocol_sections()["Scenarios"], re.M)


@functools.cache
def samples() -> dict[str, list[str]]:
    """Sample values per key, taken from the module's own tables where it has them."""
    return {
        "sc": [name for name, _ in scenario_table()],
        "r": c_table("vm_mutex.c", "vm_result_names"),
        "k": c_table("vm_mutex.c", "vm_kind_names"),
        "ctx": c_table("vm_mutex.c", "vm_ctx_names"),
        "op": sorted(module_ops()),
        "outcome": sorted(module_outcomes()),
        "driver": [define("VM_DRIVER_NAME")],
        "build": [define("VM_DRIVER_VERSION")],
        "params": ["threads:3,iterations:500", "-"],
        "m": ["counter", "km_owned"],
        "msg": ["free text: with spaces, (parentheses) and = signs", "x" * 300],
    }


def define(name: str) -> str:
    match = re.search(rf'^#define\s+{name}\s+"([^"]*)"', (MODULE / FORMATS_HEADER).read_text(), re.M)
    assert match, name
    return match.group(1)


def module_ops() -> set[str]:
    source = module_sources()["scenarios.c"]
    ops = set(re.findall(r'vm_ev_call(?:_mutex)?\([^,]+,\s*"(\w+)"', source))
    ops |= set(re.findall(r'\{\s*"(\w+)",\s*(?:"\w+"|NULL),', module_sources()["vm_catalogue.h"]))
    return ops


def module_outcomes() -> set[str]:
    return set(re.findall(r'outcome\s*=\s*"(\w+)"', module_sources()["scenarios.c"]))


def render(fmt: Format, chosen: dict[str, str], number: str = "7") -> str:
    """``fmt`` with each conversion replaced by a sample value for the key it stands after."""

    def substitute(match: re.Match[str]) -> str:
        conv = match.group("conv")
        if conv == "%":
            return "%"
        key_match = re.search(r"(\w+)=$", fmt.text[: match.start()])
        assert key_match, f"{fmt.name}: a conversion that is not a key's value: {match.group()}"
        key = key_match.group(1)
        if conv != "s":
            return "1" if key == "seq" else number
        value = chosen.get(key) or samples()[key][0]
        precision = match.group("precision")
        return value[: int(precision)] if precision else value

    return _SPEC.sub(substitute, fmt.text)


def renderings(fmt: Format) -> Iterator[str]:
    """The format once with the first samples, then once per other sample of each key it uses."""
    yield render(fmt, {})
    keys = re.findall(r"(\w+)=%[-+ #0\d.]*s", fmt.text)
    table = samples()
    for key in keys:
        for value in table[key][1:]:
            yield render(fmt, {key: value})


FORMATS = event_formats()


def test_every_event_format_is_one_define_in_the_header() -> None:
    assert FORMATS, f"no VM_EV_* formats in {FORMATS_HEADER}"
    for name, source in module_sources().items():
        literals = [lit for lit in _C_STRING.findall(without_comments(source)) if "VMTEST1" in lit]
        if name == FORMATS_HEADER:
            assert len(literals) == len(FORMATS), (
                "a VMTEST1 literal in the header that is not a VM_EV_ define"
            )
        else:
            assert not literals, f"{name} has its own VMTEST1 format: move it to {FORMATS_HEADER}"
    assert "pr_info(fmt" in (MODULE / FORMATS_HEADER).read_text(), "vm_event() prints the format as given"


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_format_renders_to_lines_the_parser_accepts(fmt: Format) -> None:
    assert fmt.text.startswith("VMTEST1 seq=%llu ev="), "seq first, ev second"
    table = protocol_event_table()
    for line in renderings(fmt):
        event = parse_line(f"[   12.345678] {line}")
        assert event is not None, line
        assert event.ev in EVENT_KINDS and event.ev in table, line
        assert event.seq == 1
        required, optional = table[event.ev]
        keys = set(event.fields) | ({"msg"} if event.msg is not None else set())
        assert required <= keys, f"{fmt.name} lacks {sorted(required - keys)}"
        extra = keys - required - optional - EXTENSION_KEYS.get(event.ev, set())
        assert not extra, f"{fmt.name} has keys PROTOCOL.md does not list: {sorted(extra)}"
        if "proto" in event.fields:
            assert event.fields["proto"] == "1"
        assert len(line.encode()) <= MAX_LINE, f"{fmt.name} renders {len(line.encode())} bytes"


def test_the_module_prints_every_event_kind() -> None:
    events = [parse_line(render(fmt, {})) for fmt in FORMATS]
    kinds = {event.ev for event in events if event is not None}
    assert kinds == EVENT_KINDS == set(protocol_event_table())


def test_each_golden_line_has_a_format_with_its_keys() -> None:
    section = GOLDEN.read_text().split("[canonical]")[1].split("[wrapped]")[0]
    parsed = [(fmt, parse_line(render(fmt, {}))) for fmt in FORMATS]
    for line in section.splitlines():
        golden = parse_line(line)
        if golden is None:
            continue
        matching = [
            fmt.name
            for fmt, event in parsed
            if event is not None
            and event.ev == golden.ev
            and set(golden.fields) <= set(event.fields)
            and (golden.msg is None) == (event.msg is None)
        ]
        assert matching, f"no module format prints a line like: {line}"


def test_the_names_the_module_prints_are_the_protocols() -> None:
    table = [name for name, _ in scenario_table()]
    assert table == protocol_scenarios(), "the same scenario names, in the same order, as PROTOCOL.md"
    source = module_sources()["scenarios.c"]
    for name, _ in scenario_table():
        assert f"[VM_SC_{name.upper()}] = vm_sc_{name}," in source, f"{name}: not in vm_scenario_fns"
    for name, negative in scenario_table():
        assert negative == name.startswith("neg_"), name
    assert set(c_table("vm_mutex.c", "vm_result_names")) == protocol_names("r")
    assert set(c_table("vm_mutex.c", "vm_kind_names")) <= protocol_names("k")
    assert module_ops() <= protocol_names("op")
    assert module_outcomes() <= protocol_names("outcome")
    for key, values in samples().items():
        for value in values:
            assert key == "msg" or _VALUE.fullmatch(value), f"{key}={value!r} is not a valid value"
