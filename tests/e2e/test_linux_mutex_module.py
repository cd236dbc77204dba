"""The Linux mutex test module (drivers/linux-mutex-tests) in the guest: its events, judged line by line.

The checks here are deliberately small and local (the verdict engine lives elsewhere): the protocol's
invariants (seq 1..N, every scenario started and ended), exclusion by seq order, the wdk-mutex contract
as the module mirrors it (README.md beside the module), and, for every scenario, each thread's events
against the scenario catalogue (drivers/scenarios.json) that the Windows driver follows too.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.drivers.kbuild import build_module
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.errors import DriverError, GuestCrashed
from vmtest.events.protocol import EVENT_KINDS, Event, parse_line
from vmtest.events.scenarios import CATALOGUE, DEFAULT_SCENARIOS, stream_differences
from vmtest.facade import BackgroundSession
from vmtest.images.linux import LinuxImage, build_linux_image
from vmtest.progress import PlainProgress

pytestmark = pytest.mark.e2e

MODULE_SOURCE = Path(__file__).resolve().parents[2] / "drivers" / "linux-mutex-tests"
MODULE_NAME = "vmtest_mutex_tests"
THREADS = 3
ITERATIONS = 200

REQUIRED_KEYS: dict[str, frozenset[str]] = {
    "run-start": frozenset({"driver", "proto"}),
    "scenario-start": frozenset({"sc", "params"}),
    "mutex": frozenset({"sc", "m", "k"}),
    "acquire": frozenset({"sc", "t", "m", "k", "irql"}),
    "acquired": frozenset({"sc", "t", "m", "k", "irql"}),
    "release": frozenset({"sc", "t", "m", "k", "irql"}),
    "call": frozenset({"sc", "t", "op", "irql", "r"}),
    "counter": frozenset({"sc", "m", "value", "expected"}),
    "thread-end": frozenset({"sc", "t", "iterations"}),
    "scenario-end": frozenset({"sc", "outcome"}),
    "run-end": frozenset({"scenarios"}),
}

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# The VM
# --------------------------------------------------------------------------------------------------


class BootedGuest(BackgroundSession):
    """One VM for the module, with helpers to read its console logs."""

    def __init__(self, config: VmtestConfig) -> None:
        super().__init__(config, PlainProgress(), label="mutex-e2e")
        started = time.monotonic()
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started

    def shell(self, *argv: str) -> str:
        return self.call(lambda: self.guest.transport.run(argv, timeout=60).stdout.decode(errors="replace"))

    def serial_log(self) -> str:
        """QEMU's log of the serial console (raw bytes, see ``same_modulo_repeats``)."""
        return self.session.run_dir.serial_log("console").read_text(encoding="utf-8", errors="replace")

    def capture_log(self) -> str:
        """The console as vmtest's capture read it from the serial socket."""
        return (self.session.run_dir.path / "capture.log").read_text(encoding="utf-8", errors="replace")

    def wait_for_console(self, needle: str, timeout: float = 30) -> None:
        """Until both console logs hold ``needle`` (the console is only read while the loop runs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.capture_log() and collapse(needle) in collapse(self.serial_log()):
                return
            time.sleep(0.2)


def guest_config(image: LinuxImage, artifacts: Path) -> VmtestConfig:
    return VmtestConfig(artifacts=artifacts, guest=LinuxGuestConfig(image=image.root))


@pytest.fixture(scope="module")
def image() -> LinuxImage:
    return build_linux_image()


@pytest.fixture(scope="module")
def module_ko(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_module(MODULE_SOURCE, image.headers, tmp_path_factory.mktemp("build") / "linux-mutex-tests")


@pytest.fixture(scope="module")
def booted(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedGuest]:
    guest = BootedGuest(guest_config(image, tmp_path_factory.mktemp("runs")))
    try:
        yield guest
    finally:
        guest.close()


@pytest.fixture
def deployed(booted: BootedGuest, module_ko: Path) -> Iterator[DeployedDriver]:
    drivers = booted.guest.drivers
    driver = booted.call(drivers.deploy, module_ko)
    yield driver
    if booted.call(drivers.is_loaded, driver):
        booted.call(drivers.unload, driver)
    booted.call(drivers.remove, driver)


# --------------------------------------------------------------------------------------------------
# Small local judges of a run's events
# --------------------------------------------------------------------------------------------------


def last_run(text: str) -> list[Event]:
    """The events of the last run in a kernel log (from its last run-start), in log order."""
    events = [
        event for number, line in enumerate(text.splitlines(), 1) if (event := parse_line(line, number))
    ]
    starts = [index for index, event in enumerate(events) if event.ev == "run-start"]
    assert starts, "no run-start event in the log"
    return events[starts[-1] :]


def by_seq(events: Sequence[Event]) -> list[Event]:
    return sorted(events, key=lambda event: event.seq)


def check_envelope(events: Sequence[Event], scenarios: Sequence[str]) -> None:
    """seq 1..N, known events with their keys, run-start first, run-end last, each scenario framed."""
    ordered = by_seq(events)
    seqs = [event.seq for event in ordered]
    assert seqs == list(range(1, len(seqs) + 1)), "seq values are not exactly 1..N (a gap or a repeat)"
    for event in ordered:
        assert event.ev in EVENT_KINDS, event.where()
        missing = REQUIRED_KEYS[event.ev] - set(event.fields)
        assert not missing, f"{event.where()} lacks {sorted(missing)}"
    first, last = ordered[0], ordered[-1]
    assert (first.ev, first.get("driver"), first.get("proto"), first.get("os")) == (
        "run-start",
        MODULE_NAME,
        "1",
        "linux",
    )
    assert last.ev == "run-end" and last.int("scenarios", -1) == len(scenarios), last.where()
    starts = [event.scenario for event in ordered if event.ev == "scenario-start"]
    assert starts == list(scenarios)
    for name in scenarios:
        own = [event for event in ordered if event.scenario == name]
        assert own[0].ev == "scenario-start", own[0].where()
        assert own[-1].ev == "scenario-end", own[-1].where()
        assert [event.ev for event in own].count("scenario-end") == 1
        end = own[-1]
        assert end.get("outcome") == "done" or (end.get("outcome") == "skipped" and end.msg), end.where()
        spec = CATALOGUE.get(name)
        assert spec is not None
        assert own[0].get("params") == spec.params_text(THREADS, ITERATIONS), own[0].where()


def check_exclusion(events: Sequence[Event]) -> None:
    """Per mutex, by seq: acquired and release alternate; only a kmutex's owner may re-enter (depth 2)."""
    timelines: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for event in by_seq(events):
        if event.ev in ("acquired", "release"):
            timelines[(event.scenario, event.mutex)].append(event)
    assert timelines, "no acquired/release events"
    for (scenario, mutex), timeline in timelines.items():
        holder, depth = "", 0
        for event in timeline:
            where = f"{scenario}/{mutex}: {event.where()}"
            if event.ev == "acquired":
                if depth:
                    assert event.thread == holder, f"acquired while thread {holder} holds it: {where}"
                    assert event.get("k") == "kmutex", f"a re-entered fast_mutex: {where}"
                holder, depth = event.thread, depth + 1
                assert event.int("depth") == depth and depth <= 2, where
            else:
                assert depth and event.thread == holder, (
                    f"released by a thread that does not hold it: {where}"
                )
                assert event.int("depth") == depth, where
                depth -= 1
        assert depth == 0, f"{scenario}/{mutex} is still held at the end of the run"


