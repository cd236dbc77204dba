"""The scenario catalogue (drivers/scenarios.json): its generated copies, its streams, shard order, drop_safe.

* The generated files (the Linux module's header, the Windows driver's Rust module, the Python copy) are
  exactly what the generator makes from the JSON, and the Rust one compiles against the event-protocol
  crate.
* Every scenario's stream, as the catalogue writes it, passes vmtest's own verdict: the catalogue and
  the checks agree (the IRQL contract table, the Grt model, exclusion, counters).
* Shards keep the catalogue's order and a scenario marked last stays last.
* ``drop_safe_then_drop`` with the Windows driver's event sequence (read from its source,
  ``src/scenarios/drop_safe.rs``) passes, whether Windows survives the double release or stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from vmtest.cli_run import shard
from vmtest.events.catalogue_gen import RUST_MODULE, generated_files, main
from vmtest.events.protocol import Event, format_event
from vmtest.events.scenarios import (
    ALL_SCENARIOS,
    CATALOGUE,
    DEFAULT_SCENARIOS,
    LAST_SCENARIOS,
    NEGATIVE_CONTROLS,
    ScenarioSpec,
    flat_items,
    run_order,
    stream_differences,
)
from vmtest.verdict.crashes import Crash
from vmtest.verdict.verdict import judge

ROOT = Path(__file__).resolve().parents[2]
WINDOWS_SRC = ROOT / "drivers" / "wdk-mutex-tests" / "src"
EVENT_PROTOCOL_CRATE = next(
    path
    for path in (ROOT / "drivers" / "wdk-mutex-tests" / "event-protocol", ROOT / "drivers" / "event-protocol")
    if (path / "Cargo.toml").is_file()
)
"""The event-protocol crate: inside the driver's folder, or beside it (before the driver carried it)."""


def numbered(items: list[dict[str, str]], start: int = 1) -> list[Event]:
    """Events from field dicts (``ev`` plus fields), numbered from ``start``, one capture line each."""
    events = []
    for offset, fields in enumerate(items):
        msg = fields.get("msg")
        body = {key: value for key, value in fields.items() if key not in ("ev", "msg")}
        event = Event(start + offset, fields["ev"], body, msg)
        events.append(Event(event.seq, event.ev, body, msg, format_event(event), start + offset))
    return events


def scenario_events(name: str, threads: int, iterations: int) -> list[Event]:
    """The catalogue's stream for ``name``, framed, each thread's part in turn (a valid interleaving)."""
    spec = CATALOGUE.get(name)
    assert spec is not None
    items = [{"ev": "scenario-start", "sc": name, "params": spec.params_text(threads, iterations)}]
    items += spec.expected_events(threads, iterations)
    items.append({"ev": "scenario-end", "sc": name, "outcome": "done"})
    return numbered(items)


# ------------------------------------------------------------------------------ generated files


def test_the_generated_files_are_up_to_date() -> None:
    stale = [str(path) for path, text in generated_files(ROOT).items() if (ROOT / path).read_text() != text]
    assert not stale, f"stale: {stale}; run `python -m vmtest.events.catalogue_gen`"
    assert main(["--root", str(ROOT), "--check"]) == 0


def test_the_check_names_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in generated_files(ROOT):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("stale\n")
    (tmp_path / "drivers" / "scenarios.json").write_text((ROOT / "drivers" / "scenarios.json").read_text())
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert "vm_catalogue.h" in capsys.readouterr().err
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0
    assert main(["--root", str(tmp_path / "elsewhere")]) == 2
    assert "no drivers/scenarios.json under" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo (the crate has no dependencies)")
