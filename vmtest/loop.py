"""Running vmtest's async work from a command: one event loop in the main thread, SIGTERM as Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_main"]

T = TypeVar("T")


def run_main(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` in a fresh event loop in this thread; SIGTERM cancels it like Ctrl-C does.

    A cancelled run still tears down in order (the VM is shut down) and then raises KeyboardInterrupt.
    """

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coroutine
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(guarded())
