"""KD serial framing: an incremental decoder that never raises, and the packet encoders (spec §1).

The decoder is pure: feed it whatever bytes came off the wire and it returns the complete units found,
in order. It hunts for four identical leader bytes (§1.7), checks the header is possible before waiting
for a payload (§12.2), verifies the trailing byte and checksum (§1.4), and on any failure drops the
first byte of the candidate and scans again from the next one, so a packet swallowed by a corrupted
header is still found. It keeps at most one unfinished frame, so it never holds more than
:data:`~vmtest.capture.kd.constants.MAX_FRAME_SIZE` bytes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from vmtest.capture.kd.constants import (
    BREAKIN_PACKET_BYTE,
    CONTROL_PACKET_LEADER,
    CONTROL_PACKET_LEADER_BYTE,
    CONTROL_PACKET_TYPES,
    DATA_PACKET_TYPES,
    INITIAL_PACKET_ID,
    KD_HEADER_SIZE,
    LEADER_SIZE,
    PACKET_ID_BIT,
    PACKET_LEADER,
    PACKET_LEADER_BYTE,
    PACKET_MAX_SIZE,
    PACKET_TRAILING_BYTE,
    SYNC_PACKET_ID,
)

__all__ = [
    "BREAKIN",
    "ControlPacket",
    "CorruptFrame",
    "DataPacket",
    "DecoderStats",
    "Frame",
    "FrameDecoder",
    "checksum",
    "encode_control_packet",
    "encode_data_packet",
    "is_data_packet_id",
]

# §1.3: leader u32, PacketType u16, ByteCount u16, PacketId u32, Checksum u32, little-endian.
_HEADER = struct.Struct("<IHHII")
assert _HEADER.size == KD_HEADER_SIZE

_LEADER_BYTES = frozenset({PACKET_LEADER_BYTE, CONTROL_PACKET_LEADER_BYTE})
_LEADERS = re.compile(b"|".join(re.escape(bytes([byte]) * LEADER_SIZE) for byte in sorted(_LEADER_BYTES)))
_DATA_ID_MASK = ~(SYNC_PACKET_ID | PACKET_ID_BIT) & 0xFFFFFFFF

#: The break-in "packet": one raw byte, host to target, no header (§1.1, §3.5).
BREAKIN = bytes([BREAKIN_PACKET_BYTE])


@dataclass(frozen=True, slots=True)
class DataPacket:
    """A data packet whose trailing byte and checksum were right: type, id as sent, payload."""

    packet_type: int
    packet_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """A control packet (ACK, RESEND or RESET): 16 header bytes, no payload, no trailing byte."""

    packet_type: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class CorruptFrame:
    """A data packet with a possible header but a wrong trailing byte or checksum; already dropped.

    It is reported so the receiver can ask for the packet again with RESEND (§3.4).
    """

    packet_type: int
    packet_id: int
    reason: str


Frame = DataPacket | ControlPacket | CorruptFrame


@dataclass
class DecoderStats:
    """What the decoder has seen so far; junk counts bytes that were part of no packet."""

    leaders: int = 0  # candidate frames started
    data_packets: int = 0
    control_packets: int = 0
    corrupt_frames: int = 0
    rejected_headers: int = 0
    junk_bytes: int = 0


def checksum(payload: bytes | bytearray | memoryview) -> int:
    """The KD checksum (§1.4): the sum of the payload bytes in a 32-bit accumulator."""
    return sum(payload) & 0xFFFFFFFF


def is_data_packet_id(packet_id: int) -> bool:
    """True for the only ids a data packet may carry: 0x80800000 or 0x80800001, with or without SYNC."""
    return packet_id & _DATA_ID_MASK == INITIAL_PACKET_ID


def encode_data_packet(packet_type: int, packet_id: int, payload: bytes) -> bytes:
    """The wire bytes of a data packet: header, payload, trailing 0xAA (§1.1, §1.3, §1.4)."""
    if packet_type not in DATA_PACKET_TYPES:
        raise ValueError(f"packet type {packet_type} is not a data packet type")
    if len(payload) > PACKET_MAX_SIZE:
        raise ValueError(f"payload of {len(payload)} bytes is over the {PACKET_MAX_SIZE}-byte maximum")
    header = _HEADER.pack(PACKET_LEADER, packet_type, len(payload), packet_id, checksum(payload))
    return header + bytes(payload) + bytes([PACKET_TRAILING_BYTE])


def encode_control_packet(packet_type: int, packet_id: int = 0) -> bytes:
    """The wire bytes of a control packet: a 16-byte header, byte count and checksum 0 (§1.1)."""
    if packet_type not in CONTROL_PACKET_TYPES:
        raise ValueError(f"packet type {packet_type} is not a control packet type")
    return _HEADER.pack(CONTROL_PACKET_LEADER, packet_type, 0, packet_id, 0)


class FrameDecoder:
    """Turns a byte stream into frames; tolerant of junk, truncation and flipped bytes; bounded memory."""

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._frame = bytearray()  # the candidate frame, from its leader on; empty while hunting
        self._need = 0  # bytes the candidate needs in all: the header, then the whole packet
        self._run_byte = 0  # while hunting: a run of identical leader bytes cut by the end of a chunk
        self._run = 0

    @property
    def pending(self) -> bool:
        """True while part of a frame is buffered, waiting for the rest."""
        return bool(self._frame)

    @property
    def buffered(self) -> int:
        """How many bytes the decoder holds; never more than one maximum frame."""
        return len(self._frame) + self._run

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Take the next bytes of the stream; return the frames they complete, in order."""
        frames: list[Frame] = []
        work = [memoryview(data).cast("B")]
        while work:
            view = work.pop()
            pos, end = 0, len(view)
            while pos < end:
                if not self._frame:
                    pos = self._hunt(view, pos)
                    continue
                take = min(self._need - len(self._frame), end - pos)
                self._frame += view[pos : pos + take]
                pos += take
                if len(self._frame) < self._need:
                    break
                rescan = self._complete(frames)
                if rescan is not None:
                    if pos < end:
                        work.append(view[pos:])
                    work.append(memoryview(rescan))
                    break
        return frames

    def abandon(self) -> list[Frame]:
        """Give up on the unfinished frame (the rest never came) and rescan its bytes after the first.

        The receiver calls this when a frame is overdue: a flipped byte count can make a header
        claim bytes that will never be sent, and the packets it swallowed are still in the buffer.
        """
        if not self._frame:
            return []
        rescan = bytes(self._frame[1:])
        self._frame.clear()
        self.stats.junk_bytes += 1
        return self.feed(rescan)

    def _hunt(self, view: memoryview, pos: int) -> int:
        """Skip to the end of the next leader; start a candidate frame there. Returns the new position."""
        end = len(view)
        while self._run and pos < end:  # finish a run that the previous chunk cut short
            byte = view[pos]
            pos += 1
            if byte == self._run_byte:
                self._run += 1
                if self._run == LEADER_SIZE:
                    self._start_frame(byte)
                    return pos
            elif byte in _LEADER_BYTES:  # a change of leader byte restarts the count (§1.7)
                self.stats.junk_bytes += self._run
                self._run_byte, self._run = byte, 1
            else:
                self.stats.junk_bytes += self._run + 1
                self._run = 0
        if pos >= end:
            return end
        match = _LEADERS.search(view, pos)
        if match is not None:
            self.stats.junk_bytes += match.start() - pos
            self._start_frame(view[match.start()])
            return match.end()
        tail = 0
        last = view[end - 1]
        if last in _LEADER_BYTES:
            while tail < LEADER_SIZE - 1 and end - 1 - tail >= pos and view[end - 1 - tail] == last:
                tail += 1
        self.stats.junk_bytes += end - pos - tail
        self._run_byte, self._run = last, tail
        return end

    def _start_frame(self, leader_byte: int) -> None:
        self.stats.leaders += 1
        self._run = 0
        self._frame += bytes([leader_byte]) * LEADER_SIZE
        self._need = KD_HEADER_SIZE

    def _complete(self, frames: list[Frame]) -> bytes | None:
        """Judge the candidate now that it has the bytes it needs; returns bytes to rescan on failure."""
        frame = self._frame
        leader, packet_type, count, packet_id, sent_sum = _HEADER.unpack_from(frame)
        if self._need == KD_HEADER_SIZE:
            if leader == CONTROL_PACKET_LEADER:
                # RESEND/RESET ids may be uninitialised (§12.7): only ACK ids mean anything, and the
                # link checks those. Byte count and checksum are always 0 (§1.1).
                if packet_type in CONTROL_PACKET_TYPES and count == 0 and sent_sum == 0:
                    frames.append(ControlPacket(packet_type, packet_id))
                    self.stats.control_packets += 1
                    frame.clear()
                    return None
                self.stats.rejected_headers += 1
                return self._drop_candidate()
            if packet_type in DATA_PACKET_TYPES and count <= PACKET_MAX_SIZE and is_data_packet_id(packet_id):
                self._need = KD_HEADER_SIZE + count + 1
                return None
            self.stats.rejected_headers += 1  # impossible header, e.g. OVMF's "Boot0000" (§12.2)
            return self._drop_candidate()
        payload = bytes(frame[KD_HEADER_SIZE : KD_HEADER_SIZE + count])
        if frame[-1] != PACKET_TRAILING_BYTE:
            reason = f"trailing byte 0x{frame[-1]:02x}"
        elif checksum(payload) != sent_sum:
            reason = f"checksum 0x{checksum(payload):08x}, header says 0x{sent_sum:08x}"
        else:
            frames.append(DataPacket(packet_type, packet_id, payload))
            self.stats.data_packets += 1
            frame.clear()
            return None
        frames.append(CorruptFrame(packet_type, packet_id, reason))
        self.stats.corrupt_frames += 1
        return self._drop_candidate()

    def _drop_candidate(self) -> bytes:
        """Forget the candidate; its bytes after the first go back to the hunt."""
        self.stats.junk_bytes += 1
        rescan = bytes(self._frame[1:])
        self._frame.clear()
        return rescan