def lock_order_edges(events: Sequence[Event], scenario: str) -> set[tuple[str, str]]:
    """(held, taken) pairs: which mutex each thread held while it took another."""
    held: dict[str, list[str]] = defaultdict(list)
    edges: set[tuple[str, str]] = set()
    for event in by_seq(events):
        if event.scenario != scenario:
            continue
        if event.ev == "acquired":
            edges.update((before, event.mutex) for before in held[event.thread] if before != event.mutex)
            held[event.thread].append(event.mutex)
        elif event.ev == "release":
            held[event.thread].remove(event.mutex)
    return edges


def calls(events: Sequence[Event], scenario: str) -> list[Event]:
    return [event for event in by_seq(events) if event.ev == "call" and event.scenario == scenario]


def mirrored_contract(op: str, kind: str, irql: int, ctx: str) -> str:
    """What wdk-mutex returns, as the module mirrors it (interrupts off is irql 3, above DISPATCH_LEVEL)."""
    above_dispatch = irql > 2
    assert above_dispatch == (ctx == "irqs_off")
    if op == "lock":
        return "IrqlTooHigh" if irql > 1 else "Ok"
    if op == "new":
        return "IrqlTooHigh" if kind == "fast_mutex" and above_dispatch else "Ok"
    if op == "drop_safe":
        if kind == "kmutex":
            return "IrqlTooHigh" if above_dispatch else "Ok"
        return "Ok" if irql == 1 else "IrqlTooHigh"
    raise AssertionError(f"no contract for {op}")


