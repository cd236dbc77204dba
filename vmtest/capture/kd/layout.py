"""Little-endian records written the way the spec's tables are: rows of (field, offset, struct code).

Each :class:`Layout` derives its ``struct`` format from the offsets, inserting the padding between
fields, and refuses at import time a table whose rows overlap or overrun the record. So the offsets in
the source are the spec's offsets, and a wrong one cannot silently shift the fields after it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

__all__ = ["Field", "Layout"]

Field = tuple[str, int, str]
"""One row of a spec table: field name, offset from the start of the payload, ``struct`` code."""


class Layout:
    """A fixed-size little-endian record whose field offsets are checked against each other."""

    def __init__(self, name: str, size: int, fields: Sequence[Field]) -> None:
        fmt = "<"
        pos = 0
        offsets: dict[str, int] = {}
        for field, offset, code in fields:
            if offset < pos:
                raise ValueError(f"{name}.{field} at {offset:#x} overlaps the field before it")
            if offset > pos:
                fmt += f"{offset - pos}x"
            fmt += code
            pos = offset + struct.calcsize("<" + code)
            offsets[field] = offset
        if pos > size:
            raise ValueError(f"{name} fields end at {pos:#x}, past its size {size:#x}")
        if size > pos:
            fmt += f"{size - pos}x"
        self.name = name
        self.size = size
        self.offsets: dict[str, int] = offsets
        self._struct = struct.Struct(fmt)

    def unpack(self, buffer: bytes | bytearray | memoryview) -> tuple[Any, ...]:
        """The field values, in table order, from the start of ``buffer`` (at least ``size`` bytes)."""
        return self._struct.unpack_from(buffer)

    def pack(self, *values: Any) -> bytes:
        """The record with these field values, in table order; padding is zero."""
        return self._struct.pack(*values)
