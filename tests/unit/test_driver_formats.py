"""The test drivers' event formats against PROTOCOL.md, the golden file and vmtest's parser.

Nothing here compiles a driver. The events each driver can print are read from its SOURCES and
rendered with sample values, so a driver, the protocol crate, PROTOCOL.md and the parser cannot drift
apart silently:

* PROTOCOL.md is parsed for its event table (required and optional keys per ``ev``), the value lists
  of ``k``, ``op``, ``r``, ``outcome`` and ``os``, and the scenario names.
* ``drivers/wdk-mutex-tests/event-protocol/src`` (the Rust crate) gives the ``Event`` variant -> ``ev``
  mapping and the spelling of every name (``Op::GrtGet`` -> ``grt_get``).
* Each driver source gives its events. The Windows driver builds every event as an
  ``Event::Variant { key: expr, ... }`` literal: the keys it sets are its field names (a field set to a
  literal ``None`` is absent), and literal values (``"..."``, ``Op::Lock``, ``Some(Os::Windows)``, a
  ``const`` string) are used as the sample values.

Every rendered line must have a known ``ev``, the required keys, no key PROTOCOL.md does not list,
values from the documented lists, and must parse back to the same fields with
``vmtest.events.protocol.parse_line``.

Adding a driver: write a function returning its ``Rendered`` lines and add it to ``SOURCES``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmtest.events.protocol import EVENT_KINDS, Event, ProtocolError, format_event, parse_line

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "drivers"
PROTOCOL_MD = DRIVERS / "PROTOCOL.md"
GOLDEN = DRIVERS / "event-golden.txt"
CRATE_SRC = DRIVERS / "wdk-mutex-tests" / "event-protocol" / "src"
WINDOWS_DRIVER_SRC = DRIVERS / "wdk-mutex-tests" / "src"

VALUE = re.compile(r"^[A-Za-z0-9_.:,+-]+$")
VOCABULARY_KEYS = ("k", "op", "r", "outcome", "os")
"""Keys whose values PROTOCOL.md lists."""

SAMPLES: Mapping[str, str] = {
    "driver": "sample_driver",
    "proto": "1",
    "os": "windows",
    "build": "0.1.0",
    "sc": "kmutex_contention",
    "params": "threads:3,iterations:500",
    "t": "1",
    "m": "counter",
    "k": "kmutex",
    "irql": "0",
    "depth": "1",
    "op": "lock",
    "r": "Ok",
    "value": "1500",
    "expected": "1500",
    "iterations": "500",
    "outcome": "done",
    "scenarios": "2",
}
"""A valid value for every key, used where the source does not give a literal."""
SAMPLE_MSG = "a sample message: 2 spaces  and = signs"

VOCABULARY_EVENT = {"k": "mutex", "op": "call", "r": "call", "outcome": "scenario-end", "os": "run-start"}
"""An event that carries each vocabulary key, to render a line for every value a driver uses."""


# --------------------------------------------------------------------------------------- PROTOCOL.md


@dataclass(frozen=True)
class EventSpec:
    """One row of PROTOCOL.md's event table."""

    required: frozenset[str]
    optional: frozenset[str]

    @property
    def allowed(self) -> frozenset[str]:
        return self.required | self.optional


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _key_name(token: str) -> str:
    return token.partition("=")[0]  # `proto=1` is the key proto with a fixed value


def protocol_events() -> dict[str, EventSpec]:
    """The event table: ``ev`` -> required and optional keys."""
    specs: dict[str, EventSpec] = {}
    for row in _section(PROTOCOL_MD.read_text(), "Events").splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`") or cells[1] == "when":
            continue  # not a row, or the header row
        specs[_ticked(cells[0])[0]] = EventSpec(
            required=frozenset(_key_name(token) for token in _ticked(cells[2])),
            optional=frozenset(_key_name(token) for token in _ticked(cells[3])),
        )
    return specs


def protocol_vocabulary() -> dict[str, frozenset[str]]:
    """The documented values of ``k``, ``op``, ``r``, ``outcome``, ``os``.

    The backticked words after the key's name and a colon, up to the end of its bullet or the next
    "; " that introduces another key. Words in parentheses count only when the parentheses hold
    nothing but such words: the list of error names does, a remark quoting type names does not.
    """
    keys_text = _section(PROTOCOL_MD.read_text(), "Events")
    vocabulary: dict[str, frozenset[str]] = {}
    for key in VOCABULARY_KEYS:
        start = keys_text.index(f"`{key}`:") + len(f"`{key}`:")
        ends = (keys_text.find("\n- ", start), keys_text.find("\n\n", start))
        text = keys_text[start : min((at for at in ends if at >= 0), default=len(keys_text))]
        words: set[str] = set()
        depth, outside, group = 0, [], ""
        for index, char in enumerate(text):
            if depth == 0 and text.startswith("; `", index):
                break
            if char == "(":
                depth, group = depth + 1, ""
            elif char == ")" and depth:
                depth -= 1
                if not re.sub(r"`[^`]+`|[,\s.]", "", group):
                    words.update(_ticked(group))
            elif depth:
                group += char
            else:
                outside.append(char)
        words.update(_ticked("".join(outside)))
        vocabulary[key] = frozenset(word for word in words if VALUE.match(word))
    return vocabulary


