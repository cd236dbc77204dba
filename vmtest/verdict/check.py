"""What every check looks like: the events it follows, and its findings at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from vmtest.events.protocol import Event

__all__ = ["Check", "feed_in_order", "parse_params"]


class Check(Protocol):
    """A check fed with events in ``seq`` order; pure: it only looks at what it is fed."""

    name: str

    def handlers(self) -> Mapping[str, Callable[[Event], None]]:
        """For each ``ev`` it follows, the method that takes such an event."""
        ...


def feed_in_order(check: Check, events: Iterable[Event]) -> None:
    """Feed ``events`` (any order) to ``check`` sorted by ``seq``: the pure form of a streaming check."""
    handlers = check.handlers()
    for event in sorted(events, key=lambda item: item.seq):
        handler = handlers.get(event.ev)
        if handler is not None:
            handler(event)


def parse_params(text: str) -> dict[str, str]:
    """A ``params`` value (``threads:3,iterations:500``, or ``-`` for none) as a mapping."""
    params: dict[str, str] = {}
    if text in ("", "-"):
        return params
    for pair in text.split(","):
        name, _, value = pair.partition(":")
        if name:
            params[name] = value
    return params
