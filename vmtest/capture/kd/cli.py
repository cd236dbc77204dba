"""``vmtest kd``: capture a Windows guest's DbgPrint output over its KD serial socket, live.

The command wiring lives elsewhere; this module gives it :func:`run_kd`, :func:`parse_address` and
:func:`open_kd_stream`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import datetime, timezone
from typing import BinaryIO, TextIO

from vmtest.capture.kd.errors import KdConnectError
from vmtest.capture.kd.events import KdBugcheck, KdEvent, KdLinkStats, KdPrint, KdStalled
from vmtest.capture.kd.host import KdHost
from vmtest.capture.kd.options import KdOptions
from vmtest.capture.source import printable
from vmtest.errors import EXIT_TEST_FAILURE, ConfigError

__all__ = ["KdAddress", "format_event", "open_kd_stream", "parse_address", "run_kd"]

logger = logging.getLogger(__name__)

KdAddress = str | tuple[str, int]
"""A unix socket path, or a TCP ``(host, port)``."""


def parse_address(text: str) -> KdAddress:
    """``host:port`` or ``[v6-host]:port`` is TCP; anything else (a path) is a unix socket."""
    if not text:
        raise ConfigError("the KD address is empty")
    host, sep, port = text.rpartition(":")
    if not sep or "/" in text or not port.isdigit() or not host:
        return text
    number = int(port)
    if not 0 < number < 65536:
        raise ConfigError(f"KD address {text!r}: port {number} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, number


async def open_kd_stream(address: KdAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the KD chardev; TCP gets TCP_NODELAY, KD being many tiny round trips (§7.2)."""
    try:
        if isinstance(address, str):
            return await asyncio.open_unix_connection(address)
        reader, writer = await asyncio.open_connection(*address)
    except OSError as exc:
        raise KdConnectError(f"cannot connect to the KD socket {address!r}: {exc}", phase="kd") from exc
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def format_event(event: KdEvent) -> str | None:
    """The line ``run_kd`` prints for an event, or ``None`` for events it does not print."""
    stamp = datetime.fromtimestamp(event.time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(event, KdPrint):
        return f"{stamp} {printable(event.text)}"
    if isinstance(event, KdBugcheck):
        held = ", guest held" if event.held else ""
        return f"{stamp} *** bugcheck {printable(event.summary)} (from the {event.source}{held})"
    if isinstance(event, KdStalled):
        return f"{stamp} *** target stalled: no {event.waiting_for} (silent for {event.silent_for:.1f} s)"
    return None


async def run_kd(
    address: str, *, out: TextIO, raw: BinaryIO | None, attach: bool, hold_on_bugcheck: bool
) -> int:
    """Capture until the socket closes (or the task is cancelled); 0, or 1 when the guest bugchecked.

    ``address`` is a unix socket path or ``host:port``; ``raw`` receives every byte read. Raises
    :class:`~vmtest.capture.kd.errors.KdConnectError` when the socket cannot be opened.
    """
    reader, writer = await open_kd_stream(parse_address(address))
    host = KdHost(
        reader, writer, options=KdOptions(hold_on_bugcheck=hold_on_bugcheck), raw=raw, attach=attach
    )
    bugchecks: list[KdBugcheck] = []
    stats: KdLinkStats | None = None
    lines = 0

    def show(event: KdEvent) -> None:
        nonlocal stats, lines
        text = format_event(event)
        if text is not None:
            out.write(text + "\n")
            out.flush()
        if isinstance(event, KdPrint):
            lines += 1
        elif isinstance(event, KdBugcheck):
            bugchecks.append(event)
        elif isinstance(event, KdLinkStats):
            stats = event

    await host.start()
    try:
        async for event in host.events():
            show(event)
    finally:
        await host.close()
        async for event in host.events():  # what closing flushed: the partial line, the statistics
            show(event)
        if raw is not None:
            raw.flush()
        out.write(_summary(lines, bugchecks, stats))
        out.flush()
    return EXIT_TEST_FAILURE if bugchecks else 0


def _summary(lines: int, bugchecks: list[KdBugcheck], stats: KdLinkStats | None) -> str:
    text = f"--- kd: {lines} lines, {len(bugchecks)} bugcheck{'s' if len(bugchecks) != 1 else ''}"
    if stats is not None:
        text += (
            f"; link: {stats.packets_received} packets, {stats.duplicates} duplicates,"
            f" {stats.corrupt_frames} corrupt, {stats.junk_bytes} junk bytes,"
            f" {stats.retransmissions} retransmissions"
        )
    text += "\n"
    for number, bugcheck in enumerate(bugchecks, 1):
        text += f"*** bugcheck {number}: {printable(bugcheck.summary)}\n"
    return text
