"""A bounded, closable hand-off of events from the host's tasks to the caller's ``async for``."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Channel"]

T = TypeVar("T")


class Channel(Generic[T]):
    """FIFO with back-pressure: ``put`` waits while ``maxsize`` items are unread.

    ``put_final`` goes past the bound, for the last few items of a closing producer that must not
    wait for a reader who may be gone; after ``close``, items put are dropped, and ``get`` drains
    what is left, then returns ``None``.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def put(self, item: T) -> None:
        """Add an item, waiting for room."""
        while len(self._items) >= self._maxsize and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        self._put(item)

    def put_final(self, item: T) -> None:
        """Add an item now, even past the bound."""
        self._put(item)

    def close(self) -> None:
        """No more items: readers get ``None`` once the channel is empty."""
        self._closed = True
        self._readable.set()
        self._writable.set()

    async def get(self) -> T | None:
        """The next item, or ``None`` when the channel is closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item

    def _put(self, item: T) -> None:
        if self._closed:
            return  # a late producer (say, a stall noticed as the stream closed): nobody expects it
        self._items.append(item)
        self._readable.set()