def protocol_scenarios() -> frozenset[str]:
    """The scenario names of PROTOCOL.md's scenario table."""
    names = set()
    for row in _section(PROTOCOL_MD.read_text(), "Scenarios").splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            names.add(_ticked(cells[0])[0])
    return frozenset(names)


# ------------------------------------------------------------------------------------ Rust sources


def strip_comments(source: str) -> str:
    """Rust source without ``//`` comments (string literals are kept; block comments are not used)."""
    out: list[str] = []
    in_string = False
    index = 0
    while index < len(source):
        char = source[index]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(source[index + 1])
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif source.startswith("//", index):
            newline = source.find("\n", index)
            index = len(source) if newline < 0 else newline
            continue
        else:
            out.append(char)
        index += 1
    return "".join(out)


def rust_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.rs"))


def crate_event_names() -> dict[str, str]:
    """``Event`` variant -> ``ev``, from the crate's ``Event::ev``."""
    source = strip_comments((CRATE_SRC / "event.rs").read_text())
    return dict(re.findall(r'Self::(\w+)\s*\{\s*\.\.\s*\}\s*=>\s*"([a-z-]+)"', source))


def crate_names() -> dict[str, dict[str, str]]:
    """Enum -> variant -> protocol spelling, from the ``names!`` blocks of the crate."""
    source = strip_comments((CRATE_SRC / "names.rs").read_text())
    tables: dict[str, dict[str, str]] = {}
    for enum, body in re.findall(r"names!\s*\{\s*pub enum (\w+)\s*\{(.*?)\}\s*\}", source, re.DOTALL):
        tables[enum] = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', body))
    return tables


ENUM_OF_KEY = {"k": "MutexKind", "op": "Op", "r": "CallResult", "outcome": "Outcome", "os": "Os"}


def _balanced(text: str, open_at: int) -> str:
    """The text between the brace at ``open_at`` and its partner."""
    depth = 0
    for index in range(open_at, len(text)):
        if text[index] in "([{":
            depth += 1
        elif text[index] in ")]}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : index]
    raise ValueError(f"unbalanced brace at offset {open_at}")


