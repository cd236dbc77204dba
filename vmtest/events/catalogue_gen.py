"""Generate the drivers' copies of the scenario catalogue from ``drivers/scenarios.json``.

``python -m vmtest.events.catalogue_gen`` (in a checkout) writes:

* ``drivers/linux-mutex-tests/vm_catalogue.h``: the Linux module's scenario table, parameter ranges,
  names and step tables, as C macros;
* ``drivers/wdk-mutex-tests/src/catalogue.rs``: the same for the Windows driver, as Rust constants;
* ``vmtest/events/catalogue_data.py``: the JSON itself, which :mod:`vmtest.events.scenarios` reads.

The outputs are committed, so each driver builds when its folder is copied alone. ``--check`` writes
nothing and exits 1, naming them, when any is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from vmtest.events.scenarios import Catalogue, flat_items, parse_catalogue

__all__ = ["CATALOGUE_FILE", "generated_files", "main", "render_c", "render_python", "render_rust"]

CATALOGUE_FILE = Path("drivers") / "scenarios.json"
C_HEADER = Path("drivers") / "linux-mutex-tests" / "vm_catalogue.h"
RUST_MODULE = Path("drivers") / "wdk-mutex-tests" / "src" / "catalogue.rs"
PYTHON_MODULE = Path("vmtest") / "events" / "catalogue_data.py"
STEP_TABLES = ("irql_errors", "grt_errors")
"""Scenarios whose numbered ``call`` steps become a table in both drivers."""

_NOTICE = "Generated from drivers/scenarios.json by `python -m vmtest.events.catalogue_gen`: do not edit."
_RUST_KINDS = {"kmutex": "KMutex", "fast_mutex": "FastMutex"}


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def _names(catalogue: Catalogue) -> list[str]:
    """Every mutex and counter name the scenarios print, in first-use order."""
    names: dict[str, None] = {}
    for spec in catalogue.scenarios:
        for item in flat_items(spec.stream):
            if "m" in item:
                names.setdefault(item["m"], None)
    return list(names)


def _fixed_params(catalogue: Catalogue) -> dict[str, int]:
    return {
        name: value for spec in catalogue.scenarios for name, value in spec.params if isinstance(value, int)
    }


def render_python(text: str) -> str:
    """``catalogue_data.py``: the catalogue's JSON text as a constant."""
    if '"""' in text or "\\" in text:
        raise ValueError("the catalogue must not contain triple quotes or backslashes")
    return (
        "# ruff: noqa: E501\n"
        f'"""The scenario catalogue as shipped in the package. {_NOTICE}"""\n\n'
        '__all__ = ["CATALOGUE_JSON"]\n\n'
        f'CATALOGUE_JSON = """{text}"""\n'
    )


