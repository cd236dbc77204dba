"""The vmtest event protocol, version 1 (``drivers/PROTOCOL.md``): parse and format one event line.

An event line is ``VMTEST1 seq=<n> ev=<event> key=value ... [msg=free text]`` and may stand anywhere in
a line of kernel output, after whatever prefix a capture tool added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "EVENT_KINDS",
    "PREFIX",
    "Event",
    "ProtocolError",
    "format_event",
    "parse_line",
]

PREFIX = "VMTEST1 "
EVENT_KINDS = frozenset(
    {
        "run-start",
        "scenario-start",
        "mutex",
        "acquire",
        "acquired",
        "release",
        "call",
        "counter",
        "thread-end",
        "scenario-end",
        "run-end",
    }
)
_KEY = re.compile(r"^[a-z_]+$")
_VALUE = re.compile(r"^[A-Za-z0-9_.:,+-]+$")
MAX_LINE = 400


class ProtocolError(ValueError):
    """A line carries the protocol prefix but is not a well-formed event."""


@dataclass(frozen=True)
class Event:
    """One event: its sequence number, kind and fields, and the line it came from."""

    seq: int
    ev: str
    fields: Mapping[str, str] = field(default_factory=dict)
    msg: str | None = None
    line: str = ""
    """The whole captured line, prefixes included, for quoting in failure messages."""
    lineno: int = 0
    """1-based line number in the capture the event was read from (0 when not from a file)."""

    def get(self, key: str, default: str = "") -> str:
        """A field's value, or ``default``."""
        return self.fields.get(key, default)

    def int(self, key: str, default: int = 0) -> int:
        """A field's value as an integer, or ``default`` when absent or not a number."""
        try:
            return int(self.fields[key])
        except (KeyError, ValueError):
            return default

    @property
    def scenario(self) -> str:
        """The ``sc`` field."""
        return self.fields.get("sc", "")

    @property
    def thread(self) -> str:
        """The ``t`` field."""
        return self.fields.get("t", "")

    @property
    def mutex(self) -> str:
        """The ``m`` field."""
        return self.fields.get("m", "")

    def where(self) -> str:
        """``line N: <text>`` for failure messages."""
        text = self.line.strip() or format_event(self)
        return f"line {self.lineno}: {text}" if self.lineno else text


def parse_line(line: str, lineno: int = 0) -> Event | None:
    """The event in ``line``, None if the line has no protocol prefix; ProtocolError if it is malformed."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    body = line[start + len(PREFIX) :].rstrip("\r\n").rstrip()
    if start > 0 and line[start - 1] == '"' and body.endswith('"'):
        body = body[:-1]  # a quoted CSV column (DebugView's CSV export)
    msg: str | None = None
    at = body.find(" msg=")
    if at >= 0:
        body, msg = body[:at], body[at + len(" msg=") :]
    elif body.startswith("msg="):
        raise ProtocolError(f"event without seq: {line.strip()!r}")
    fields: dict[str, str] = {}
    for token in body.split():
        key, sep, value = token.partition("=")
        if not sep or not _KEY.match(key) or not _VALUE.match(value):
            raise ProtocolError(f"malformed field {token!r} in {line.strip()!r}")
        if key in fields:
            raise ProtocolError(f"field {key!r} given twice in {line.strip()!r}")
        fields[key] = value
    try:
        seq = int(fields.pop("seq"))
        kind = fields.pop("ev")
    except (KeyError, ValueError):
        raise ProtocolError(f"event without a numeric seq and an ev: {line.strip()!r}") from None
    return Event(seq=seq, ev=kind, fields=fields, msg=msg, line=line.rstrip("\r\n"), lineno=lineno)


def format_event(event: Event) -> str:
    """The canonical line for ``event`` (what a driver prints), without a line ending."""
    parts = [f"seq={event.seq}", f"ev={event.ev}"]
    parts += [f"{key}={value}" for key, value in event.fields.items()]
    if event.msg is not None:
        parts.append(f"msg={event.msg}")
    return PREFIX + " ".join(parts)