def test_the_generated_rust_module_compiles_against_the_event_protocol_crate(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "Cargo.toml").write_text(
        '[package]\nname = "catalogue-check"\nversion = "0.0.0"\nedition = "2021"\n\n[workspace]\n\n'
        f'[dependencies]\nvmtest-event-protocol = {{ path = "{EVENT_PROTOCOL_CRATE}" }}\n'
    )
    (tmp_path / "src" / "lib.rs").write_text(
        f'#![no_std]\n#![deny(warnings)]\n#[path = "{ROOT / RUST_MODULE}"]\npub mod catalogue;\n'
    )
    built = subprocess.run(
        ["cargo", "build", "--offline", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target")},
    )
    assert built.returncode == 0, built.stderr


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
def test_the_windows_driver_type_checks_against_stand_ins_of_the_wdk_crates(tmp_path: Path) -> None:
    # tests/data/wdk_standins/README.md: the WDK crates' items the driver uses, without behaviour.
    shutil.copytree(ROOT / "tests" / "data" / "wdk_standins", tmp_path / "standins")
    driver = tmp_path / "driver"
    driver.mkdir()
    deps = "".join(f'{name} = {{ path = "{tmp_path / "standins" / name}" }}\n' for name in STANDINS)
    (driver / "Cargo.toml").write_text(
        '[package]\nname = "wdk-mutex-tests"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n\n'
        f'[lib]\npath = "{WINDOWS_SRC / "lib.rs"}"\n\n[dependencies]\n{deps}'
        f'vmtest-event-protocol = {{ path = "{EVENT_PROTOCOL_CRATE}" }}\n\n'
        '[lints.rust]\nunsafe_op_in_unsafe_fn = "deny"\n'
    )
    checked = subprocess.run(
        ["cargo", "check", "--offline", "--quiet"],
        cwd=driver,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target"), "RUSTFLAGS": "-D warnings"},
    )
    assert checked.returncode == 0, checked.stderr


STANDINS = ("wdk-alloc", "wdk-panic", "wdk-sys", "wdk-mutex")

# --------------------------------------------------------------------------- catalogue content


def test_the_lists_follow_the_catalogue() -> None:
    names = [spec.name for spec in CATALOGUE.scenarios]
    assert ALL_SCENARIOS == DEFAULT_SCENARIOS + NEGATIVE_CONTROLS
    assert set(ALL_SCENARIOS) == set(names) and len(names) == len(set(names))
    assert NEGATIVE_CONTROLS == ("neg_lock_inversion", "neg_wait_at_dispatch")
    assert {"drop_safe_then_drop"} == LAST_SCENARIOS
    assert DEFAULT_SCENARIOS[-1] == "drop_safe_then_drop"
    assert CATALOGUE.parameters["threads"].default == 3
    assert CATALOGUE.parameters["iterations"].maximum == 100_000


@pytest.mark.parametrize("name", [spec.name for spec in CATALOGUE.scenarios])
def test_each_stream_passes_the_verdict(name: str) -> None:
    events = scenario_events(name, threads=3, iterations=4)
    assert stream_differences(events, name, 3, 4) == []
    verdict = judge(events, [name])
    (item,) = verdict.scenarios
    if name == "neg_wait_at_dispatch":
        assert item.status == "failed"  # a negative control that must crash, and did not
    else:
        assert item.status == "passed", verdict.render()


def test_differences_name_the_first_wrong_event() -> None:
    events = scenario_events("irql_errors", 1, 1)
    changed = [
        Event(e.seq, e.ev, {**e.fields, "irql": "1"}, e.msg, e.line, e.lineno)
        if e.get("op") == "new" and e.mutex == "fm2" and e.get("irql") == "3"
        else e
        for e in events
    ]
    (problem,) = stream_differences(changed, "irql_errors", 1, 1)
    assert "irql_errors t=0: event" in problem and "m=fm2" in problem and "irql=3" in problem
    assert stream_differences(events[:-4], "irql_errors", 1, 1, may_stop=True) == []
    assert "missing" in stream_differences(events[:-4], "irql_errors", 1, 1)[0]


# ------------------------------------------------------------------------------------ shard order


def test_shards_keep_the_catalogue_order_and_the_last_scenario_last() -> None:
    parts = [shard(DEFAULT_SCENARIOS, f"{index}/2") for index in (1, 2)]
    assert parts[0] == (
        "kmutex_contention",
        "grt_contention",
        "lock_order_consistent",
        "grt_errors",
        "drop_safe_then_drop",
    )
    assert parts[1] == ("fast_mutex_contention", "kmutex_recursion", "irql_errors", "to_owned")
    assert sorted(parts[0] + parts[1]) == sorted(DEFAULT_SCENARIOS)
    for count in range(1, len(DEFAULT_SCENARIOS) + 1):
        for index in range(1, count + 1):
            part = shard(DEFAULT_SCENARIOS, f"{index}/{count}")
            assert "drop_safe_then_drop" not in part[:-1], (index, count, part)


def test_a_scenario_marked_last_moves_to_the_end_of_a_named_list() -> None:
    named = ["drop_safe_then_drop", "to_owned", "kmutex_contention", "to_owned"]
    assert run_order(named) == ("to_owned", "kmutex_contention", "drop_safe_then_drop")
    assert shard(named, None) == ("to_owned", "kmutex_contention", "drop_safe_then_drop")
    assert shard(named, "1/2") == ("to_owned", "drop_safe_then_drop")
    assert shard(["b", "a"], None) == ("b", "a"), "names outside the catalogue keep their order"


# --------------------------------------------------------------------------- drop_safe_then_drop


# The Windows driver's events for drop_safe_then_drop, read from src/scenarios/drop_safe.rs
# (`twice::<FastMutex<u32>>(ctx, m::FM)`, then `twice::<KMutex<u32>>(ctx, m::KM)`): mutexes::create
# prints call op=new and mutex; `acquire` before lock; `acquired` (a FastMutex holder is at APC_LEVEL,
# irql 1); `release` before drop_safe; call op=drop_safe at the IRQL read just before it; then the
# guard is dropped (its second release) and call op=drop is printed if the system survived.
def windows_double_release(m: str, k: str, held: str) -> list[dict[str, str]]:
    sc = {"sc": "drop_safe_then_drop"}
    lock = {**sc, "t": "0", "m": m, "k": k}
    return [
        {"ev": "call", **sc, "t": "0", "op": "new", "m": m, "k": k, "irql": "0", "r": "Ok"},
        {"ev": "mutex", **sc, "m": m, "k": k},
        {"ev": "acquire", **lock, "irql": "0"},
        {"ev": "acquired", **lock, "irql": held, "depth": "1"},
        {"ev": "release", **lock, "irql": held, "depth": "1"},
        {"ev": "call", **lock, "op": "drop_safe", "irql": held, "r": "Ok"},
        {"ev": "call", **lock, "op": "drop", "irql": "0", "r": "Ok"},
    ]


WINDOWS_DROP_SAFE = [
    {"ev": "scenario-start", "sc": "drop_safe_then_drop", "params": "-"},
    *windows_double_release("fm", "fast_mutex", "1"),
    *windows_double_release("km", "kmutex", "0"),
    {"ev": "scenario-end", "sc": "drop_safe_then_drop", "outcome": "done"},
]


def test_drop_safe_then_drop_passes_when_windows_survives_the_double_release() -> None:
    events = numbered(WINDOWS_DROP_SAFE)
    assert stream_differences(events, "drop_safe_then_drop", 3, 500) == []
    verdict = judge(events, ["drop_safe_then_drop"])
    assert verdict.passed, verdict.render()


def test_drop_safe_then_drop_passes_when_windows_stops_the_double_release() -> None:
    # KeReleaseMutex by a thread that no longer owns the KMUTEX: the exception is not handled in the
    # driver's system thread, so Windows stops with SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (0x7E,
    # parameter 1 STATUS_MUTANT_NOT_OWNED) before call op=drop of km is printed.
    events = numbered(WINDOWS_DROP_SAFE[:-2])
    crash = Crash("kd", 0x7E, (0xC0000046, 0, 0, 0), "wdk_mutex_tests.sys", lineno=len(events) + 1)
    assert stream_differences(events, "drop_safe_then_drop", 3, 500, may_stop=True) == []
    verdict = judge(events, ["drop_safe_then_drop"], [crash])
    (item,) = verdict.scenarios
    assert item.status == "passed", verdict.render()
    assert any("crashed as allowed" in note for note in item.notes)


def test_drop_safe_then_drop_fails_on_another_crash() -> None:
    events = numbered(WINDOWS_DROP_SAFE[:-2])
    crash = Crash("kd", 0x50, (0, 0, 0, 0), "wdk_mutex_tests.sys", lineno=len(events) + 1)
    (item,) = judge(events, ["drop_safe_then_drop"], [crash]).scenarios
    assert item.status == "crashed"


def test_a_second_release_event_is_what_made_it_fail_before() -> None:
    # The driver used to print `release` again before the guard's drop: the thread no longer held the
    # mutex, so exclusion rightly reported it. The second release is now reported as call op=drop only.
    old = [*WINDOWS_DROP_SAFE]
    second = {"ev": "release", "sc": "drop_safe_then_drop", "t": "0", "m": "km", "k": "kmutex"}
    old.insert(-2, {**second, "irql": "0", "depth": "1"})
    (item,) = judge(numbered(old), ["drop_safe_then_drop"]).scenarios
    assert item.status == "failed"
    assert any("which it did not hold" in finding.message for finding in item.findings)


# ------------------------------------------------------------------ the Windows driver's source


RUST_KIND = {"KMutex": "kmutex", "FastMutex": "fast_mutex"}


def rust_code(path: Path) -> str:
    """A Rust file without its ``//`` comments (no string in these files holds ``//``)."""
    return re.sub(r"//[^\n]*", "", path.read_text())


def windows_modules() -> dict[str, list[str]]:
    """Scenario module file (``scenarios/<name>.rs``) -> the scenarios it implements, from mod.rs."""
    dispatcher = rust_code(WINDOWS_SRC / "scenarios" / "mod.rs")
    body = dispatcher[dispatcher.index("fn body(") :]
    modules: dict[str, list[str]] = {}
    for variant, module in re.findall(r"Scenario::(\w+)\s*=>\s*(\w+)::", body):
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", variant).lower()
        modules.setdefault(module, []).append(name)
    return modules


def catalogue_items(names: list[str]) -> list[Mapping[str, object]]:
    return [item for name in names for item in flat_items(_spec(name).stream)]


def _spec(name: str) -> ScenarioSpec:
    spec = CATALOGUE.get(name)
    assert spec is not None, name
    return spec


def test_the_windows_driver_dispatches_every_catalogue_scenario() -> None:
    modules = windows_modules()
    assert sorted(name for names in modules.values() for name in names) == sorted(ALL_SCENARIOS)


def test_the_windows_driver_prints_no_name_of_its_own() -> None:
    names = {
        str(item["m"]) for spec in CATALOGUE.scenarios for item in flat_items(spec.stream) if "m" in item
    }
    for path in sorted((WINDOWS_SRC / "scenarios").glob("*.rs")) + [WINDOWS_SRC / "mutexes.rs"]:
        literals = set(re.findall(r'"([a-z0-9_]+)"', rust_code(path)))
        assert not literals & names, (
            f"{path.name}: writes {sorted(literals & names)} itself; use catalogue::m"
        )


@pytest.mark.parametrize("module", sorted(windows_modules()))
def test_each_windows_scenario_module_follows_the_catalogue(module: str) -> None:
    scenarios = windows_modules()[module]
    source = rust_code(WINDOWS_SRC / "scenarios" / f"{module}.rs")
    items = catalogue_items(scenarios)
    stepped = [name for name in scenarios if CATALOGUE.steps(name)]

    # the mutexes it creates: kind and catalogue name, where the source spells both out
    aliases = dict(re.findall(r"const (\w+): &str = m::(\w+);", source))
    created = {
        (RUST_KIND[kind], aliases.get(name, name.removeprefix("m::")).lower())
        for kind, name in re.findall(r"\b(KMutex|FastMutex)<\w+>(?:,\s*\w+)?>\(ctx,\s*((?:m::)?\w+)", source)
        if name.startswith("m::") or name in aliases
    }
    declared = {(str(item["k"]), str(item["m"])) for item in items if item["ev"] == "mutex"}
    assert created <= declared, f"{module}: creates {sorted(created - declared)}, not in the catalogue"
    if module not in ("contention",):  # contention.rs creates through a generic helper
        assert created == declared, (
            f"{module}: the catalogue's mutexes {sorted(declared - created)} are missing"
        )

    # the operations of its calls: its own Op::X, mutexes::create's `new`, and the step tables' ops
    ops = {re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower() for op in re.findall(r"\bOp::(\w+)", source)}
    if "mutexes::create" in source:
        ops.add("new")
    for name in stepped:
        table = name.upper()
        assert re.search(rf"&{table}\b", source), f"{module}: does not use the {table} step table"
        ops |= {str(step["op"]) for step in CATALOGUE.steps(name)}
    wanted = {str(item["op"]) for item in items if item["ev"] == "call"}
    assert wanted <= ops, f"{module}: never calls {sorted(wanted - ops)}"
    assert ops - wanted <= {"lock"}, f"{module}: calls {sorted(ops - wanted)} the catalogue does not list"

    # thread indices: the counted scenarios run config.threads threads, the others their fixed count
    for name in scenarios:
        spec = CATALOGUE.get(name)
        assert spec is not None
        if spec.threads == "$threads":
            assert "run_on_threads(config.threads" in source, f"{name}: not on config.threads threads"
        elif spec.threads != 1:
            assert f"run_on_threads({spec.threads}," in source, f"{name}: not on {spec.threads} threads"


def test_the_windows_step_tables_are_used_whole_and_in_order() -> None:
    irql = rust_code(WINDOWS_SRC / "scenarios" / "irql_errors.rs")
    match = re.search(r"let \[([^\]]*)\]\s*=\s*&IRQL_ERRORS;", irql)
    assert match, "irql_errors.rs names each step of IRQL_ERRORS"
    bindings = [name.strip() for name in match.group(1).split(",") if name.strip()]
    assert len(bindings) == len(CATALOGUE.steps("irql_errors"))
    after = irql[match.end() :]
    uses = [min(m.start() for m in re.finditer(rf"\b{name}\b", after)) for name in bindings]
    assert uses == sorted(uses), "irql_errors.rs makes the steps' calls in the table's order"
    grt = rust_code(WINDOWS_SRC / "scenarios" / "grt_errors.rs")
    assert "for step in &GRT_ERRORS" in grt


def test_the_windows_parameters_are_the_catalogues() -> None:
    dispatcher = rust_code(WINDOWS_SRC / "scenarios" / "mod.rs")
    counted = {name for spec in CATALOGUE.scenarios if spec.counted for name, _ in spec.params}
    assert set(re.findall(r'Param::int\("(\w+)",\s*u64::from\(config\.\w+\)\)', dispatcher)) == counted
    assert "scenario.fixed_param()" in dispatcher
    params = rust_code(WINDOWS_SRC / "params.rs")
    for name in CATALOGUE.parameters:
        upper = name.upper()
        assert f"{upper}_DEFAULT" in params and f"{upper}_MIN, {upper}_MAX" in params, name
    assert "Err(STATUS_INVALID_PARAMETER)" in params, "an unknown name or a bad number fails the load"
