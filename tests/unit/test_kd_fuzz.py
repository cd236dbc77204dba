"""The KD frame decoder under hostile input: it never raises, stays bounded, and loses no intact packet."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from vmtest.capture.kd.constants import (
    LEADER_SIZE,
    MAX_FRAME_SIZE,
    PACKET_TYPE_KD_ACKNOWLEDGE,
    PACKET_TYPE_KD_DEBUG_IO,
    PACKET_TYPE_KD_STATE_CHANGE64,
)
from vmtest.capture.kd.framing import (
    DataPacket,
    Frame,
    FrameDecoder,
    encode_control_packet,
    encode_data_packet,
)

BOUND = MAX_FRAME_SIZE + LEADER_SIZE

# Junk that likes to look like KD: leader bytes, leader runs, header fragments, the trailer, zeros.
junk_bytes = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"0", b"00", b"000", b"0000", b"i", b"iiii", b"\xaa", b"\x00" * 4, b"b"]),
        st.builds(
            lambda t, n, i: struct.pack("<IHHII", 0x30303030, t, n, i, 0),
            st.integers(0, 12),
            st.integers(0, 4200),
            st.sampled_from([0x80800000, 0x80800001, 0x80800800, 0]),
        ),
    ),
    max_size=12,
).map(b"".join)


def print_payload(text: bytes) -> bytes:
    return struct.pack("<IHHII", 0x3230, 6, 0, len(text), 0) + text


def print_frame(text: bytes, packet_id: int = 0x80800000) -> bytes:
    return encode_data_packet(PACKET_TYPE_KD_DEBUG_IO, packet_id, print_payload(text))


def decode(stream: bytes, cuts: list[int]) -> tuple[list[Frame], int]:
    """Feed ``stream`` cut at ``cuts``; at the end give up on unfinished frames as the link does."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    peak = 0
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        frames += decoder.feed(stream[start:cut])
        peak = max(peak, decoder.buffered)
        start = max(start, cut)
    while decoder.pending:
        frames += decoder.abandon()
        peak = max(peak, decoder.buffered)
    return frames, peak


def cut_points(data: st.DataObject, stream: bytes) -> list[int]:
    return data.draw(st.lists(st.integers(0, len(stream)), max_size=20))


@settings(max_examples=400, deadline=None)
@given(stream=st.one_of(st.binary(max_size=10000), junk_bytes), data=st.data())
def test_junk_never_raises_and_memory_is_bounded(stream: bytes, data: st.DataObject) -> None:
    frames, peak = decode(stream, cut_points(data, stream))
    assert peak <= BOUND
    assert all(len(f.payload) <= 4000 for f in frames if isinstance(f, DataPacket))


@settings(max_examples=300, deadline=None)
@given(junk=junk_bytes, text=st.binary(max_size=300), tail=junk_bytes, data=st.data())
def test_a_valid_packet_after_junk_is_decoded(
    junk: bytes, text: bytes, tail: bytes, data: st.DataObject
) -> None:
    frame = print_frame(text, 0x80800801)
    stream = junk + frame + tail
    frames, peak = decode(stream, cut_points(data, stream))
    assert DataPacket(PACKET_TYPE_KD_DEBUG_IO, 0x80800801, print_payload(text)) in frames
    assert peak <= BOUND


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 4000 - 16), min_size=1, max_size=6),
    data=st.data(),
)
def test_clean_traffic_is_decoded_exactly(sizes: list[int], data: st.DataObject) -> None:
    units: list[bytes] = []
    expected: list[Frame] = []
    for n, size in enumerate(sizes):
        payload = print_payload(bytes((n + i) & 0xFF for i in range(size)))
        units.append(encode_data_packet(PACKET_TYPE_KD_DEBUG_IO, 0x80800000 | (n & 1), payload))
        expected.append(DataPacket(PACKET_TYPE_KD_DEBUG_IO, 0x80800000 | (n & 1), payload))
        units.append(encode_control_packet(PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800000))
    stream = b"".join(units)
    frames, _ = decode(stream, cut_points(data, stream))
    assert [f for f in frames if isinstance(f, DataPacket)] == expected


# One unit of traffic: a print that arrives intact, or a packet damaged in one of the ways a serial
# line and a retransmitting target damage packets.
Damage = st.sampled_from(["intact", "flip", "truncate", "drop-trailer", "junk-before"])


@settings(max_examples=300, deadline=None)
@given(
    units=st.lists(st.tuples(st.binary(max_size=200), Damage), min_size=1, max_size=12),
    data=st.data(),
)
def test_no_intact_print_is_lost_amid_corrupted_traffic(
    units: list[tuple[bytes, str]], data: st.DataObject
) -> None:
    stream = b""
    intact: list[bytes] = []
    for index, (text, damage) in enumerate(units):
        text = b"%d:" % index + text  # every print distinct
        frame = bytearray(print_frame(text, 0x80800000 | (index & 1)))
        if damage == "intact":
            intact.append(print_payload(text))
        elif damage == "flip":
            where = data.draw(st.integers(0, len(frame) - 1))
            frame[where] ^= data.draw(st.integers(1, 255))
        elif damage == "truncate":
            frame = frame[: data.draw(st.integers(0, len(frame) - 1))]
        elif damage == "drop-trailer":
            frame = frame[:-1]
        else:
            frame = bytearray(data.draw(junk_bytes)) + frame
            intact.append(print_payload(text))
        stream += bytes(frame)
        if data.draw(st.booleans()):  # the target's state changes and ACKs interleave too
            stream += encode_data_packet(
                PACKET_TYPE_KD_STATE_CHANGE64, 0x80800001, b"\x31\x30\0\0" + bytes(236)
            )
    frames, peak = decode(stream, cut_points(data, stream))
    assert peak <= BOUND
    received = iter(f.payload for f in frames if isinstance(f, DataPacket))
    for payload in intact:  # in order: each intact print is found after the one before it
        assert any(payload == got for got in received), f"lost {payload[16:]!r}"
