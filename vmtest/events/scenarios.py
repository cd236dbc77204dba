"""The wdk-mutex scenario catalogue: every scenario both test drivers run, and the events each prints.

The catalogue is written once, as data, in ``drivers/scenarios.json``; ``python -m
vmtest.events.catalogue_gen`` turns it into the Linux module's ``vm_catalogue.h``, the Windows driver's
``src/catalogue.rs`` and :mod:`vmtest.events.catalogue_data` (the same JSON, inside the package), which
this module reads. Per scenario it holds the parameters, whether it is a negative control or must run
last, the verdict settings it needs, and its *stream*: the events each thread prints, in order, with
their fields (``drivers/PROTOCOL.md``, "Scenarios").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmtest.events.catalogue_data import CATALOGUE_JSON
from vmtest.events.protocol import Event

__all__ = [
    "ALL_SCENARIOS",
    "CATALOGUE",
    "DEFAULT_SCENARIOS",
    "LAST_SCENARIOS",
    "NEGATIVE_CONTROLS",
    "Catalogue",
    "Parameter",
    "ScenarioSpec",
    "flat_items",
    "parse_catalogue",
    "run_order",
    "stream_differences",
]

Fields = dict[str, str]
"""One expected event: ``ev`` and its fields, every value as the protocol prints it."""


@dataclass(frozen=True)
class Parameter:
    """A run parameter the drivers take (``threads``, ``iterations``): default and allowed range."""

    name: str
    default: int
    minimum: int
    maximum: int
    what: str


@dataclass(frozen=True)
class ScenarioSpec:
    """One scenario of the catalogue."""

    name: str
    what: str
    expects: str
    negative: bool
    """A negative control: runs only when named."""
    last: bool
    """Runs after every other scenario (its failure may stop the system)."""
    params: tuple[tuple[str, int | str], ...]
    """``scenario-start``'s ``params``: name and value (a number, or ``$threads``/``$iterations``)."""
    threads: int | str
    stream: tuple[Mapping[str, Any], ...]
    verdict: Mapping[str, Any]

    @property
    def counted(self) -> bool:
        """Whether its parameters are the run's ``threads`` and ``iterations``."""
        return any(value in ("$threads", "$iterations") for _, value in self.params)

    def params_text(self, threads: int, iterations: int) -> str:
        """``params`` as ``scenario-start`` prints it: ``threads:3,iterations:500``, or ``-``."""
        parts = [f"{name}:{_value(value, threads, iterations)}" for name, value in self.params]
        return ",".join(parts) or "-"

    def thread_count(self, threads: int) -> int:
        """How many threads (t=0..n-1) it runs with the run's ``threads``."""
        return int(_value(self.threads, threads, 0))

    def expected_events(self, threads: int, iterations: int) -> list[Fields]:
        """Its events in one valid order: the stream with each thread's part run in turn."""
        count = self.thread_count(threads)
        return [
            {**fields, "sc": self.name} for fields in _expand(self.stream, count, threads, iterations, None)
        ]

    def expected_streams(self, threads: int, iterations: int) -> dict[str, list[Fields]]:
        """Per thread index, the events it must print in order (events without ``t`` count as t=0's)."""
        streams: dict[str, list[Fields]] = {}
        for fields in self.expected_events(threads, iterations):
            streams.setdefault(fields.get("t", "0"), []).append(fields)
        return streams


@dataclass(frozen=True)
class Catalogue:
    """The whole catalogue: parameters and scenarios, in catalogue order."""

    parameters: Mapping[str, Parameter]
    scenarios: tuple[ScenarioSpec, ...]

    def get(self, name: str) -> ScenarioSpec | None:
        """The scenario called ``name``, if the catalogue has one."""
        return next((spec for spec in self.scenarios if spec.name == name), None)

    def steps(self, name: str) -> list[Mapping[str, Any]]:
        """The numbered ``call`` steps of a scenario, in step order (its drivers' step table)."""
        spec = self.get(name)
        items = [item for item in flat_items(spec.stream if spec else ()) if "step" in item]
        return sorted(items, key=lambda item: int(item["step"]))


def parse_catalogue(text: str) -> Catalogue:
    """The catalogue from the text of ``drivers/scenarios.json``."""
    data = json.loads(text)
    parameters = {
        name: Parameter(name, item["default"], item["min"], item["max"], item["what"])
        for name, item in data["parameters"].items()
    }
    scenarios = tuple(
        ScenarioSpec(
            name=item["name"],
            what=item["what"],
            expects=item["expects"],
            negative=bool(item.get("negative", False)),
            last=bool(item.get("last", False)),
            params=tuple((name, value) for name, value in item["params"]),
            threads=item["threads"],
            stream=tuple(item["stream"]),
            verdict=item.get("verdict", {}),
        )
        for item in data["scenarios"]
    )
    return Catalogue(parameters, scenarios)