def render_c(catalogue: Catalogue) -> str:
    """``vm_catalogue.h`` for the Linux module."""
    out = [
        "/* SPDX-License-Identifier: GPL-2.0 */",
        f"/* {_NOTICE} */",
        "#ifndef VM_CATALOGUE_H",
        "#define VM_CATALOGUE_H",
        "",
        '#include "vm_mutex.h"',
        "",
        "/* run parameters: default and allowed range */",
    ]
    for name, parameter in catalogue.parameters.items():
        upper = name.upper()
        out += [
            f"#define VM_{upper}_DEFAULT {parameter.default}",
            f"#define VM_{upper}_MIN {parameter.minimum}",
            f"#define VM_{upper}_MAX {parameter.maximum}",
        ]
    out += ["", "/* fixed parameters of single scenarios */"]
    out += [f"#define VM_PARAM_{name.upper()} {value}" for name, value in _fixed_params(catalogue).items()]
    out += ["", "/* the names of mutexes and counters in the events (m=) */"]
    out += [f'#define VM_M_{name.upper()} "{name}"' for name in _names(catalogue)]
    out += [
        "",
        "/* the scenarios in catalogue order: name, negative, last, counted (threads and iterations), */",
        "/* fixed params text (NULL when counted or none) */",
        "struct vm_catalogue_row {",
        "\tconst char *name;",
        "\tbool negative;",
        "\tbool last;",
        "\tbool counted;",
        "\tconst char *fixed_params;",
        "};",
        "",
        "enum vm_scenario_index {",
    ]
    out += [f"\tVM_SC_{spec.name.upper()}," for spec in catalogue.scenarios]
    out += ["\tVM_SCENARIO_COUNT", "};", "", "#define VM_SCENARIO_ROWS \\"]
    rows = []
    for spec in catalogue.scenarios:
        fixed = f'"{spec.params_text(0, 0)}"' if spec.params and not spec.counted else "NULL"
        flags = ", ".join(str(flag).lower() for flag in (spec.negative, spec.last, spec.counted))
        rows.append(f'\t{{ "{spec.name}", {flags}, {fixed} }}')
    out += [" \\\n".join(f"{row}," for row in rows), ""]
    out += [
        "/* one call a scenario makes, as its events must show it: op, m (or NULL), kind (or -1), */",
        "/* the irql it is made at, the expected result, and whether it asks for the wrong type */",
        "struct vm_step {",
        "\tconst char *op;",
        "\tconst char *m;",
        "\tint kind;",
        "\tint irql;",
        "\tenum vm_result result;",
        "\tbool wrong_type;",
        "};",
    ]
    for name in STEP_TABLES:
        steps = catalogue.steps(name)
        out += [
            "",
            f"#define VM_{name.upper()}_STEP_COUNT {len(steps)}",
            f"#define VM_{name.upper()}_STEPS {{ \\",
        ]
        rows = []
        for step in steps:
            m = f'"{step["m"]}"' if "m" in step else "NULL"
            kind = f"VM_{step['k'].upper()}" if "k" in step else "-1"
            wrong = "true" if step.get("data") else "false"
            result = f"VM_{_upper_snake(step['r'])}"
            rows.append(f'\t{{ "{step["op"]}", {m}, {kind}, {step["irql"]}, {result}, {wrong} }}')
        out += [" \\\n".join(f"{row}," for row in rows) + " \\", "}"]
    out += ["", "#endif /* VM_CATALOGUE_H */", ""]
    return "\n".join(out)