def check_irql_errors(events: Sequence[Event]) -> None:
    """Each call's result is the mirrored contract for the context it names (ctx= beside irql=)."""
    seen = [
        (c.get("op"), c.get("k"), c.int("irql", -1), c.get("ctx"), c.get("r"))
        for c in calls(events, "irql_errors")
    ]
    assert seen
    for op, kind, irql, ctx, result in seen:
        assert result == mirrored_contract(op, kind, irql, ctx), (op, kind, irql, ctx, result)


def check_catalogue(events: Sequence[Event], scenarios: Sequence[str]) -> None:
    """Every scenario's events, thread by thread, are what drivers/scenarios.json says."""
    problems = [
        problem for name in scenarios for problem in stream_differences(events, name, THREADS, ITERATIONS)
    ]
    assert not problems, "\n".join(problems)


def check_drop_safe_then_drop(events: Sequence[Event]) -> str:
    end = next(e for e in events if e.scenario == "drop_safe_then_drop" and e.ev == "scenario-end")
    assert end.msg and "kmutex: second release refused" in end.msg, end.where()
    return end.msg


def comparable(events: Sequence[Event]) -> dict[int, tuple[str, tuple[tuple[str, str], ...], str | None]]:
    return {e.seq: (e.ev, tuple(sorted(e.fields.items())), e.msg) for e in events}


def collapse(text: str) -> str:
    """``text`` with every run of one character shortened to one, for searching QEMU's serial log."""
    return re.sub(r"(.)\1+", r"\1", text)


def same_modulo_repeats(expected: str, seen: str) -> bool:
    """True if ``seen`` is ``expected`` with some characters repeated.

    QEMU's chardev logfile records a byte again when the serial port retries a write that the socket
    refused (EAGAIN) while the host was slow to read, so serial-console.log may show ``k==kmutex``
    where the guest sent ``k=kmutex``. Nothing may be missing or changed, only repeated.
    """
    matched = 0
    for index, char in enumerate(seen):
        if matched < len(expected) and char == expected[matched]:
            matched += 1
        elif index == 0 or char != seen[index - 1]:
            return False
    return matched == len(expected)


def check_serial_log(kernel_lines: Sequence[str], serial: str) -> int:
    """Every kernel log line, in order, in QEMU's serial log; returns how many show repeated bytes."""
    serial_lines = serial.splitlines()
    position = 0
    repeated = 0
    for line in kernel_lines:
        while position < len(serial_lines) and not same_modulo_repeats(line, serial_lines[position]):
            position += 1
        assert position < len(serial_lines), f"not on the serial console (in order): {line}"
        repeated += serial_lines[position] != line
        position += 1
    return repeated


# --------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------