def _value(value: int | str, threads: int, iterations: int, t: int | None = None) -> str:
    if isinstance(value, int):
        return str(value)
    known = {
        "$threads": threads,
        "$iterations": iterations,
        "$threads*iterations": threads * iterations,
    }
    if value == "$t":
        if t is None:
            raise ValueError("$t outside each_thread")
        return str(t)
    return str(known[value]) if value in known else value


def flat_items(items: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    """The events a stream names, each once (``each_thread`` and ``repeat`` blocks opened, not expanded)."""
    for item in items:
        if "each_thread" in item:
            yield from flat_items(item["each_thread"])
        elif "repeat" in item:
            yield from flat_items(item["do"])
        else:
            yield item


def _expand(
    items: Iterable[Mapping[str, Any]], count: int, threads: int, iterations: int, t: int | None
) -> Iterable[Fields]:
    for item in items:
        if "each_thread" in item:
            for index in range(count):
                yield from _expand(item["each_thread"], count, threads, iterations, index)
        elif "repeat" in item:
            for _ in range(int(_value(item["repeat"], threads, iterations))):
                yield from _expand(item["do"], count, threads, iterations, t)
        else:
            yield {
                key: _value(value, threads, iterations, t)
                for key, value in item.items()
                if key not in ("step", "data")
            }


def stream_differences(
    events: Sequence[Event],
    scenario: str,
    threads: int,
    iterations: int,
    *,
    may_stop: bool = False,
    extra_keys: Iterable[str] = ("ctx",),
) -> list[str]:
    """How ``events`` (one run's, any order) differ from what the catalogue says ``scenario`` prints.

    Compares ``scenario-start``'s ``params`` and, per thread, the events between ``scenario-start`` and
    ``scenario-end`` in ``seq`` order, field by field (keys in ``extra_keys`` are a driver's additions and
    ignored). With ``may_stop``, a stream may end early (the system stopped), but must not differ.
    """
    spec = CATALOGUE.get(scenario)
    if spec is None:
        return [f"{scenario}: not in the catalogue"]
    own = sorted((event for event in events if event.scenario == scenario), key=lambda event: event.seq)
    problems = []
    starts = [event for event in own if event.ev == "scenario-start"]
    expected_params = spec.params_text(threads, iterations)
    if not starts:
        problems.append(f"{scenario}: no scenario-start")
    elif starts[0].get("params") != expected_params:
        problems.append(f"{scenario}: params={starts[0].get('params')}, the catalogue says {expected_params}")
    ignored = {"seq", *extra_keys}
    seen: dict[str, list[Fields]] = {}
    for event in own:
        if event.ev in ("scenario-start", "scenario-end"):
            continue
        fields = {key: value for key, value in event.fields.items() if key not in ignored}
        fields["ev"] = event.ev
        seen.setdefault(fields.get("t", "0"), []).append(fields)
    expected = spec.expected_streams(threads, iterations)
    for thread in sorted(set(expected) | set(seen), key=lambda text: (len(text), text)):
        want, got = expected.get(thread, []), seen.get(thread, [])
        problems += _stream_problems(scenario, thread, want, got, may_stop)
    return problems


def _stream_problems(
    scenario: str, thread: str, want: list[Fields], got: list[Fields], may_stop: bool
) -> list[str]:
    where = f"{scenario} t={thread}"
    for index, (wanted, found) in enumerate(zip(want, got, strict=False)):
        if wanted != found:
            return [f"{where}: event {index + 1} is {_show(found)}, the catalogue says {_show(wanted)}"]
    if len(got) > len(want):
        return [
            f"{where}: {len(got) - len(want)} events more than the catalogue, from {_show(got[len(want)])}"
        ]
    if len(got) < len(want) and not may_stop:
        return [f"{where}: {len(want) - len(got)} events missing, from {_show(want[len(got)])}"]
    return []


def _show(fields: Mapping[str, str]) -> str:
    rest = " ".join(f"{key}={value}" for key, value in fields.items() if key not in ("ev", "sc"))
    return f"ev={fields.get('ev')} {rest}".strip()


def run_order(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` without repeats, in the order given, except that those marked last come last."""
    unique = list(dict.fromkeys(names))
    return tuple(name for name in unique if name not in LAST_SCENARIOS) + tuple(
        name for name in unique if name in LAST_SCENARIOS
    )


CATALOGUE: Catalogue = parse_catalogue(CATALOGUE_JSON)
"""The catalogue shipped with this vmtest."""

LAST_SCENARIOS: frozenset[str] = frozenset(spec.name for spec in CATALOGUE.scenarios if spec.last)
"""Scenarios that run after every other one: a failure there may stop the system."""

DEFAULT_SCENARIOS: tuple[str, ...] = run_order(spec.name for spec in CATALOGUE.scenarios if not spec.negative)
"""What ``vmtest run`` runs when no scenario is named, in catalogue order (``last`` ones at the end)."""

NEGATIVE_CONTROLS: tuple[str, ...] = tuple(spec.name for spec in CATALOGUE.scenarios if spec.negative)
"""Scenarios that must make vmtest report a failure; run only when named."""

ALL_SCENARIOS: tuple[str, ...] = DEFAULT_SCENARIOS + NEGATIVE_CONTROLS
