"""API contracts: every ``call`` returned what the crate documents for its operation, kind and IRQL.

* Operations in the IRQL table (:mod:`vmtest.verdict.irql_contracts`) must return what their row
  says for the call's ``irql``: a call that should have been refused but returned ``Ok`` means the
  crate's check is missing; a refusal where the call was allowed means it is too strict.
* ``grt_*`` operations must return what the registry's state allows
  (:mod:`vmtest.verdict.grt_contracts`), and the ``grt_errors`` scenario must show each documented
  error, in order.
* ``drop`` and ``wait`` are reported as they happen (their finding is what the OS does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from vmtest.events.protocol import Event
from vmtest.verdict.check import feed_in_order
from vmtest.verdict.findings import Finding, FindingLog
from vmtest.verdict.grt_contracts import GRT_ERRORS_SCENARIO, GRT_ERRORS_STEPS, GRT_OPS, GrtModel, GrtStep
from vmtest.verdict.irql_contracts import IRQL_CONTRACTS, contract_for, irql_name

__all__ = ["ContractsCheck", "check_contracts"]

CHECK = "contracts"
_KINDS = sorted({row.kind for row in IRQL_CONTRACTS})
_TABLE_OPS = frozenset(row.op for row in IRQL_CONTRACTS)


class ContractsCheck:
    """Checks each ``call`` against the IRQL table and the registry model; follows ``grt_errors``."""

    name = CHECK

    def __init__(self, limit: int = 20) -> None:
        self._log = FindingLog(CHECK, limit)
        self._grt = GrtModel()
        self._grt_errors: list[tuple[str, str]] = []  # (op, result) of the grt_errors scenario's calls

    def handlers(self) -> Mapping[str, Callable[[Event], None]]:
        """The events this check follows."""
        return {
            "run-start": self._run_start,
            "scenario-start": self._scenario_start,
            "call": self._call,
            "scenario-end": self._scenario_end,
        }

    def finish(self) -> list[Finding]:
        """The failures found."""
        return self._log.findings()

    def _run_start(self, event: Event) -> None:
        self._grt.reset()

    def _scenario_start(self, event: Event) -> None:
        if event.scenario == GRT_ERRORS_SCENARIO:
            self._grt_errors = []

    def _call(self, event: Event) -> None:
        op = event.get("op")
        if op in _TABLE_OPS:
            self._irql_call(event, op)
        elif op in GRT_OPS:
            self._grt_call(event, op)

    def _irql_call(self, event: Event, op: str) -> None:
        irql = _irql(event)
        if irql is None:
            self._log.add(
                event.scenario, f"call op={op} without a numeric irql: its contract cannot be checked", event
            )
            return
        kind = event.get("k")
        rows = [contract_for(op, kind)] if kind else [contract_for(op, other) for other in _KINDS]
        known = [row for row in rows if row is not None]
        if not known:
            self._log.add(event.scenario, f"call op={op} on an unknown mutex kind k={kind}", event)
            return
        allowed = {frozenset(row.expected(irql)) for row in known}
        if len(allowed) > 1:
            self._log.add(event.scenario, f"call op={op} without k: its contract depends on the kind", event)
            return
        result = event.get("r")
        (expected,) = allowed
        if result not in expected:
            row = known[0]
            on = f" on {row.kind} {event.mutex}".rstrip() if kind else ""
            self._log.add(
                event.scenario,
                f"{op}{on} at IRQL {irql_name(irql)} returned {result}, the contract says "
                f"{' or '.join(sorted(expected))} ({row.describe()}; {row.source})",
                event,
            )

    def _grt_call(self, event: Event, op: str) -> None:
        label, kind, result = event.mutex, event.get("k"), event.get("r")
        expected = self._grt.expected(op, label, kind)
        if result not in expected:
            where = f" for {label!r}" if label else ""
            self._log.add(
                event.scenario,
                f"{op}{where} returned {result}; with the registry as the calls so far left it, the "
                f'documented result is {" or ".join(sorted(expected))} (API notes "Grt")',
                event,
            )
        self._grt.apply(op, label, kind, result)
        if event.scenario == GRT_ERRORS_SCENARIO and len(self._grt_errors) < 1000:
            self._grt_errors.append((op, result))

    def _scenario_end(self, event: Event) -> None:
        """``grt_errors`` must show each documented step, in order (a missing one is skipped over)."""
        if event.scenario != GRT_ERRORS_SCENARIO or event.get("outcome") != "done":
            return
        missing = []
        at = 0
        for step in GRT_ERRORS_STEPS:
            found = next(
                (
                    index
                    for index in range(at, len(self._grt_errors))
                    if _shows(self._grt_errors[index], step)
                ),
                None,
            )
            if found is None:
                missing.append(f"{step.what} ({step.op} returning {' or '.join(sorted(step.results))})")
            else:
                at = found + 1
        if missing:
            self._log.add(
                event.scenario,
                f"grt_errors did not show, in the documented order: {'; '.join(missing)}",
                event,
            )


def _shows(call: tuple[str, str], step: GrtStep) -> bool:
    return call[0] == step.op and call[1] in step.results


def _irql(event: Event) -> int | None:
    try:
        return int(event.fields["irql"])
    except (KeyError, ValueError):
        return None


def check_contracts(events: Iterable[Event]) -> list[Finding]:
    """Contract failures among ``events`` (any order; sorted by ``seq`` here). Pure."""
    check = ContractsCheck()
    feed_in_order(check, events)
    return check.finish()