def render_rust(catalogue: Catalogue) -> str:
    """``src/catalogue.rs`` for the Windows driver."""
    specs = catalogue.scenarios
    default = [spec for spec in specs if not spec.negative and not spec.last] + [
        spec for spec in specs if not spec.negative and spec.last
    ]
    out = [
        f"//! The scenario catalogue. {_NOTICE}",
        "//!",
        "//! Scenario names and flags, parameter ranges, the names the events use, and the step tables of",
        '//! the scenarios that make a fixed series of calls (`drivers/PROTOCOL.md`, "Scenarios").',
        "",
        "#![allow(dead_code)]",
        "",
        "use vmtest_event_protocol::{CallResult, MutexKind, Op};",
        "",
    ]
    for name, parameter in catalogue.parameters.items():
        upper = name.upper()
        out += [
            f"/// `{name}` when not set: {parameter.what}.",
            f"pub const {upper}_DEFAULT: u32 = {parameter.default:_};",
            f"/// The smallest `{name}` accepted.",
            f"pub const {upper}_MIN: u32 = {parameter.minimum:_};",
            f"/// The largest `{name}` accepted.",
            f"pub const {upper}_MAX: u32 = {parameter.maximum:_};",
        ]
    for name, value in _fixed_params(catalogue).items():
        out += [f"/// The fixed parameter `{name}`.", f"pub const {name.upper()}: u32 = {value};"]
    out += ["", "/// The names of mutexes and counters in the events (`m=`).", "pub mod m {"]
    for name in _names(catalogue):
        out += [f"    /// `{name}`.", f'    pub const {name.upper()}: &str = "{name}";']
    out += ["}", ""]
    out += [
        "/// A scenario, named as in `PROTOCOL.md`.",
        "#[derive(Clone, Copy, Debug, PartialEq, Eq)]",
        "pub enum Scenario {",
    ]
    for spec in specs:
        out += [f"    /// {spec.what}.", f"    {_camel(spec.name)},"]
    out += ["}", "", "impl Scenario {", "    /// Every scenario, in catalogue order."]
    out += [f"    pub const ALL: [Self; {len(specs)}] = ["]
    out += [f"        Self::{_camel(spec.name)}," for spec in specs]
    out += [
        "    ];",
        "",
        "    /// What runs when no scenario is named: all but the negative controls, `last` ones at the end.",
        f"    pub const DEFAULT: [Self; {len(default)}] = [",
    ]
    out += [f"        Self::{_camel(spec.name)}," for spec in default]
    out += [
        "    ];",
        "",
        "    /// The protocol name (the `sc` field).",
        "    pub const fn name(self) -> &'static str {",
    ]
    out += ["        match self {"]
    out += [f'            Self::{_camel(spec.name)} => "{spec.name}",' for spec in specs]
    out += ["        }", "    }", ""]
    for flag, what in (
        ("negative", "a negative control (runs only when named)"),
        ("counted", "its params are `threads` and `iterations`"),
    ):
        out += [f"    /// Whether it is {what}." if flag == "negative" else f"    /// Whether {what}."]
        out += [f"    pub const fn {flag}(self) -> bool {{", "        matches!(", "            self,"]
        chosen = [spec for spec in specs if getattr(spec, flag)]
        out += [
            "            " + "\n                | ".join(f"Self::{_camel(spec.name)}" for spec in chosen),
            "        )",
            "    }",
            "",
        ]
    out += [
        "    /// Its one fixed parameter (name and value), if it has one.",
        "    pub const fn fixed_param(self) -> Option<(&'static str, u32)> {",
        "        match self {",
    ]
    for spec in specs:
        fixed = [(name, value) for name, value in spec.params if isinstance(value, int)]
        if len(fixed) > 1:
            raise ValueError(f"{spec.name}: at most one fixed parameter")
        if fixed:
            out += [f'            Self::{_camel(spec.name)} => Some(("{fixed[0][0]}", {fixed[0][1]})),']
    out += ["            _ => None,", "        }", "    }", ""]
    out += [
        "    /// The scenario called `name`, if any.",
        "    pub fn from_name(name: &str) -> Option<Self> {",
        "        Self::ALL.into_iter().find(|scenario| scenario.name() == name)",
        "    }",
        "}",
        "",
        "/// One call a scenario makes, as its `call` event must show it.",
        "#[derive(Clone, Copy, Debug)]",
        "pub struct Step {",
        "    /// The operation.",
        "    pub op: Op,",
        "    /// The mutex (name and kind) it is made on, if any.",
        "    pub m: Option<(&'static str, MutexKind)>,",
        "    /// The IRQL it is made at.",
        "    pub irql: u8,",
        "    /// What it must return.",
        "    pub r: CallResult,",
        "    /// It asks for the wrong data type (a `u64` where a `u32` was registered).",
        "    pub wrong_type: bool,",
        "}",
    ]
    for name in STEP_TABLES:
        steps = catalogue.steps(name)
        out += [
            "",
            f"/// The calls of `{name}`, in order.",
            f"pub const {name.upper()}: [Step; {len(steps)}] = [",
        ]
        for step in steps:
            target = f'Some(("{step["m"]}", MutexKind::{_RUST_KINDS[step["k"]]}))' if "m" in step else "None"
            out += [
                "    Step {",
                f"        op: Op::{_camel(step['op'])},",
                f"        m: {target},",
                f"        irql: {step['irql']},",
                f"        r: CallResult::{step['r']},",
                f"        wrong_type: {'true' if step.get('data') else 'false'},",
                "    },",
            ]
        out += ["];"]
    return "\n".join(out) + "\n"


def generated_files(root: Path) -> dict[Path, str]:
    """Each generated file (relative to the checkout ``root``) and the text it must have."""
    text = (root / CATALOGUE_FILE).read_text(encoding="utf-8")
    json.loads(text)  # a syntax error names the file here rather than in a generated copy
    catalogue = parse_catalogue(text)
    return {
        C_HEADER: render_c(catalogue),
        RUST_MODULE: render_rust(catalogue),
        PYTHON_MODULE: render_python(text),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write the generated files (or, with ``--check``, report the stale ones); the exit status."""
    parser = argparse.ArgumentParser(prog="python -m vmtest.events.catalogue_gen", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2], help="the checkout")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if not (args.root / CATALOGUE_FILE).is_file():
        print(
            f"catalogue_gen: no {CATALOGUE_FILE} under {args.root}: run it in a checkout, or pass --root",
            file=sys.stderr,
        )
        return 2
    stale = []
    for path, text in generated_files(args.root).items():
        target = args.root / path
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        stale.append(str(path))
        if not args.check:
            target.write_text(text, encoding="utf-8")
    if stale:
        verb = "stale" if args.check else "written"
        print(f"catalogue_gen: {verb}: {', '.join(stale)}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
