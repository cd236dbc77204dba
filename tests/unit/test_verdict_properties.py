"""Property tests: every valid interleaving passes; one injected violation is caught by the right check.

Hypothesis drives a scheduler over several threads and mutexes: each thread runs iterations that take
a few mutexes in one global order (a ``kmutex`` may be re-entered by its holder), and a thread may
only get a mutex that is free or its own. Calls with random IRQLs get the result the contract table
prescribes. The trace is printed as the driver would (``format_event``), with printk stamps, foreign
kernel lines and some neighbouring lines swapped, then read back and judged. Such a run must pass;
then exactly one violation is injected, and the verdict must fail with it named by its check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vmtest.events.protocol import Event, format_event
from vmtest.events.reader import EventReader
from vmtest.verdict import Finding, RunVerdict, judge
from vmtest.verdict.irql_contracts import IRQL_CONTRACTS

Fields = dict[str, str]
MUTEXES = (("a", "kmutex"), ("b", "fast_mutex"), ("c", "kmutex"))
SCENARIO = "kmutex_contention"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Trace:
    """Events in their true order (``seq`` is given when printed)."""

    events: list[tuple[str, Fields]] = field(default_factory=list)
    threads: int = 0

    def add(self, ev: str, **fields: object) -> None:
        self.events.append((ev, {key: str(value) for key, value in fields.items()}))


@st.composite
def valid_traces(draw: st.DrawFn) -> Trace:
    """A run of one scenario whose threads respect exclusion, recursion rules and one lock order."""
    threads = draw(st.integers(2, 6))
    iterations = draw(st.integers(1, 3))
    mutexes = MUTEXES[: draw(st.integers(1, 3))]
    programs: dict[int, list[tuple[str, str, str]]] = {}  # thread -> steps (action, mutex, kind)
    for t in range(threads):
        steps: list[tuple[str, str, str]] = []
        for _ in range(iterations):
            chosen = [m for m in mutexes if draw(st.booleans())] or [mutexes[0]]  # kept in global order
            taken = []
            for name, kind in chosen:
                taken.append((name, kind))
                if kind == "kmutex" and draw(st.booleans()):
                    taken.append((name, kind))  # recursive re-entry
            steps += [("lock", name, kind) for name, kind in taken]
            steps += [("unlock", name, kind) for name, kind in reversed(taken)]
        programs[t] = steps
    trace = Trace(threads=threads)
    trace.add("run-start", driver="vmtest_mutex", proto=1, os="linux")
    trace.add("scenario-start", sc=SCENARIO, params=f"threads:{threads},iterations:{iterations}")
    for name, kind in mutexes:
        trace.add("mutex", sc=SCENARIO, m=name, k=kind)
    owner: dict[str, tuple[int, int]] = {}  # mutex -> (thread, depth)
    position = dict.fromkeys(programs, 0)
    asked: set[int] = set()
    while True:
        runnable = []
        for t, steps in programs.items():
            if position[t] == len(steps):
                continue
            action, name, _ = steps[position[t]]
            holder = owner.get(name)
            if action == "unlock" or t not in asked or holder is None or holder[0] == t:
                runnable.append(t)
        if not runnable:
            assert all(position[t] == len(steps) for t, steps in programs.items()), "no deadlock possible"
            break
        t = draw(st.sampled_from(runnable))
        action, name, kind = programs[t][position[t]]
        common = {"sc": SCENARIO, "t": t, "m": name, "k": kind}
        if action == "lock" and t not in asked:
            trace.add("acquire", **common, irql=0)
            asked.add(t)
            continue
        if action == "lock":
            depth = owner[name][1] + 1 if name in owner else 1
            owner[name] = (t, depth)
            trace.add("acquired", **common, irql=0, depth=depth)
            asked.discard(t)
        else:
            _, depth = owner[name]
            trace.add("release", **common, irql=0, depth=depth)
            owner[name] = (t, depth - 1)
            if depth == 1:
                del owner[name]
        position[t] += 1
        if position[t] == len(programs[t]):
            trace.add("thread-end", sc=SCENARIO, t=t, iterations=iterations)
    for _ in range(draw(st.integers(0, 4))):
        row = draw(st.sampled_from(IRQL_CONTRACTS))
        irql = draw(st.integers(0, 15))
        result = sorted(row.expected(irql))[0]
        trace.add("call", sc=SCENARIO, t=0, op=row.op, m="x", k=row.kind, irql=irql, r=result)
    trace.add("counter", sc=SCENARIO, m="counter", value=threads * iterations, expected=threads * iterations)
    trace.add("scenario-end", sc=SCENARIO, outcome="done")
    trace.add("run-end", scenarios=1)
    return trace


def printed(trace: Trace, data: st.DataObject) -> list[str]:
    """The capture of a trace: numbered, stamped, with foreign lines and neighbours swapped."""
    lines = []
    for seq, (ev, fields) in enumerate(trace.events, 1):
        if data.draw(st.integers(0, 9)) == 0:
            lines.append("[    1.000000] e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex")
        lines.append(f"[    2.{seq:06d}] " + format_event(Event(seq, ev, fields)))
    for _ in range(data.draw(st.integers(0, 3))):  # neighbouring lines printed out of order
        at = data.draw(st.integers(0, len(lines) - 2))
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    return lines


def verdict_of(lines: list[str]) -> RunVerdict:
    reader = EventReader()
    events = list(reader.read(lines))  # the reader's problems and tails are complete only after this
    return judge(events, [SCENARIO], problems=reader.problems, tails=reader.tails())


def failures(verdict: RunVerdict) -> list[Finding]:
    return [*verdict.findings, *(finding for item in verdict.scenarios for finding in item.findings)]


def held_by(trace: Trace, upto: int) -> dict[str, set[str]]:
    """Per thread, the mutexes it holds just after event ``upto``."""
    held: dict[str, dict[str, int]] = {}
    for ev, fields in trace.events[: upto + 1]:
        mine = held.setdefault(fields.get("t", ""), {})
        if ev == "acquired":
            mine[fields["m"]] = mine.get(fields["m"], 0) + 1
        elif ev == "release":
            mine[fields["m"]] -= 1
            if not mine[fields["m"]]:
                del mine[fields["m"]]
    return {thread: set(names) for thread, names in held.items()}


@SETTINGS
@given(st.data())
def test_valid_interleavings_pass(data: st.DataObject) -> None:
    trace = data.draw(valid_traces())
    verdict = verdict_of(printed(trace, data))
    assert verdict.passed, verdict.render()
    assert verdict.events == len(trace.events)


@SETTINGS
@given(st.data())
def test_an_overlap_is_caught_by_the_exclusion_check(data: st.DataObject) -> None:
    trace = data.draw(valid_traces())
    holds = [
        index
        for index, (ev, fields) in enumerate(trace.events)
        if ev == "acquired" and fields["depth"] == "1"
    ]
    index = data.draw(st.sampled_from(holds))
    fields = trace.events[index][1]
    idle = [
        t for t in range(trace.threads) if not held_by(trace, index).get(str(t)) and str(t) != fields["t"]
    ]
    assume(idle)  # else every other thread holds something here: no clean overlap to inject
    intruder = str(data.draw(st.sampled_from(idle)))
    other = {**fields, "t": intruder}
    trace.events[index + 1 : index + 1] = [("acquired", other), ("release", other)]
    verdict = verdict_of(printed(trace, data))
    found = failures(verdict)
    assert {finding.check for finding in found} == {"exclusion"}, verdict.render()
    assert any(f"t={intruder} acquired {fields['m']}" in finding.message for finding in found)


@SETTINGS
@given(st.data())
def test_a_lost_line_is_caught_and_numbered_by_the_sequence_check(data: st.DataObject) -> None:
    trace = data.draw(valid_traces())
    requests = [index for index, (ev, _) in enumerate(trace.events) if ev == "acquire"]
    index = data.draw(st.sampled_from(requests))
    lines = [line for line in printed(trace, data) if f" seq={index + 1} " not in line]
    verdict = verdict_of(lines)
    (finding,) = failures(verdict)
    assert finding.check == "sequence"
    assert f"1 line lost: seq {index + 1} never reached the capture" in finding.message


@SETTINGS
@given(st.data())
def test_an_inversion_is_caught_by_the_lock_order_check(data: st.DataObject) -> None:
    trace = data.draw(valid_traces())
    orders = set()
    for index, (ev, fields) in enumerate(trace.events):
        if ev == "acquired":
            for name in held_by(trace, index - 1).get(fields["t"], set()) - {fields["m"]}:
                orders.add((name, fields["m"]))
    assume(orders)  # else no thread ever held two mutexes: no order to invert
    first, second = data.draw(st.sampled_from(sorted(orders)))
    kinds = dict(MUTEXES)
    t = str(data.draw(st.integers(0, trace.threads - 1)))
    end = next(index for index, (ev, _) in enumerate(trace.events) if ev == "counter")
    reverse = []
    for name in (second, first):
        common = {"sc": SCENARIO, "t": t, "m": name, "k": kinds[name], "irql": "0"}
        reverse += [("acquire", common), ("acquired", {**common, "depth": "1"})]
    for name in (first, second):
        reverse.append(
            ("release", {"sc": SCENARIO, "t": t, "m": name, "k": kinds[name], "irql": "0", "depth": "1"})
        )
    trace.events[end:end] = reverse
    verdict = verdict_of(printed(trace, data))
    found = failures(verdict)
    assert {finding.check for finding in found} == {"lock_order"}, verdict.render()
    assert (
        "lock-order inversion" in found[0].message
        and first in found[0].message
        and second in found[0].message
    )


@SETTINGS
@given(st.data())
def test_a_wrong_irql_result_is_caught_by_the_contracts_check(data: st.DataObject) -> None:
    trace = data.draw(valid_traces())
    row = data.draw(st.sampled_from([row for row in IRQL_CONTRACTS if row.highest is not None]))
    irql = data.draw(st.integers(0, 15))
    wrong = "Ok" if row.expected(irql) == {row.error} else row.error
    end = next(index for index, (ev, _) in enumerate(trace.events) if ev == "counter")
    fields = {"sc": SCENARIO, "t": "0", "op": row.op, "m": "x", "k": row.kind, "irql": str(irql), "r": wrong}
    trace.events.insert(end, ("call", fields))
    verdict = verdict_of(printed(trace, data))
    (finding,) = failures(verdict)
    assert finding.check == "contracts"
    assert f"{row.op} on {row.kind} x at IRQL" in finding.message and f"returned {wrong}" in finding.message
    assert f"seq={end + 1} ev=call" in finding.lines[0]


@SETTINGS
@given(st.data())
def test_a_missing_end_is_caught_by_the_completeness_check(data: st.DataObject) -> None:
    trace = data.draw(valid_traces())
    trace.events = [(ev, fields) for ev, fields in trace.events if ev not in ("scenario-end", "run-end")]
    verdict = verdict_of(printed(trace, data))
    (finding,) = failures(verdict)
    assert finding.check == "completeness" and finding.message.startswith("hang: ")
    assert [item.status for item in verdict.scenarios] == ["hang"]
    assert finding.lines, "the last lines seen are quoted"