def test_normal_scenarios_report_a_consistent_run(booted: BootedGuest, deployed: DeployedDriver) -> None:
    drivers = booted.guest.drivers
    parameters = {"scenarios": ",".join(DEFAULT_SCENARIOS), "threads": THREADS, "iterations": ITERATIONS}
    started = time.monotonic()
    booted.call(drivers.load, deployed, parameters)
    load_seconds = time.monotonic() - started
    kernel_log = booted.shell("dmesg")
    events = last_run(kernel_log)
    print(f"boot {booted.boot_seconds:.1f}s, load {load_seconds:.1f}s, {len(events)} events")

    check_envelope(events, DEFAULT_SCENARIOS)
    check_exclusion(events)
    check_catalogue(events, DEFAULT_SCENARIOS)
    assert lock_order_edges(events, "lock_order_consistent") == {("a", "b")}
    check_irql_errors(events)
    print("drop_safe_then_drop:", check_drop_safe_then_drop(events))
    run_lines = kernel_log[kernel_log.rfind("ev=run-start") :]
    for bad in ("BUG:", "Oops", "WARNING:", "Kernel panic"):
        assert bad not in run_lines, f"the kernel reported {bad!r} during a normal run"

    # the same lines reached the serial console: exactly as vmtest's capture read them from the socket,
    # and in QEMU's own log of the port with, at worst, repeated bytes
    booted.wait_for_console(f"seq={len(events)} ev=run-end")
    assert comparable(last_run(booted.capture_log())) == comparable(events)
    run_start = kernel_log.splitlines().index(events[0].line)
    repeated = check_serial_log(kernel_log.splitlines()[run_start:], booted.serial_log())
    print(f"serial-console.log: {repeated} of the run's lines show repeated bytes")

    booted.call(drivers.unload, deployed)
    assert not booted.call(drivers.is_loaded, deployed)
    assert f"{MODULE_NAME}: unloaded" in booted.shell("dmesg")


def test_lock_inversion_control_shows_both_orders(booted: BootedGuest, deployed: DeployedDriver) -> None:
    drivers = booted.guest.drivers
    booted.call(drivers.load, deployed, {"scenarios": "neg_lock_inversion"})
    events = last_run(booted.shell("dmesg"))
    ordered = by_seq(events)
    assert [event.seq for event in ordered] == list(range(1, len(ordered) + 1))
    assert ordered[-1].ev == "run-end" and ordered[-1].int("scenarios") == 1
    check_exclusion(events)
    check_catalogue(events, ["neg_lock_inversion"])
    assert lock_order_edges(events, "neg_lock_inversion") == {("a", "b"), ("b", "a")}
    end = next(e for e in ordered if e.ev == "scenario-end")
    assert end.get("outcome") == "done", end.where()
    booted.call(drivers.unload, deployed)


def test_an_unknown_scenario_fails_the_load_and_is_named(
    booted: BootedGuest, deployed: DeployedDriver
) -> None:
    drivers = booted.guest.drivers
    with pytest.raises(DriverError, match="init returned -EINVAL") as caught:
        booted.call(drivers.load, deployed, {"scenarios": "kmutex_recursion,no_such_scenario"})
    assert f"{MODULE_NAME}: unknown scenario 'no_such_scenario'" in caught.value.output
    assert "ev=run-start" not in caught.value.output, "nothing runs when a name is wrong"
    assert not booted.call(drivers.is_loaded, deployed)


def test_sleeping_at_dispatch_is_caught_in_a_fresh_vm(
    image: LinuxImage, module_ko: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    guest = BootedGuest(guest_config(image, tmp_path_factory.mktemp("runs-neg")))
    try:
        drivers = guest.guest.drivers
        driver = guest.call(drivers.deploy, module_ko)
        try:
            guest.call(drivers.load, driver, {"scenarios": "neg_wait_at_dispatch"})
        except GuestCrashed as crash:
            # the kernel may panic instead of warning: then QEMU reports it and the console names it
            serial = collapse(guest.serial_log())
            assert collapse("Kernel panic") in serial, crash
            assert collapse("ev=scenario-start sc=neg_wait_at_dispatch") in serial
            return
        guest.wait_for_console("ev=run-end")
        assert collapse("BUG: scheduling while atomic") in collapse(guest.serial_log())
        console = guest.capture_log()
        start = console.find("ev=scenario-start sc=neg_wait_at_dispatch")
        bug = console.find("BUG: scheduling while atomic")
        assert 0 <= start < bug, "the scenario's start, then the kernel's report, on the console"
        assert any(
            event.kind in ("oops", "panic") and "scheduling while atomic" in event.summary
            for event in guest.session.capture.events
        ), "the console capture did not flag the bug"

        events = by_seq(last_run(console))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        check_catalogue(events, ["neg_wait_at_dispatch"])
        end = next(e for e in events if e.ev == "scenario-end")
        print("neg_wait_at_dispatch:", end.msg)
        # the kernel survived: the module unloads and the guest still runs commands
        guest.call(drivers.unload, driver)
        assert guest.shell("uname", "-r").strip() == image.kernel_release
    finally:
        guest.close()
