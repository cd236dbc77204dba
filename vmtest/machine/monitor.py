"""The QMP monitor of one QEMU: commands with deadlines, and a record of every event.

Built on qemu.qmp's async :class:`~qemu.qmp.QMPClient`. qemu.qmp has no timeouts and its event
listeners go silent when the connection dies, so this module adds both: each command races its
deadline and the link going down, and a pump task drains every event into a log file and into
waiters registered before the command that triggers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate

from vmtest.errors import DeadlineExceeded, MachineExited, MonitorError

__all__ = ["EventWaiter", "Monitor", "QmpEvent"]

log = logging.getLogger(__name__)

_HISTORY = 1000


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event as QEMU sent it, with the host time it arrived."""

    name: str
    data: dict[str, Any]
    timestamp: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """One line of ``qmp-events.jsonl``."""
        return json.dumps({"event": self.name, "data": self.data, "time": self.timestamp}, sort_keys=True)


class EventWaiter:
    """A future for the next event with one of ``names``, registered before the action that causes it."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = frozenset(names)
        self.future: asyncio.Future[QmpEvent] = asyncio.get_running_loop().create_future()


class Monitor:
    """QMP for one QEMU process."""

    def __init__(self, name: str, events_log: Path, command_timeout: float) -> None:
        self.command_timeout = command_timeout
        self.history: deque[QmpEvent] = deque(maxlen=_HISTORY)
        self._client = QMPClient(name)
        self._events_log_path = events_log
        self._events_log: TextIO | None = None
        self._waiters: list[EventWaiter] = []
        self._listeners: list[Callable[[QmpEvent], None]] = []
        self._pump: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.link_down: asyncio.Event = asyncio.Event()
        self._fd_lock = asyncio.Lock()

    async def connect(self, sock: socket.socket, timeout: float) -> None:
        """Connect over ``sock`` (our end of a socket pair QEMU holds the other end of)."""
        self._events_log = open(self._events_log_path, "a", encoding="utf-8")  # noqa: SIM115
        try:
            await asyncio.wait_for(self._client.connect(sock), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"QMP greeting not received within {timeout:.0f}s") from None
        except ConnectError as error:
            raise MachineExited(f"QMP connection failed: {error.exc or error}") from None
        self._pump = asyncio.create_task(self._pump_events(), name="qmp-events")
        self._watch = asyncio.create_task(self._watch_link(), name="qmp-link")

    @property
    def connected(self) -> bool:
        """True while the QMP link is up."""
        return self._client.runstate == Runstate.RUNNING and not self.link_down.is_set()

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run a QMP command; raise if it fails, the link drops, or it outlasts its deadline."""
        limit = self.command_timeout if timeout is None else timeout
        if not self.connected:
            raise MachineExited(f"QMP {command}: the QMP connection is closed")
        task = asyncio.ensure_future(self._client.execute(command, arguments))
        link = asyncio.ensure_future(self.link_down.wait())
        try:
            done, _ = await asyncio.wait({task, link}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.cancel()
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, QMPError):
                await task
            if link in done:
                raise MachineExited(f"QMP {command}: the QMP connection dropped before QEMU answered")
            raise DeadlineExceeded(f"QMP {command}: no answer within {limit:.0f}s")
        try:
            return task.result()
        except ExecuteError as error:
            raise MonitorError(f"QMP {command} failed: {error.error_class}: {error}") from None
        except (ExecInterruptedError, QMPError) as error:
            raise MachineExited(f"QMP {command}: the QMP connection dropped ({error})") from None

    async def add_fd(self, fd: int, what: str) -> int:
        """Hand QEMU ``fd`` over the QMP socket (SCM_RIGHTS) as a new fd set; the set's number.

        QEMU then opens it as ``/dev/fdset/N`` without any path; remove it with ``remove-fd``.
        """
        async with self._fd_lock:  # the descriptor travels with the next command: keep the pair together
            if not self.connected:
                raise MachineExited(f"QMP add-fd ({what}): the QMP connection is closed")
            try:
                self._client.send_fd_scm(fd)
            except (OSError, QMPError) as error:
                raise MonitorError(f"cannot pass {what} to QEMU: {error}") from None
            result = await self.execute("add-fd", {"opaque": what})
        return int(result["fdset-id"])

    async def pass_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of ``fd`` (SCM_RIGHTS over the QMP socket) as ``name``, for ``fd:name`` URIs.

        QEMU attaches the descriptor it received to the next command, so ``getfd`` follows at once. The
        caller keeps (and closes) its own ``fd``; QEMU closes its copy when the user of ``name`` is done.
        """
        async with self._fd_lock:  # the descriptor travels with the next command: keep the pair together
            if not self.connected:
                raise MachineExited(f"QMP getfd {name}: the QMP connection is closed")
            try:
                self._client.send_fd_scm(fd)
            except (OSError, QMPError) as error:
                raise MonitorError(f"passing a file descriptor to QEMU failed: {error}") from None
            await self.execute("getfd", {"fdname": name})

    async def hmp(self, command_line: str, *, timeout: float | None = None) -> str:
        """Run a human-monitor command; HMP reports failures as text, which this turns into errors."""
        result = await self.execute("human-monitor-command", {"command-line": command_line}, timeout=timeout)
        text = str(result)
        first = text.strip().splitlines()[0] if text.strip() else ""
        if first.startswith("Error") or "could not" in first.lower() or "failed" in first.lower():
            raise MonitorError(f"HMP {command_line!r} failed: {text.strip()}")
        return text

    @contextlib.contextmanager
    def expect(self, names: Collection[str]) -> Iterator[EventWaiter]:
        """Register a waiter for the next event in ``names``; use it around the action that causes it."""
        waiter = EventWaiter(names)
        self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.cancel()

    def add_listener(self, listener: Callable[[QmpEvent], None]) -> None:
        """Call ``listener`` with every event from now on, in order."""
        self._listeners.append(listener)

    def seen(self, name: str) -> QmpEvent | None:
        """The most recent recorded event called ``name``, if any."""
        for event in reversed(self.history):
            if event.name == name:
                return event
        return None

    async def _pump_events(self) -> None:
        async for message in self._client.events:
            data = message.get("data", {})
            event = QmpEvent(str(message["event"]), dict(data) if isinstance(data, dict) else {})
            self.history.append(event)
            log.debug("QMP event %s %s", event.name, event.data)
            if self._events_log is not None:
                try:
                    self._events_log.write(event.to_json() + "\n")
                    self._events_log.flush()
                except OSError as error:  # a full disk must not stop the events (crashes) reaching vmtest
                    log.error("cannot write %s, so it stops here: %s", self._events_log_path, error)
                    with contextlib.suppress(OSError):
                        self._events_log.close()
                    self._events_log = None
            for listener in self._listeners:
                listener(event)
            for waiter in list(self._waiters):
                if event.name in waiter.names and not waiter.future.done():
                    waiter.future.set_result(event)

    async def _watch_link(self) -> None:
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()
        self.link_down.set()

    async def close(self) -> None:
        """Disconnect; a link QEMU already closed (after ``quit``, or a crash) is not an error here."""
        self.link_down.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.disconnect(), 5)
        for task in (self._pump, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._events_log is not None:
            self._events_log.close()
            self._events_log = None