def _top_level_split(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


@dataclass(frozen=True)
class Construction:
    """One ``Event::Variant { ... }`` literal in a driver's source."""

    where: str
    variant: str
    fields: Mapping[str, str]
    """Field name -> the expression it is set to."""


def event_constructions(folder: Path) -> list[Construction]:
    found: list[Construction] = []
    for path in rust_files(folder):
        source = strip_comments(path.read_text())
        for match in re.finditer(r"\bEvent::(\w+)\s*\{", source):
            body = _balanced(source, match.end() - 1)
            if body.strip() == "..":
                continue  # a pattern, not a construction
            fields: dict[str, str] = {}
            for part in _top_level_split(body):
                name, colon, expression = part.partition(":")
                fields[name.strip()] = expression.strip() if colon else name.strip()
            line = source.count("\n", 0, match.start()) + 1
            found.append(Construction(f"{path.relative_to(ROOT)}:{line}", match.group(1), fields))
    return found


def vocabulary_uses(folder: Path) -> set[tuple[str, str]]:
    """Every ``MutexKind::X``, ``Op::X``, ``CallResult::X``, ``Outcome::X``, ``Os::X`` in the sources."""
    enums = "|".join(ENUM_OF_KEY.values())
    uses: set[tuple[str, str]] = set()
    for path in rust_files(folder):
        uses.update(re.findall(rf"\b({enums})::(\w+)\b", strip_comments(path.read_text())))
    return uses


def string_consts(folder: Path) -> dict[str, str]:
    """``const NAME: &str = "value";`` across the sources."""
    consts: dict[str, str] = {}
    for path in rust_files(folder):
        consts.update(re.findall(r'const (\w+): &(?:\'static )?str = "([^"]*)";', path.read_text()))
    return consts


# --------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendered:
    """A line a driver can print, rendered with sample values, and where it came from."""

    source: str
    where: str
    ev: str
    fields: Mapping[str, str]
    msg: str | None = None
    seq: int = 7
    line: str = field(init=False)

    def __post_init__(self) -> None:
        event = Event(seq=self.seq, ev=self.ev, fields=dict(self.fields), msg=self.msg)
        object.__setattr__(self, "line", format_event(event))


Names = Mapping[str, Mapping[str, str]]
"""Enum -> variant -> protocol spelling."""


def _literal(expression: str, names: Names, consts: Mapping[str, str]) -> str | None:
    """The protocol value of a literal field expression, or None when it is computed at run time."""
    inner = expression
    some = re.fullmatch(r"Some\((.*)\)", expression, re.DOTALL)
    if some:
        inner = some.group(1).strip()
    if string := re.fullmatch(r'"([^"\\]*)"', inner):
        return string.group(1)
    if path := re.fullmatch(r"(\w+)::(\w+)", inner):
        table = names.get(path.group(1))
        if table is None or path.group(2) not in table:
            return None
        return table[path.group(2)]
    return consts.get(inner)


def _render(source: str, where: str, ev: str, keys: Mapping[str, str | None], msg: str | None) -> Rendered:
    fields = {key: SAMPLES[key] if value is None else value for key, value in keys.items() if key != "msg"}
    return Rendered(source=source, where=where, ev=ev, fields=fields, msg=msg)


IMPLICIT_KEYS: Mapping[str, Mapping[str, str]] = {"run-start": {"proto": "1"}}
"""Keys the crate writes itself: ``Event::RunStart`` always carries ``proto=1``."""


def rust_driver_lines(source: str, folder: Path) -> list[Rendered]:
    """Every event a Rust driver built on the event-protocol crate can print, with sample values."""
    ev_of = crate_event_names()
    names = crate_names()
    consts = string_consts(folder)
    specs = protocol_events()
    lines: list[Rendered] = []
    for construction in event_constructions(folder):
        ev = ev_of.get(construction.variant)
        if ev is None:
            raise AssertionError(f"{construction.where}: Event::{construction.variant} is not in the crate")
        present = {key: expr for key, expr in construction.fields.items() if expr != "None"}
        values: dict[str, str | None] = {key: _literal(expr, names, consts) for key, expr in present.items()}
        values.update(IMPLICIT_KEYS.get(ev, {}))
        msg = SAMPLE_MSG if "msg" in present else None
        lines.append(_render(source, construction.where, ev, values, msg))
        # Optional keys the source may leave out at run time (an Option that is not a literal Some).
        optional = specs[ev].optional if ev in specs else frozenset()
        maybe_absent = {key for key in present if key in optional and not present[key].startswith("Some(")}
        if maybe_absent:
            minimal = {key: value for key, value in values.items() if key not in maybe_absent}
            lines.append(_render(source, f"{construction.where} (optional keys absent)", ev, minimal, None))
    for enum, variant in sorted(vocabulary_uses(folder)):
        key = next(key for key, name in ENUM_OF_KEY.items() if name == enum)
        value = names.get(enum, {}).get(variant)
        if value is None:
            raise AssertionError(f"{source}: {enum}::{variant} is not a name the crate defines")
        ev = VOCABULARY_EVENT[key]
        keys: dict[str, str | None] = {key: None for key in specs[ev].required}
        keys.update(IMPLICIT_KEYS.get(ev, {}))
        keys[key] = value
        lines.append(_render(source, f"{source}: {enum}::{variant}", ev, keys, None))
    return lines


def windows_driver_lines() -> list[Rendered]:
    """The Windows WDM test driver (``drivers/wdk-mutex-tests``)."""
    return rust_driver_lines("wdk-mutex-tests", WINDOWS_DRIVER_SRC)


SOURCES: dict[str, Callable[[], list[Rendered]]] = {
    "wdk-mutex-tests": windows_driver_lines,
}
"""Each driver's rendered lines; a new driver adds its function here."""


# ------------------------------------------------------------------------------------------- checks


Vocabulary = Mapping[str, frozenset[str]]
"""Key -> its documented values."""


def problems(rendered: Rendered, specs: Mapping[str, EventSpec], vocabulary: Vocabulary) -> Iterator[str]:
    """What is wrong with one rendered line, per PROTOCOL.md and the parser."""
    where = f"{rendered.where}: {rendered.line}"
    spec = specs.get(rendered.ev)
    if rendered.ev not in EVENT_KINDS or spec is None:
        yield f"{where}: ev={rendered.ev} is not a protocol event"
        return
    keys = set(rendered.fields) | ({"msg"} if rendered.msg is not None else set())
    if missing := spec.required - keys:
        yield f"{where}: missing required keys {sorted(missing)}"
    if unknown := keys - spec.allowed:
        yield f"{where}: keys {sorted(unknown)} are not listed for ev={rendered.ev}"
    for key in VOCABULARY_KEYS:
        if key in rendered.fields and rendered.fields[key] not in vocabulary[key]:
            listed = sorted(vocabulary[key])
            yield f"{where}: {key}={rendered.fields[key]} is not in PROTOCOL.md's list {listed}"
    for key, value in rendered.fields.items():
        if not VALUE.match(value):
            yield f"{where}: {key}={value!r} is not a valid value"
    try:
        parsed = parse_line(f"[  1.000000] {rendered.line}\r\n")
    except ProtocolError as error:
        yield f"{where}: the parser rejects it: {error}"
        return
    if parsed is None:
        yield f"{where}: the parser finds no event"
    elif (parsed.seq, parsed.ev, dict(parsed.fields), parsed.msg) != (
        rendered.seq,
        rendered.ev,
        dict(rendered.fields),
        rendered.msg,
    ):
        yield f"{where}: parsed back as {parsed}"


def canonical_golden_lines() -> list[str]:
    section, lines = "", []
    for line in GOLDEN.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[canonical]" and line and not line.startswith("#"):
            lines.append(line)
    return lines


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_event_a_driver_prints_is_valid(source: str) -> None:
    lines = SOURCES[source]()
    specs, vocabulary = protocol_events(), protocol_vocabulary()
    assert lines, f"no events found in {source}"
    found = [problem for rendered in lines for problem in problems(rendered, specs, vocabulary)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_driver_prints_every_event_kind(source: str) -> None:
    assert {rendered.ev for rendered in SOURCES[source]()} == set(EVENT_KINDS)


def test_every_canonical_golden_line_parses_and_is_valid() -> None:
    specs, vocabulary = protocol_events(), protocol_vocabulary()
    lines = canonical_golden_lines()
    assert lines
    found: list[str] = []
    for line in lines:
        parsed = parse_line(line)
        assert parsed is not None, line
        assert format_event(parsed) == line
        rendered = Rendered("golden", "event-golden.txt", parsed.ev, parsed.fields, parsed.msg, parsed.seq)
        found += problems(rendered, specs, vocabulary)
    assert not found, "\n".join(found)


def test_protocol_md_the_parser_and_the_crate_agree_on_the_events() -> None:
    specs = protocol_events()
    assert set(specs) == set(EVENT_KINDS)
    assert set(crate_event_names().values()) == set(EVENT_KINDS)
    assert all(spec.required and not spec.required & spec.optional for spec in specs.values())


def test_the_crate_spells_names_as_protocol_md_does() -> None:
    vocabulary, names = protocol_vocabulary(), crate_names()
    for key, enum in ENUM_OF_KEY.items():
        assert set(names[enum].values()) == vocabulary[key], f"{enum} and PROTOCOL.md's `{key}` list differ"


def test_the_crate_writes_the_implicit_keys() -> None:
    source = (CRATE_SRC / "event.rs").read_text()
    assert "proto={PROTOCOL_VERSION}" in source
    assert re.search(r"PROTOCOL_VERSION: u32 = 1;", (CRATE_SRC / "lib.rs").read_text())


def test_the_windows_driver_implements_exactly_the_protocol_scenarios() -> None:
    catalogue = strip_comments((WINDOWS_DRIVER_SRC / "catalogue.rs").read_text())
    names = dict(re.findall(r'Self::(\w+)\s*=>\s*"([a-z_]+)"', catalogue))
    assert set(names.values()) == protocol_scenarios()
    dispatcher = strip_comments((WINDOWS_DRIVER_SRC / "scenarios" / "mod.rs").read_text())
    body = dispatcher[dispatcher.index("fn body(") :]
    assert set(re.findall(r"Scenario::(\w+)\s*=>", body)) == set(names), "a scenario without a body"


def test_the_scanner_reads_constructions_and_literals() -> None:
    # A self-check of the source reader on a known snippet, so a silent regex failure cannot pass.
    snippet = strip_comments(
        "emit(&Event::Call { sc: self.sc, t: 0, op: Op::GrtGet, m: target.map(|(m, _)| m), k: None, "
        'irql, r }); // x: "Event::Mutex { y }'
    )
    assert "Mutex" not in snippet
    body = _balanced(snippet, snippet.index("{"))
    fields = dict(part.partition(":")[::2] for part in _top_level_split(body))
    assert [key.strip() for key in fields] == ["sc", "t", "op", "m", "k", "irql", "r"]
    assert _literal("Op::GrtGet", crate_names(), {}) == "grt_get"
    assert _literal('Some("0.1.0")', crate_names(), {}) == "0.1.0"
    assert _literal("Some(Os::Windows)", crate_names(), {}) == "windows"
    assert _literal("irql::current()", crate_names(), {}) is None
