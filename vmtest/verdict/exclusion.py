"""Mutual exclusion: per mutex, in ``seq`` order, never two holders; releases match acquisitions.

A mutex is known by its scenario and name (``sc`` + ``m``). Walking its ``acquired``/``release``
events in ``seq`` order (``seq`` is taken while the lock is held, so this is the true order of the
critical sections):

* an acquisition while another thread holds it is an overlap: exclusion failed;
* a re-entry by the holder is allowed for ``kmutex`` (a KMUTEX is recursive for its owner; the depth
  grows) and is a failure for ``fast_mutex`` (a FAST_MUTEX is not recursive: a real one deadlocks);
* a release by a thread that does not hold it, and a ``depth`` that disagrees with the count, are
  failures;
* anything still held at ``scenario-end`` is a failure (a scenario that never ended is left to the
  completeness check; what was held then is given as a note).

See wdk-mutex-api.md, "KMutex<T>" (KMUTEX semantics) and "FastMutex<T>" (not recursive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from vmtest.events.protocol import Event
from vmtest.verdict.check import feed_in_order
from vmtest.verdict.findings import Finding, FindingLog

__all__ = ["RECURSIVE_KINDS", "ExclusionCheck", "check_exclusion"]

CHECK = "exclusion"
RECURSIVE_KINDS = frozenset({"kmutex"})
"""Mutex kinds whose owner may acquire them again (wdk-mutex-api.md, "KMutex<T>": KMUTEX semantics)."""


class _Mutex:
    """One mutex's state: its kind, and who holds it how deeply since which line."""

    __slots__ = ("depth", "kind", "name", "since")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.depth: dict[str, int] = {}  # holder thread -> recursion depth
        self.since: dict[str, Event] = {}  # holder thread -> the acquired event that took it

    def describe(self) -> str:
        return f"{self.name} ({self.kind})" if self.kind else self.name

    def holders(self) -> str:
        return ", ".join(f"t={thread}" for thread in self.depth) or "nobody"


class ExclusionCheck:
    """Follows every mutex's holders through ``acquired``/``release`` events fed in ``seq`` order."""

    name = CHECK

    def __init__(self, limit: int = 20) -> None:
        self._scenarios: dict[str, dict[str, _Mutex]] = {}
        self._log = FindingLog(CHECK, limit)

    def handlers(self) -> Mapping[str, Callable[[Event], None]]:
        """The events this check follows."""
        return {
            "scenario-start": self._scenario_start,
            "mutex": self._declared,
            "acquired": self._acquired,
            "release": self._release,
            "scenario-end": self._scenario_end,
        }

    def finish(self) -> list[Finding]:
        """The failures found."""
        return self._log.findings()

    def still_held(self) -> dict[str, list[str]]:
        """Per scenario that never ended, what was held when the capture stopped (for hang reports)."""
        notes: dict[str, list[str]] = {}
        for scenario, mutexes in self._scenarios.items():
            for mutex in mutexes.values():
                for thread, depth in mutex.depth.items():
                    since = mutex.since[thread].where()
                    notes.setdefault(scenario, []).append(
                        f"t={thread} held {mutex.describe()} (depth {depth}) since {since}"
                    )
        return notes

    def _mutex(self, event: Event) -> _Mutex:
        fields = event.fields
        scenario = fields.get("sc", "")
        mutexes = self._scenarios.get(scenario)
        if mutexes is None:
            mutexes = self._scenarios[scenario] = {}
        name = fields.get("m", "")
        mutex = mutexes.get(name)
        if mutex is None:
            mutex = mutexes[name] = _Mutex(name, fields.get("k", ""))
        return mutex

    def _scenario_start(self, event: Event) -> None:
        self._scenarios[event.scenario] = {}

    def _declared(self, event: Event) -> None:
        mutex = self._mutex(event)
        mutex.kind = event.get("k") or mutex.kind

    def _acquired(self, event: Event) -> None:
        fields = event.fields
        mutexes = self._scenarios.get(fields.get("sc", ""))
        mutex = mutexes.get(fields.get("m", "")) if mutexes is not None else None
        if mutex is None:
            mutex = self._mutex(event)
        thread = fields.get("t", "")
        depth = mutex.depth
        if not depth:  # the common case: a free mutex
            depth[thread] = 1
            mutex.since[thread] = event
            if fields.get("depth", "1") != "1":
                self._depth(event, mutex, 1)
            return
        held = depth.get(thread)
        if held is None:
            self._log.add(
                event.scenario,
                f"exclusion violated: t={thread} acquired {mutex.describe()} while {mutex.holders()} held it",
                event,
                *mutex.since.values(),
            )
            depth[thread] = 1
            mutex.since[thread] = event
            return
        kind = fields.get("k") or mutex.kind
        if kind not in RECURSIVE_KINDS:
            self._log.add(
                event.scenario,
                f"{kind or 'mutex'} {mutex.name} re-entered by its holder t={thread}: it is not recursive "
                "(a real one deadlocks here)",
                event,
                mutex.since[thread],
            )
        depth[thread] = held + 1
        said = fields.get("depth")
        if said is not None and said != str(held + 1):
            self._depth(event, mutex, held + 1)

    def _release(self, event: Event) -> None:
        fields = event.fields
        mutexes = self._scenarios.get(fields.get("sc", ""))
        mutex = mutexes.get(fields.get("m", "")) if mutexes is not None else None
        thread = fields.get("t", "")
        held = mutex.depth.get(thread) if mutex is not None else None
        if held is None:
            name = mutex.describe() if mutex is not None else fields.get("m", "")
            self._log.add(
                event.scenario,
                f"t={thread} released {name}, which it did not hold (held by "
                f"{mutex.holders() if mutex is not None else 'nobody'})",
                event,
                *(mutex.since.values() if mutex is not None else ()),
            )
            return
        assert mutex is not None
        said = fields.get("depth")
        if held <= 1:
            if said is not None and said != "1":
                self._depth(event, mutex, held)
            del mutex.depth[thread]
            del mutex.since[thread]
            return
        if said is not None and said != str(held):
            self._depth(event, mutex, held)
        mutex.depth[thread] = held - 1

    def _scenario_end(self, event: Event) -> None:
        mutexes = self._scenarios.pop(event.scenario, {})
        for mutex in mutexes.values():
            for thread, depth in mutex.depth.items():
                self._log.add(
                    event.scenario,
                    f"{mutex.describe()} still held by t={thread} (depth {depth}) at the scenario's end",
                    mutex.since[thread],
                    event,
                )

    def _depth(self, event: Event, mutex: _Mutex, expected: int) -> None:
        self._log.add(
            event.scenario,
            f"{event.ev} of {mutex.describe()} by t={event.thread} says depth={event.get('depth')}, "
            f"but by the events so far the depth is {expected}",
            event,
        )


def check_exclusion(events: Iterable[Event]) -> list[Finding]:
    """Exclusion failures among ``events`` (any order; sorted by ``seq`` here). Pure."""
    check = ExclusionCheck()
    feed_in_order(check, events)
    return check.finish()
