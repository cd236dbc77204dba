"""A VM session for synchronous code (the pytest plugin): its event loop runs in a thread of its own.

QEMU is bound to the thread that spawned it (its parent-death signal), so that thread lives exactly as
long as the VM: from :meth:`BackgroundSession.start` to :meth:`BackgroundSession.close`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from vmtest.config.models import VmtestConfig
from vmtest.guests import Guest
from vmtest.progress import Progress
from vmtest.session import VmSession

__all__ = ["BackgroundSession"]

T = TypeVar("T")
_JOIN_TIMEOUT = 120.0


class BackgroundSession:
    """Boots a guest and logs in; every later call runs on the session's own event loop."""

    def __init__(self, config: VmtestConfig, progress: Progress, *, label: str = "pytest") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"vmtest-{label}", daemon=True)
        self._thread.start()
        self.session = VmSession(config, progress, label=label)
        self._entered = False

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the session's loop and return its result (``timeout`` bounds the wait)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def start(self, *, connect: bool = True) -> Guest | None:
        """Boot, wait until ready, and (unless asked not to) log in."""
        budget = self.session.config.timeouts.boot * 2 + 60
        self.run(self.session.__aenter__(), budget)
        self._entered = True
        return self.run(self.session.connect(), budget) if connect else None

    @property
    def guest(self) -> Guest:
        """The logged-in guest."""
        if self.session.guest is None:
            raise RuntimeError("not logged in: call start()")
        return self.session.guest

    def call(
        self,
        function: Callable[..., T],
        *args: object,
        timeout: float = 120.0,
        what: str = "a guest operation",
    ) -> T:
        """Run a blocking guest operation, ending early if the VM dies or crashes."""
        return self.run(self.session.call(function, *args, timeout=timeout, what=what), timeout + 30)

    def close(self) -> None:
        """Shut the VM down and stop the loop's thread."""
        try:
            if self._entered:
                self.run(self.session.__aexit__(None, None, None), self.session.config.timeouts.shutdown + 60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_JOIN_TIMEOUT)
            self._loop.close()
