"""The KD link layer over an asyncio byte stream: ACKs, packet ids, duplicates, RESEND, RESET (§1.5, §3).

:class:`KdLink` reads the stream (writing every byte to the raw tap first), decodes it, and:

* ACKs every good target data packet at once with ``id & ~SYNC`` (§3.2), then decides whether it is
  new: SYNC realigns both counters (§1.5); a packet with the expected id is new; a packet that repeats
  the last one (same id, type and payload) is a duplicate, ACKed again and dropped (§3.4). A packet
  that is neither is delivered anyway and the counter follows it, so a print is never dropped because
  the host lost count.
* answers a corrupt data packet with RESEND (§3.4), retransmits its pending packet on RESEND, and on
  RESET restarts both counters at ``INITIAL_PACKET_ID``, answering a RESET it did not ask for (§3.3).
* sends one host data packet at a time and waits for its ACK, retransmitting every ``ack_timeout``
  for ``send_tries`` tries (§9.5). A new target packet while it waits proves the target took ours, as
  the target itself assumes in the other direction (§3.1).

New packets go to the ``deliver`` coroutine in order, and ``None`` at the end of the stream. ``deliver``
may wait (a bounded queue): the link then stops reading, which holds back the target (it waits for
our ACK), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from vmtest.capture.kd.constants import (
    INITIAL_PACKET_ID,
    PACKET_TYPE_KD_ACKNOWLEDGE,
    PACKET_TYPE_KD_DEBUG_IO,
    PACKET_TYPE_KD_RESEND,
    PACKET_TYPE_KD_RESET,
    SYNC_PACKET_ID,
    DbgKdPrintStringApi,
)
from vmtest.capture.kd.events import KdLinkStats
from vmtest.capture.kd.framing import (
    BREAKIN,
    ControlPacket,
    CorruptFrame,
    DataPacket,
    Frame,
    FrameDecoder,
    encode_control_packet,
    encode_data_packet,
)
from vmtest.capture.kd.options import KdOptions
from vmtest.capture.kd.packets import api_matches_packet_type

__all__ = ["KdLink", "SendOutcome"]

logger = logging.getLogger(__name__)

_READ_SIZE = 65536
_NOT_SYNC = ~SYNC_PACKET_ID & 0xFFFFFFFF
_PRINT_API = DbgKdPrintStringApi.to_bytes(4, "little")


class SendOutcome(enum.Enum):
    """How sending one host data packet ended."""

    DELIVERED = "delivered"  # ACKed, or the target sent something new, which proves it took the packet
    RESYNCED = "resynced"  # the target reset or rebooted: it no longer waits for this packet
    LOST = "lost"  # no ACK after every try
    CLOSED = "closed"  # the stream is gone


@dataclass
class _Pending:
    packet_id: int
    wire: bytes
    done: asyncio.Future[SendOutcome]


@dataclass
class _Counters:
    bytes_received: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    duplicates: int = 0
    refused: int = 0  # good checksum, but an API number foreign to the packet type
    acks_sent: int = 0
    resends_sent: int = 0
    resends_received: int = 0
    resets_sent: int = 0
    resets_received: int = 0
    retransmissions: int = 0
    breakins_sent: int = 0


class KdLink:
    """One KD serial link: the host's end of the target's COM port."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        options: KdOptions,
        deliver: Callable[[DataPacket | None], Awaitable[None]],
        raw: BinaryIO | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._options = options
        self._deliver = deliver
        self._raw = raw
        self._decoder = FrameDecoder()
        self._counters = _Counters()
        self._write_lock = asyncio.Lock()
        self._expected: int | None = None  # the target's next data id; unknown until the first packet
        self._host_next = INITIAL_PACKET_ID  # the id of the host's next data packet
        self._last: tuple[int, int, bytes] | None = None  # id, type, payload of the last new packet
        self._pending: _Pending | None = None
        self._after_reset = False  # the next packet is the first since a RESET exchange
        self._reset_sent_at: float | None = None
        self._reset_echo = asyncio.Event()
        self._frame_leader = 0  # which candidate frame (count of leaders seen) is being timed
        self._frame_started = 0.0
        #: True once the host knows which id the target expects: after SYNC or a RESET exchange.
        self.in_step = False
        #: Set when the first new data packet arrives: the target is talking to us.
        self.heard = asyncio.Event()
        #: ``time.monotonic()`` of the last byte received.
        self.last_rx = time.monotonic()
        self._closed = False

    def stats(self) -> KdLinkStats:
        """The counters now."""
        c, d = self._counters, self._decoder.stats
        return KdLinkStats(
            time=time.time(),
            bytes_received=c.bytes_received,
            bytes_sent=c.bytes_sent,
            junk_bytes=d.junk_bytes,
            packets_received=c.packets_received,
            duplicates=c.duplicates,
            corrupt_frames=d.corrupt_frames + c.refused,
            acks_sent=c.acks_sent,
            resends_sent=c.resends_sent,
            resends_received=c.resends_received,
            resets_sent=c.resets_sent,
            resets_received=c.resets_received,
            retransmissions=c.retransmissions,
            breakins_sent=c.breakins_sent,
        )

    async def run(self) -> None:
        """Read until the stream ends, then deliver ``None``. Cancel it to stop early."""
        while True:
            due = self._frame_due()
            try:
                if due is None:
                    chunk = await self._reader.read(_READ_SIZE)
                else:
                    chunk = await asyncio.wait_for(self._reader.read(_READ_SIZE), due)
            except asyncio.TimeoutError:
                logger.debug("frame overdue: rescanning its %d bytes", self._decoder.buffered)
                await self._take(self._decoder.abandon())
                continue
            except OSError as exc:  # ConnectionResetError and friends: the end of the stream
                logger.debug("KD stream read failed: %s", exc)
                chunk = b""
            if not chunk:
                break
            self.last_rx = time.monotonic()
            self._counters.bytes_received += len(chunk)
            if self._raw is not None:
                self._raw.write(chunk)
            await self._take(self._decoder.feed(chunk))
        self._closed = True
        self._settle(SendOutcome.CLOSED)
        await self._deliver(None)

    def _frame_due(self) -> float | None:
        """Seconds left for the frame being received to complete, or None when there is none."""
        if not self._decoder.pending:
            return None
        now = time.monotonic()
        if self._decoder.stats.leaders != self._frame_leader:
            self._frame_leader, self._frame_started = self._decoder.stats.leaders, now
        return max(self._frame_started + self._options.frame_timeout - now, 0.0)

    async def send(self, packet_type: int, payload: bytes) -> SendOutcome:
        """Send one data packet and wait for its ACK, retransmitting; one send at a time."""
        if self._pending is not None:
            raise RuntimeError("a KD data packet is already waiting for its ACK")
        packet_id = self._host_next
        wire = encode_data_packet(packet_type, packet_id, payload)
        done: asyncio.Future[SendOutcome] = asyncio.get_running_loop().create_future()
        self._pending = _Pending(packet_id, wire, done)
        try:
            for attempt in range(self._options.send_tries):
                if attempt:
                    self._counters.retransmissions += 1
                if not await self._write(wire):
                    return SendOutcome.CLOSED
                try:
                    return await asyncio.wait_for(asyncio.shield(done), self._options.ack_timeout)
                except asyncio.TimeoutError:
                    continue
            # The target may have taken the packet and lost only the ACKs: its counter is unknown now.
            self.in_step = False
            return SendOutcome.LOST
        finally:
            self._pending = None
            done.cancel()

    async def reset(self) -> bool:
        """RESET the link and wait for the target's RESET in answer (§3.3); False if none came."""
        for _ in range(self._options.send_tries):
            self._reset_echo.clear()
            await self.send_reset()
            try:
                await asyncio.wait_for(self._reset_echo.wait(), self._options.ack_timeout)
            except asyncio.TimeoutError:
                continue
            return True
        return False

    async def send_reset(self) -> None:
        """Send one RESET without waiting; a stopped target answers it and re-sends its last packet."""
        self._reset_sent_at = time.monotonic()
        self._counters.resets_sent += 1
        await self._write(encode_control_packet(PACKET_TYPE_KD_RESET, 0))

    async def send_breakin(self) -> None:
        """Send the one-byte break-in (§3.5). Send it sparingly: each byte can become a break."""
        self._counters.breakins_sent += 1
        await self._write(BREAKIN)

    async def close(self) -> None:
        """Close the stream."""
        self._closed = True
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError as exc:
            logger.debug("closing the KD stream: %s", exc)

    async def _take(self, frames: list[Frame]) -> None:
        for frame in frames:
            if isinstance(frame, DataPacket):
                await self._on_data(frame)
            elif isinstance(frame, ControlPacket):
                await self._on_control(frame)
            else:
                await self._on_corrupt(frame)

    async def _on_data(self, packet: DataPacket) -> None:
        if self._options.check_api_family and not api_matches_packet_type(packet.packet_type, packet.payload):
            self._counters.refused += 1
            await self._on_corrupt(
                CorruptFrame(packet.packet_type, packet.packet_id, "API number of another type")
            )
            return
        self._counters.acks_sent += 1
        await self._write(encode_control_packet(PACKET_TYPE_KD_ACKNOWLEDGE, packet.packet_id & _NOT_SYNC))
        if not self._is_new(packet):
            self._counters.duplicates += 1
            return
        self._counters.packets_received += 1
        self.heard.set()
        self._settle(SendOutcome.DELIVERED)
        await self._deliver(packet)

    def _is_new(self, packet: DataPacket) -> bool:
        """Apply the id rules of §1.5/§3.4 (§9.3) and move the counters."""
        packet_id, last = packet.packet_id, self._last
        same_as_last = last is not None and last[1] == packet.packet_type and last[2] == packet.payload
        after_reset, self._after_reset = self._after_reset, False
        if after_reset and same_as_last and _is_print(packet):
            # A RESET made the target re-send, with the fresh id, a print whose ACK it had lost.
            # Requests (stops, prompts, file I/O) are delivered again instead: they need an answer.
            self._expected = packet_id ^ 1
            return False
        if packet_id & SYNC_PACKET_ID:
            if same_as_last and last is not None and last[0] == packet_id:
                return False  # the SYNC packet again: our ACK was lost
            logger.info("target (re)started its packet ids (SYNC): realigning")
            self._settle(SendOutcome.RESYNCED)
            self._host_next = INITIAL_PACKET_ID
            self.in_step = True
        elif self._expected is not None and packet_id != self._expected:
            if same_as_last and last is not None and last[0] & _NOT_SYNC == packet_id:
                return False
            logger.warning(
                "target packet id 0x%08x, expected 0x%08x: following it", packet_id, self._expected
            )
        self._expected = (packet_id & _NOT_SYNC) ^ 1
        self._last = (packet_id, packet.packet_type, packet.payload)
        return True

    async def _on_control(self, packet: ControlPacket) -> None:
        if packet.packet_type == PACKET_TYPE_KD_ACKNOWLEDGE:
            pending = self._pending
            if pending is not None and packet.packet_id == pending.packet_id:
                self._settle(SendOutcome.DELIVERED)
            else:
                logger.debug("ACK 0x%08x matches no pending packet", packet.packet_id)
        elif packet.packet_type == PACKET_TYPE_KD_RESEND:
            self._counters.resends_received += 1
            pending = self._pending
            if pending is not None and not pending.done.done():
                self._counters.retransmissions += 1
                await self._write(pending.wire)
        else:
            self._counters.resets_received += 1
            sent_at = self._reset_sent_at
            window = self._options.ack_timeout * self._options.send_tries
            echo = sent_at is not None and time.monotonic() - sent_at < window
            self._reset_sent_at = None
            self._settle(SendOutcome.RESYNCED)
            self._expected = self._host_next = INITIAL_PACKET_ID
            self._after_reset = True
            self.in_step = True
            if not echo:
                logger.info("target sent RESET: answering it")
                await self.send_reset()
            self._reset_echo.set()

    async def _on_corrupt(self, frame: CorruptFrame) -> None:
        logger.debug("corrupt type-%d packet 0x%08x: %s", frame.packet_type, frame.packet_id, frame.reason)
        if self._options.resend_on_corrupt:
            self._counters.resends_sent += 1
            await self._write(encode_control_packet(PACKET_TYPE_KD_RESEND, 0))

    def _settle(self, outcome: SendOutcome) -> None:
        """End the pending send.

        The id moves on here, as the ACK is read, not when the sender wakes up: a SYNC packet right
        behind the ACK must be able to realign it.
        """
        pending = self._pending
        if pending is not None and not pending.done.done():
            if outcome is SendOutcome.DELIVERED:
                self._host_next = pending.packet_id ^ 1
            pending.done.set_result(outcome)

    async def _write(self, data: bytes) -> bool:
        if self._closed:
            return False
        async with self._write_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except OSError as exc:
                logger.debug("KD stream write failed: %s", exc)
                self._closed = True
                return False
        self._counters.bytes_sent += len(data)
        return True


def _is_print(packet: DataPacket) -> bool:
    """A DbgPrint: the one kind of target packet that needs nothing but its ACK."""
    return packet.packet_type == PACKET_TYPE_KD_DEBUG_IO and packet.payload[:4] == _PRINT_API
