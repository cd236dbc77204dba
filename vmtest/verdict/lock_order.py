"""Lock order, lockdep-style: a cycle in "held X while acquiring Y" is a potential deadlock.

Every ``acquire`` (the request, printed before the call blocks, so a run that really deadlocked still
shows its edges) and every ``acquired`` made while the thread holds other locks adds the edges
"held -> acquiring" to one graph over all threads and scenarios. The nodes are lock classes: a mutex
is known by its scenario and its name (``sc`` + ``m``), which is where the driver creates it, the way
lockdep names a class by its initialisation site. A recursive re-entry adds no edge.

A cycle is reported even when the run did not deadlock (the threads' timing just spared it), naming
the threads and quoting, for every edge, the line that took the held lock and the line that asked for
the next one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from vmtest.events.protocol import Event
from vmtest.verdict.check import feed_in_order
from vmtest.verdict.findings import Finding

__all__ = ["LockOrderCheck", "check_lock_order", "lock_edges"]

CHECK = "lock_order"


@dataclass(frozen=True)
class _Edge:
    """The first witness of "held ``source`` while acquiring ``target``"."""

    thread: str
    held: Event
    acquiring: Event


class LockOrderCheck:
    """Builds the lock-order graph from events fed in ``seq`` order; reports its cycles."""

    name = CHECK

    def __init__(self) -> None:
        # scenario -> thread -> mutex -> the acquired event that took it
        self._held: dict[str, dict[str, dict[str, Event]]] = {}
        self._deeper: dict[tuple[str, str, str], int] = {}  # recursion beyond depth 1, rare
        self._edges: dict[tuple[str, str, str], _Edge] = {}  # (scenario, held, acquiring) -> witness

    def handlers(self) -> Mapping[str, Callable[[Event], None]]:
        """The events this check follows."""
        return {
            "scenario-start": self._scenario_start,
            "acquire": self._acquire,
            "acquired": self._acquired,
            "release": self._release,
        }

    def _graphs(self) -> dict[str, dict[str, set[str]]]:
        graphs: dict[str, dict[str, set[str]]] = {}
        for scenario, source, target in self._edges:
            graphs.setdefault(scenario, {}).setdefault(source, set()).add(target)
        return graphs

    def finish(self) -> list[Finding]:
        """One finding per cycle (per strongly connected group of lock classes)."""
        return [
            self._report(scenario, group)
            for scenario, graph in self._graphs().items()
            for group in _cycles(graph)
        ]

    def edges(self) -> list[tuple[str, str, bool]]:
        """Every edge as ``("scenario:held", "scenario:acquired", in_a_cycle)``, for drawing the graph."""
        drawn = []
        for scenario, graph in self._graphs().items():
            in_cycle: set[tuple[str, str]] = set()
            for cycle in _cycles(graph):
                in_cycle.update(zip(cycle, [*cycle[1:], cycle[0]], strict=True))
            for source, targets in graph.items():
                for target in sorted(targets):
                    drawn.append(
                        (f"{scenario}:{source}", f"{scenario}:{target}", (source, target) in in_cycle)
                    )
        return drawn

    def _scenario_start(self, event: Event) -> None:
        self._held.pop(event.scenario, None)
        if self._deeper:
            self._deeper = {key: depth for key, depth in self._deeper.items() if key[0] != event.scenario}

    def _acquire(self, event: Event) -> None:
        fields = event.fields
        threads = self._held.get(fields.get("sc", ""))
        if threads is None:
            return
        held = threads.get(fields.get("t", ""))
        if held:
            self._add_edges(event, held)

    def _acquired(self, event: Event) -> None:
        fields = event.fields
        scenario = fields.get("sc", "")
        threads = self._held.get(scenario)
        if threads is None:
            threads = self._held[scenario] = {}
        thread = fields.get("t", "")
        held = threads.get(thread)
        if held is None:
            held = threads[thread] = {}
        name = fields.get("m", "")
        if name in held:  # a recursive re-entry: no new order
            key = (scenario, thread, name)
            self._deeper[key] = self._deeper.get(key, 1) + 1
            return
        if held:
            self._add_edges(event, held)  # in case the acquire line was lost
        held[name] = event

    def _release(self, event: Event) -> None:
        fields = event.fields
        threads = self._held.get(fields.get("sc", ""))
        held = threads.get(fields.get("t", "")) if threads is not None else None
        name = fields.get("m", "")
        if held is None or name not in held:
            return  # the exclusion check reports releases of locks not held
        if self._deeper:
            key = (event.scenario, event.thread, name)
            depth = self._deeper.pop(key, 1)
            if depth > 2:
                self._deeper[key] = depth - 1
            if depth > 1:
                return
        del held[name]

    def _add_edges(self, event: Event, held: dict[str, Event]) -> None:
        scenario = event.scenario
        target = event.mutex
        for source, since in held.items():
            key = (scenario, source, target)
            if source != target and key not in self._edges:
                self._edges[key] = _Edge(event.thread, since, event)

    def _report(self, scenario: str, cycle: list[str]) -> Finding:
        steps = []
        lines: list[str] = []
        edges = [
            self._edges[(scenario, source, target)]
            for source, target in zip(cycle, [*cycle[1:], cycle[0]], strict=True)
        ]
        for edge in edges:
            steps.append(f"t={edge.thread} acquired {_name(edge.acquiring)} while holding {_name(edge.held)}")
            lines += [edge.held.where(), edge.acquiring.where()]
        order = " -> ".join([*cycle, cycle[0]])
        threads = sorted({edge.thread for edge in edges})
        message = (
            f"lock-order inversion, a potential deadlock ({order}) between "
            f"{', '.join(f't={thread}' for thread in threads)}: " + "; ".join(steps)
        )
        return Finding(CHECK, message, tuple(lines), scenario)


def _name(event: Event) -> str:
    kind = event.get("k")
    return f"{event.mutex} ({kind})" if kind else event.mutex


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected group of two or more nodes."""
    cycles = []
    for group in _strong_components(graph):
        if len(group) < 2:
            continue
        start = min(group)
        cycles.append(_shortest_cycle(graph, start, group))
    return cycles


def _strong_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively."""
    nodes = sorted(set(graph) | {target for targets in graph.values() for target in targets})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            advanced = False
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def _shortest_cycle(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``group`` (breadth first)."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph.get(node, ())):
            if target not in group:
                continue
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return path[::-1]
            if target not in parents:
                parents[target] = node
                queue.append(target)
    raise AssertionError("a strongly connected group always has a cycle")  # pragma: no cover


def check_lock_order(events: Iterable[Event]) -> list[Finding]:
    """Lock-order cycles among ``events`` (any order; sorted by ``seq`` here). Pure."""
    check = LockOrderCheck()
    feed_in_order(check, events)
    return check.finish()


def lock_edges(events: Iterable[Event]) -> list[tuple[str, str, bool]]:
    """The lock-order graph of ``events``: :meth:`LockOrderCheck.edges`. Pure."""
    check = LockOrderCheck()
    feed_in_order(check, events)
    return check.edges()
