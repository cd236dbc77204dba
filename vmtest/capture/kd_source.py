"""The Windows guest's DbgPrint output through the KD host on COM1, from the first instruction of the boot.

Every byte of the link is kept in ``serial-kd.raw``; prints become capture lines, bugchecks, module
loads and a stalled link become capture events.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import BinaryIO

from vmtest.capture.kd import KdBugcheck, KdHost, KdModuleLoad, KdOptions, KdPrint, KdStalled
from vmtest.capture.source import Capture, CaptureEvent, CaptureSource

__all__ = ["KdSource"]


class KdSource(CaptureSource):
    """Runs a :class:`KdHost` on the machine's KD serial socket and feeds the capture."""

    name = "kd"

    def __init__(self, sock: socket.socket, raw_path: Path, options: KdOptions | None = None) -> None:
        self.sock = sock
        self.raw_path = raw_path
        self.options = options
        self._raw: BinaryIO | None = None
        self._host: KdHost | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self, capture: Capture) -> None:
        """Attach to the link while the guest CPU is still stopped; the host stays silent until spoken to."""
        reader, writer = await asyncio.open_unix_connection(sock=self.sock)
        self._raw = open(self.raw_path, "ab")  # noqa: SIM115
        self._host = KdHost(reader, writer, options=self.options, raw=self._raw)
        await self._host.start()
        self._pump = asyncio.create_task(self._forward(self._host, capture), name="kd-capture")

    async def _forward(self, host: KdHost, capture: Capture) -> None:
        async for event in host.events():
            if isinstance(event, KdPrint):
                capture.add_line(self.name, event.text, event.time)
            elif isinstance(event, KdBugcheck):
                detail = {"code": event.code, "parameters": list(event.parameters), "driver": event.driver}
                capture.add_event(CaptureEvent(event.time, self.name, "bugcheck", event.summary, detail))
            elif isinstance(event, KdModuleLoad):
                verb = "unloaded" if event.unload else "loaded"
                capture.add_event(
                    CaptureEvent(event.time, self.name, "module-load", f"{verb} {event.module.name}")
                )
            elif isinstance(event, KdStalled):
                summary = (
                    f"the target went silent for {event.silent_for:.0f}s waiting for {event.waiting_for}"
                )
                capture.add_event(CaptureEvent(event.time, self.name, "stall", summary))

    def modules(self) -> tuple[str, ...]:
        """The names of the kernel modules the KD host has seen loaded so far (empty before it attached)."""
        return tuple(module.name for module in self._host.modules) if self._host is not None else ()

    async def stop(self) -> None:
        """Close the KD host and the raw file."""
        if self._host is not None:
            await self._host.close()
            self._host = None
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None
