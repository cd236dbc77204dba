"""The KD codec against the spec (kd-protocol.md): wire bytes, checksums, payload layouts, round trips.

Every expected value here is written out from the spec's tables and examples (offsets as literals),
not computed with the code under test.
"""

from __future__ import annotations

import struct

import pytest

from vmtest.capture.kd import constants as c
from vmtest.capture.kd.bugcheck import BannerWatcher
from vmtest.capture.kd.cli import parse_address
from vmtest.capture.kd.events import KdModule
from vmtest.capture.kd.framing import (
    BREAKIN,
    ControlPacket,
    CorruptFrame,
    DataPacket,
    FrameDecoder,
    checksum,
    encode_control_packet,
    encode_data_packet,
    is_data_packet_id,
)
from vmtest.capture.kd.layout import Layout
from vmtest.capture.kd.lines import LineAssembler
from vmtest.capture.kd.modules import ModuleTable, module_name
from vmtest.capture.kd.packets import (
    CONTINUE2,
    CONTROL_REPORT,
    DEBUG_IO,
    EXCEPTION_STATE,
    GET_VERSION,
    LOAD_SYMBOLS_STATE,
    MANIPULATE,
    api_matches_packet_type,
    build_continue,
    build_continue2,
    build_file_io_reply,
    build_get_context,
    build_get_version,
    build_prompt_reply,
    build_read_virtual_memory,
    build_set_context,
    build_set_context_ex,
    context_field,
    parse_debug_io,
    parse_file_io,
    parse_manipulate,
    parse_state_change,
    parse_version,
)
from vmtest.errors import ConfigError

# -- §1.2, §1.5, §2: the numbers -------------------------------------------------------------------


def test_constants_match_the_spec_tables() -> None:
    assert (c.PACKET_LEADER, c.CONTROL_PACKET_LEADER, c.PACKET_TRAILING_BYTE) == (
        0x30303030,
        0x69696969,
        0xAA,
    )
    assert c.BREAKIN_PACKET_BYTE == 0x62 and BREAKIN == b"b"
    assert (c.INITIAL_PACKET_ID, c.SYNC_PACKET_ID, c.PACKET_MAX_SIZE) == (0x80800000, 0x800, 4000)
    types = [
        c.PACKET_TYPE_UNUSED,
        c.PACKET_TYPE_KD_STATE_CHANGE32,
        c.PACKET_TYPE_KD_STATE_MANIPULATE,
        c.PACKET_TYPE_KD_DEBUG_IO,
        c.PACKET_TYPE_KD_ACKNOWLEDGE,
        c.PACKET_TYPE_KD_RESEND,
        c.PACKET_TYPE_KD_RESET,
        c.PACKET_TYPE_KD_STATE_CHANGE64,
        c.PACKET_TYPE_KD_POLL_BREAKIN,
        c.PACKET_TYPE_KD_TRACE_IO,
        c.PACKET_TYPE_KD_CONTROL_REQUEST,
        c.PACKET_TYPE_KD_FILE_IO,
        c.PACKET_TYPE_MAX,
    ]
    assert types == list(range(13))
    assert (c.DbgKdExceptionStateChange, c.DbgKdLoadSymbolsStateChange, c.DbgKdCommandStringStateChange) == (
        0x3030,
        0x3031,
        0x3032,
    )
    assert (c.DbgKdPrintStringApi, c.DbgKdGetStringApi) == (0x3230, 0x3231)
    assert (c.DbgKdReadVirtualMemoryApi, c.DbgKdGetContextApi, c.DbgKdSetContextApi) == (
        0x3130,
        0x3132,
        0x3133,
    )
    assert (c.DbgKdContinueApi, c.DbgKdContinueApi2, c.DbgKdGetVersionApi) == (0x3136, 0x313C, 0x3146)
    assert (c.DbgKdSetContextExApi, c.DbgKdCreateFileApi) == (0x3160, 0x3430)
    assert (c.DBG_CONTINUE, c.DBG_EXCEPTION_HANDLED, c.DBG_EXCEPTION_NOT_HANDLED) == (
        0x00010002,
        0x00010001,
        0x80010001,
    )
    assert (c.DBG_STATUS_CONTROL_C, c.DBG_STATUS_BUGCHECK_FIRST, c.DBG_STATUS_BUGCHECK_SECOND) == (1, 3, 4)
    assert c.STATE_CHANGE_SIZE == 0xF0 and c.MANIPULATE_HEADER_SIZE == 0x38 and c.AMD64_CONTEXT_SIZE == 0x4D0
    assert (c.CONTEXT_RCX_OFFSET, c.CONTEXT_RIP_OFFSET, c.CONTEXT_FLAGS_OFFSET) == (0x80, 0xF8, 0x30)


# -- §1.7 and §3: control packets, exactly as the spec prints them ---------------------------------


def test_ack_of_a_sync_packet_masks_the_sync_bit() -> None:
    wire = bytes.fromhex("69 69 69 69 04 00 00 00 00 00 80 80 00 00 00 00")
    assert encode_control_packet(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800800 & ~0x800) == wire


def test_reset_and_resend_bytes() -> None:
    assert encode_control_packet(c.PACKET_TYPE_KD_RESET, 0) == bytes.fromhex(
        "69 69 69 69 06 00 00 00 00 00 00 00 00 00 00 00"
    )
    assert encode_control_packet(c.PACKET_TYPE_KD_RESET, 0x80800000) == bytes.fromhex(
        "69 69 69 69 06 00 00 00 00 00 80 80 00 00 00 00"
    )
    assert encode_control_packet(c.PACKET_TYPE_KD_RESEND) == bytes.fromhex(
        "69 69 69 69 05 00 00 00 00 00 00 00 00 00 00 00"
    )


def test_control_encoder_refuses_data_types() -> None:
    with pytest.raises(ValueError, match="control"):
        encode_control_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0)
    with pytest.raises(ValueError, match="data"):
        encode_data_packet(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800000, b"")
    with pytest.raises(ValueError, match="maximum"):
        encode_data_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800000, bytes(4001))


# -- §1.3, §1.4: data packets and the checksum -----------------------------------------------------


def test_checksum_is_the_byte_sum_of_the_payload_only() -> None:
    assert checksum(b"") == 0
    assert checksum(b"\x01\x02\x03") == 6
    assert checksum(b"\xff" * 4000) == 1_020_000  # largest possible: 4000 x 255
    assert checksum(b"0000") == 4 * 0x30


def test_data_packet_bytes() -> None:
    # A DbgPrint of "Hi\n" from CPU 1 as the first packet after boot (SYNC id), laid out by hand:
    payload = bytes.fromhex("30 32 00 00  06 00  01 00  03 00 00 00  00 00 00 00") + b"Hi\n"
    total = 0x30 + 0x32 + 6 + 1 + 3 + ord("H") + ord("i") + ord("\n")
    wire = encode_data_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800800, payload)
    assert wire[:4] == b"0000"
    assert wire[4:6] == b"\x03\x00"  # PacketType
    assert wire[6:8] == struct.pack("<H", 19)  # ByteCount excludes header and trailer
    assert wire[8:12] == bytes.fromhex("00 08 80 80")  # PacketId 0x80800800, LE
    assert wire[12:16] == struct.pack("<I", total)
    assert wire[16:-1] == payload
    assert wire[-1] == 0xAA
    assert len(wire) == 16 + 19 + 1


def test_data_packet_ids() -> None:
    for good in (0x80800000, 0x80800001, 0x80800800, 0x80800801):
        assert is_data_packet_id(good)
    for bad in (0, 0x80800002, 0x30303030, 0x80810000, 0x00800000):
        assert not is_data_packet_id(bad)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("packet_type", sorted(c.DATA_PACKET_TYPES))
@pytest.mark.parametrize("size", [0, 1, 16, 0xF0, 4000])
def test_data_packet_round_trip(packet_type: int, size: int) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    wire = encode_data_packet(packet_type, 0x80800001, payload)
    assert FrameDecoder().feed(wire) == [DataPacket(packet_type, 0x80800001, payload)]


@pytest.mark.parametrize("packet_type", sorted(c.CONTROL_PACKET_TYPES))
def test_control_packet_round_trip(packet_type: int) -> None:
    wire = encode_control_packet(packet_type, 0x80800001)
    assert FrameDecoder().feed(wire) == [ControlPacket(packet_type, 0x80800001)]


def test_decoder_takes_one_byte_at_a_time() -> None:
    units = [
        encode_data_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800800, b"\x30\x32\0\0" + bytes(12) + b"abc"),
        encode_control_packet(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800000),
        encode_data_packet(c.PACKET_TYPE_KD_STATE_CHANGE64, 0x80800001, b"\x31\x30\0\0" + bytes(0xEC)),
    ]
    decoder = FrameDecoder()
    frames = []
    for byte in b"".join(units):
        frames += decoder.feed(bytes([byte]))
    assert [type(f) for f in frames] == [DataPacket, ControlPacket, DataPacket]
    assert not decoder.pending and decoder.buffered == 0


# -- §1.7, §12.2: leader synchronisation --------------------------------------------------------


def test_firmware_text_with_boot0000_is_skipped() -> None:
    wire = encode_data_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800800, b"\x30\x32\0\0" + bytes(12))
    junk = b'BdsDxe: loading Boot0000 "UEFI QEMU HARDDISK"\r\n'
    decoder = FrameDecoder()
    assert decoder.feed(junk) == []
    assert not decoder.pending  # the impossible header after "0000" was not waited on
    assert decoder.feed(wire) == [DataPacket(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800800, wire[16:-1])]
    assert decoder.stats.rejected_headers >= 1 and decoder.stats.junk_bytes == len(junk)


def test_a_change_of_leader_byte_restarts_the_count() -> None:
    ack = encode_control_packet(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800001)
    assert FrameDecoder().feed(b"000" + ack) == [ControlPacket(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800001)]
    assert FrameDecoder().feed(b"ii" + b"00000" + ack) == [
        ControlPacket(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800001)
    ]


def test_a_leader_split_across_chunks() -> None:
    ack = encode_control_packet(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800001)
    decoder = FrameDecoder()
    assert decoder.feed(b"xx" + ack[:2]) == []
    assert decoder.feed(ack[2:3]) == []
    assert decoder.feed(ack[3:]) == [ControlPacket(c.PACKET_TYPE_KD_ACKNOWLEDGE, 0x80800001)]
    assert decoder.stats.junk_bytes == 2


def test_control_packet_with_a_byte_count_is_not_a_control_packet() -> None:
    bad = struct.pack("<IHHII", 0x69696969, 4, 1, 0x80800000, 0)
    assert FrameDecoder().feed(bad) == []


def test_bad_checksum_and_trailer_are_reported_and_dropped() -> None:
    wire = bytearray(encode_data_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800000, b"\x30\x32\0\0" + bytes(14)))
    wire[20] ^= 0x01
    frames = FrameDecoder().feed(bytes(wire))
    assert len(frames) == 1 and isinstance(frames[0], CorruptFrame) and "checksum" in frames[0].reason
    wire[20] ^= 0x01
    wire[-1] = 0x55
    frames = FrameDecoder().feed(bytes(wire))
    assert len(frames) == 1 and isinstance(frames[0], CorruptFrame) and "trailing" in frames[0].reason


def test_a_packet_swallowed_by_a_corrupted_byte_count_is_found_again() -> None:
    good = encode_data_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800001, b"\x30\x32\0\0" + bytes(12) + b"ok\n")
    broken = bytearray(encode_data_packet(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800000, b"\x30\x32\0\0" + bytes(12)))
    broken[7] = 0x01  # ByteCount 16 -> 272: the good packet falls inside the claimed payload
    decoder = FrameDecoder()
    assert decoder.feed(bytes(broken) + good) == []
    assert decoder.pending
    frames = decoder.abandon()  # the line went quiet: give up on the broken header
    assert DataPacket(c.PACKET_TYPE_KD_DEBUG_IO, 0x80800001, good[16:-1]) in frames
    assert not decoder.pending


def test_api_family_check() -> None:
    assert api_matches_packet_type(c.PACKET_TYPE_KD_DEBUG_IO, struct.pack("<I", 0x3230))
    assert api_matches_packet_type(c.PACKET_TYPE_KD_STATE_CHANGE64, struct.pack("<I", 0x13031))  # alternate
    assert api_matches_packet_type(c.PACKET_TYPE_KD_STATE_MANIPULATE, struct.pack("<I", 0x3146))
    assert api_matches_packet_type(c.PACKET_TYPE_KD_FILE_IO, struct.pack("<I", 0x3430))
    assert not api_matches_packet_type(c.PACKET_TYPE_KD_STATE_MANIPULATE, struct.pack("<I", 0x3230))
    assert not api_matches_packet_type(c.PACKET_TYPE_KD_DEBUG_IO, struct.pack("<I", 0x3030))
    assert api_matches_packet_type(c.PACKET_TYPE_KD_STATE_CHANGE32, struct.pack("<I", 0x1234))  # not judged


# -- layouts: the offsets of every field used, as the spec tables give them -------------------------


def test_layout_offsets_are_the_spec_offsets() -> None:
    assert DEBUG_IO.size == 0x10
    assert DEBUG_IO.offsets == {
        "ApiNumber": 0x00,
        "ProcessorLevel": 0x04,
        "Processor": 0x06,
        "LengthOfString": 0x08,
        "LengthOfStringRead": 0x0C,
    }
    assert EXCEPTION_STATE.size == 0xF0
    assert EXCEPTION_STATE.offsets == {
        "ExceptionCode": 0x20,
        "ExceptionFlags": 0x24,
        "ExceptionRecord": 0x28,
        "ExceptionAddress": 0x30,
        "NumberParameters": 0x38,
        "ExceptionInformation": 0x40,
        "FirstChance": 0xB8,
    }
    assert LOAD_SYMBOLS_STATE.offsets == {
        "PathNameLength": 0x20,
        "BaseOfDll": 0x28,
        "ProcessId": 0x30,
        "CheckSum": 0x38,
        "SizeOfImage": 0x3C,
        "UnloadSymbols": 0x40,
    }
    assert CONTROL_REPORT.offsets == {
        "Dr6": 0xC0,
        "Dr7": 0xC8,
        "EFlags": 0xD0,
        "InstructionCount": 0xD4,
        "ReportFlags": 0xD6,
        "InstructionStream": 0xD8,
        "SegCs": 0xE8,
        "SegDs": 0xEA,
        "SegEs": 0xEC,
        "SegFs": 0xEE,
    }
    assert MANIPULATE.size == 0x38
    assert CONTINUE2.offsets["ContinueStatus"] == 0x10 and CONTINUE2.offsets["TraceFlag"] == 0x14
    assert CONTINUE2.offsets["Dr7"] == 0x18 and CONTINUE2.offsets["CurrentSymbolEnd"] == 0x28
    assert GET_VERSION.offsets["DebuggerDataList"] == 0x30 and GET_VERSION.offsets["MachineType"] == 0x18


def test_layout_refuses_overlapping_or_overrunning_rows() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Layout("x", 8, [("a", 0, "I"), ("b", 2, "I")])
    with pytest.raises(ValueError, match="past its size"):
        Layout("x", 8, [("a", 4, "Q")])


def _state_change(new_state: int, *, processor: int = 2, extra: bytes = b"") -> bytearray:
    """A STATE_CHANGE64 payload written at the §5.1/§5.3 offsets."""
    p = bytearray(0xF0)
    struct.pack_into("<I", p, 0x00, new_state)
    struct.pack_into("<H", p, 0x04, 6)  # ProcessorLevel
    struct.pack_into("<H", p, 0x06, processor)
    struct.pack_into("<I", p, 0x08, 4)  # NumberProcessors
    struct.pack_into("<Q", p, 0x10, 0xFFFFA00012345080)  # Thread
    struct.pack_into("<Q", p, 0x18, 0xFFFFF80012340000)  # ProgramCounter
    struct.pack_into("<Q", p, 0xC0, 0xFFFF0FF0)  # Dr6
    struct.pack_into("<Q", p, 0xC8, 0x400)  # Dr7
    struct.pack_into("<I", p, 0xD0, 0x246)  # EFlags
    struct.pack_into("<H", p, 0xD4, 3)  # InstructionCount
    struct.pack_into("<H", p, 0xD6, 3)  # ReportFlags
    p[0xD8:0xE8] = b"\xcc\xc3\x90" + b"\xee" * 13  # only 3 bytes valid
    struct.pack_into("<HHHH", p, 0xE8, 0x10, 0x2B, 0x2B, 0x53)
    return p + extra


def test_exception_state_change() -> None:
    p = _state_change(0x3030, extra=b"\x01\x02\x03\x04")  # ReactOS-style trailing data (§12.9)
    struct.pack_into("<I", p, 0x20, 0x80000003)
    struct.pack_into("<I", p, 0x24, 0)
    struct.pack_into("<Q", p, 0x30, 0xFFFFF80012340000)
    struct.pack_into("<I", p, 0x38, 3)
    struct.pack_into("<3Q", p, 0x40, 0, 0x1111, 0x2222)
    struct.pack_into("<Q", p, 0x58, 0x9999)  # beyond NumberParameters: not reported
    struct.pack_into("<I", p, 0xB8, 1)
    change = parse_state_change(bytes(p))
    assert change is not None and change.exception is not None and change.load_symbols is None
    assert change.kind == 0x3030 and change.processor == 2 and change.processor_level == 6
    assert change.number_processors == 4
    assert change.thread == 0xFFFFA00012345080 and change.program_counter == 0xFFFFF80012340000
    assert change.exception.code == 0x80000003 and change.exception.first_chance
    assert change.exception.address == 0xFFFFF80012340000
    assert change.exception.parameters == (0, 0x1111, 0x2222)
    assert change.control.dr6 == 0xFFFF0FF0 and change.control.dr7 == 0x400 and change.control.eflags == 0x246
    assert change.control.instruction_stream == b"\xcc\xc3\x90" and change.control.report_flags == 3


def test_alternate_state_bit_is_masked() -> None:
    change = parse_state_change(bytes(_state_change(0x13031)))
    assert change is not None and change.new_state == 0x13031 and change.kind == 0x3031


def test_zero_processors_counts_as_one() -> None:
    p = _state_change(0x3032)
    struct.pack_into("<I", p, 0x08, 0)
    change = parse_state_change(bytes(p))
    assert change is not None and change.number_processors == 1


def test_load_symbols_path_is_at_the_end_of_the_payload() -> None:
    path = b"\\SystemRoot\\system32\\drivers\\mydrv.sys\0"
    p = _state_change(0x3031, extra=b"\xaa\xbb" + path)  # 2 unexplained bytes before the path
    struct.pack_into("<I", p, 0x20, len(path))  # PathNameLength includes the NUL (§6.1)
    struct.pack_into("<Q", p, 0x28, 0xFFFFF80055550000)
    struct.pack_into("<Q", p, 0x30, 4)
    struct.pack_into("<I", p, 0x38, 0xABCDEF)
    struct.pack_into("<I", p, 0x3C, 0x7000)
    p[0x40] = 0
    change = parse_state_change(bytes(p))
    assert change is not None and change.load_symbols is not None and change.exception is None
    load = change.load_symbols
    assert load.path == b"\\SystemRoot\\system32\\drivers\\mydrv.sys"
    assert (load.base, load.process_id, load.checksum, load.size, load.unload) == (
        0xFFFFF80055550000,
        4,
        0xABCDEF,
        0x7000,
        False,
    )


def test_unload_all_notification() -> None:
    p = _state_change(0x3031)
    struct.pack_into("<Q", p, 0x28, 0xFFFFFFFFFFFFFFFF)
    p[0x40] = 1
    change = parse_state_change(bytes(p))
    assert change is not None and change.load_symbols is not None
    assert change.load_symbols.unload and change.load_symbols.base == c.UNLOAD_ALL_BASE
    assert change.load_symbols.path == b""


def test_short_payloads_parse_to_none() -> None:
    assert parse_state_change(bytes(0xEF)) is None
    assert parse_debug_io(bytes(11)) is None
    assert parse_manipulate(bytes(0x37)) is None
    assert parse_file_io(bytes(63)) is None


# -- §4: DEBUG_IO ----------------------------------------------------------------------------------


def test_print_string() -> None:
    text = b"mydrv: hello\n"
    payload = struct.pack("<IHHII", 0x3230, 6, 3, len(text), 0) + text
    io = parse_debug_io(payload)
    assert io is not None and (io.api, io.processor_level, io.processor, io.text) == (0x3230, 6, 3, text)


def test_print_string_with_the_old_12_byte_header() -> None:
    payload = struct.pack("<IHHI", 0x3230, 6, 0, 2) + b"ok"
    io = parse_debug_io(payload)
    assert io is not None and io.text == b"ok"


def test_empty_print() -> None:
    io = parse_debug_io(struct.pack("<IHHII", 0x3230, 6, 0, 0, 0))
    assert io is not None and io.text == b""


def test_get_string_and_its_reply() -> None:
    prompt = b"Break, Ignore (bi)? "
    io = parse_debug_io(struct.pack("<IHHII", 0x3231, 6, 1, len(prompt), 4) + prompt)
    assert io is not None and io.api == 0x3231 and io.text == prompt and io.max_response == 4
    reply = build_prompt_reply(io, b"ignore")  # longer than the 4 bytes asked for: cut
    assert reply[0x00:0x04] == struct.pack("<I", 0x3231)
    assert reply[0x04:0x06] == struct.pack("<H", 6) and reply[0x06:0x08] == struct.pack("<H", 1)
    assert reply[0x0C:0x10] == struct.pack("<I", 4)  # LengthOfStringRead = answer length (§4.5)
    assert reply[0x10:] == b"igno"


# -- §5.4, §5.5, §5.7, §5.8: manipulate requests ----------------------------------------------------


def test_continue() -> None:
    p = build_continue(3, 0x00010002)
    assert len(p) == 0x38
    assert struct.unpack_from("<IHHI", p, 0) == (0x3136, 0, 3, 0x00010002)
    assert struct.unpack_from("<I", p, 0x10) == (0x00010002,)


def test_continue2() -> None:
    p = build_continue2(1, 0x00010002, 0x455)
    assert len(p) == 0x38
    assert struct.unpack_from("<IHH", p, 0) == (0x313C, 0, 1)
    assert struct.unpack_from("<IIQQQ", p, 0x10) == (0x00010002, 0, 0x455, 1, 0)


def test_get_context() -> None:
    p = build_get_context(2)
    assert len(p) == 0x38
    assert struct.unpack_from("<IHH", p, 0) == (0x3132, 0, 2)
    assert struct.unpack_from("<I", p, 0x10) == (0x0010001F,)


def _context(rip: int, rcx: int, flags: int) -> bytes:
    ctx = bytearray(0x4D0)
    struct.pack_into("<I", ctx, 0x30, flags)
    struct.pack_into("<Q", ctx, 0x80, rcx)
    struct.pack_into("<Q", ctx, 0xF8, rip)
    return bytes(ctx)


def test_set_context_forces_context_control() -> None:
    ctx = _context(0x1234, 3, 0x00100002)  # INTEGER only: RIP would not move (§12.5)
    p = build_set_context(0, ctx)
    assert len(p) == 0x38 + 0x4D0
    assert struct.unpack_from("<IHH", p, 0) == (0x3133, 0, 0)
    assert struct.unpack_from("<I", p, 0x10) == (0x00100003,)
    assert struct.unpack_from("<I", p, 0x38 + 0x30) == (0x00100003,)
    assert struct.unpack_from("<Q", p, 0x38 + 0xF8) == (0x1234,)
    assert context_field(ctx, 0x80) == 3


def test_set_context_ex_is_one_whole_chunk() -> None:
    p = build_set_context_ex(1, _context(0x10, 0, 0x0010001F))
    assert struct.unpack_from("<IHH", p, 0) == (0x3160, 0, 1)
    assert struct.unpack_from("<III", p, 0x10) == (0, 0x4D0, 0x4D0)
    assert len(p) == 0x38 + 0x4D0


def test_set_context_refuses_a_context_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="CONTEXT"):
        build_set_context(0, bytes(0x2CC))


def test_read_virtual_memory() -> None:
    p = build_read_virtual_memory(0, 0xFFFFF80000001000, 8)
    assert struct.unpack_from("<I", p, 0) == (0x3130,)
    assert struct.unpack_from("<QII", p, 0x10) == (0xFFFFF80000001000, 8, 0)
    reply = parse_manipulate(p + b"\x11" * 8)
    assert reply is not None and reply.api == 0x3130 and reply.data == b"\x11" * 8


def test_get_version_request_and_reply() -> None:
    request = build_get_version(0)
    assert len(request) == 0x38 and struct.unpack_from("<I", request, 0) == (0x3146,)
    reply = bytearray(0x38)
    struct.pack_into("<IHHI", reply, 0, 0x3146, 0, 0, 0)
    struct.pack_into("<HHBBHH", reply, 0x10, 0x000F, 22631, 6, 2, 0x7, 0x8664)
    struct.pack_into("<QQQ", reply, 0x20, 0xFFFFF80000000000, 0xFFFFF80000100000, 0xFFFFF80000200000)
    parsed = parse_manipulate(bytes(reply))
    assert parsed is not None and parsed.status == 0
    version = parse_version(parsed)
    assert (version.major, version.minor, version.protocol, version.secondary) == (0xF, 22631, 6, 2)
    assert (version.flags, version.machine) == (0x7, 0x8664)
    assert version.kern_base == 0xFFFFF80000000000
    assert version.ps_loaded_module_list == 0xFFFFF80000100000
    assert version.debugger_data_list == 0xFFFFF80000200000


# -- §6.3: FILE_IO ---------------------------------------------------------------------------------


def test_file_io_request_and_failure_reply() -> None:
    request = bytearray(64)
    struct.pack_into("<II", request, 0, 0x3430, 0)
    payload = bytes(request) + "\\??\\C:\\Windows\\mydrv.sys\0".encode("utf-16-le")
    parsed = parse_file_io(payload)
    assert parsed is not None and parsed.api == 0x3430 and parsed.name == "\\??\\C:\\Windows\\mydrv.sys"
    reply = build_file_io_reply(0x3430, 0xC0000001)
    assert len(reply) == 64
    assert struct.unpack_from("<II", reply, 0) == (0x3430, 0xC0000001)
    assert reply[8:] == bytes(56)


# -- text: lines and the bugcheck banner (§4.2, §5.7, §12.6) ----------------------------------------


def test_lines_across_prints() -> None:
    lines = LineAssembler("cp1252", 100)
    assert lines.feed(b"one ", 1.0) == []
    assert lines.feed(b"two\nthree\r\nfo", 2.0) == [(1.0, "one two"), (2.0, "three")]
    assert lines.partial_since == 2.0
    assert lines.feed(b"", 3.0) == []  # zero-length print: nothing changes (§12.4)
    assert lines.flush() == (2.0, "fo")
    assert lines.flush() is None and lines.partial_since is None
    assert lines.feed(b"caf\xe9\n", 4.0) == [(4.0, "café")]


def test_long_lines_are_cut() -> None:
    lines = LineAssembler("cp1252", 4)
    assert lines.feed(b"abcdefghij", 1.0) == [(1.0, "abcd"), (1.0, "efgh")]
    assert lines.flush() == (1.0, "ij")


def test_banner_in_the_windows_format() -> None:
    text = (
        "\n*** Fatal System Error: 0x000000d1\n" + " " * 23 + "(0xFFFFF80012345678,0x0000000000000002,"
        "0x0000000000000000,0xFFFFF80087654321)\n\n"
    )
    watcher = BannerWatcher()
    for line in text.split("\n"):
        watcher.feed(line)
    watcher.feed("Driver at fault: mydrv.sys.")
    assert watcher.pending
    banner = watcher.take()
    assert banner is not None and not watcher.pending
    assert banner.code == 0xD1
    assert banner.parameters == (0xFFFFF80012345678, 2, 0, 0xFFFFF80087654321)
    assert banner.driver == "mydrv.sys"
    assert watcher.take() is None


def test_banner_without_parameters_or_driver() -> None:
    watcher = BannerWatcher()
    watcher.feed("*** FATAL SYSTEM ERROR: 0x0000007E")
    watcher.feed("something else")
    watcher.feed("(0x1,0x2,0x3,0x4)")  # too late: not the parameter line any more
    banner = watcher.take()
    assert banner is not None and banner.code == 0x7E and banner.parameters == () and banner.driver is None


# -- modules and addresses ---------------------------------------------------------------------------


def test_module_table() -> None:
    table = ModuleTable()
    a = KdModule("a.sys", "\\a.sys", 0x2000, 0x100, 0)
    b = KdModule("b.sys", "\\b.sys", 0x1000, 0x100, 0)
    table.load(a)
    table.load(b)
    table.load(a)
    assert table.snapshot() == (b, a)
    table.unload(0x1000)
    assert table.snapshot() == (a,)
    table.unload(c.UNLOAD_ALL_BASE)
    assert table.snapshot() == ()
    assert module_name("\\SystemRoot\\system32\\ntoskrnl.exe") == "ntoskrnl.exe"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4445", ("127.0.0.1", 4445)),
        ("localhost:4445", ("localhost", 4445)),
        ("[::1]:4445", ("::1", 4445)),
        ("run/kd.sock", "run/kd.sock"),
        ("kd.sock", "kd.sock"),
        ("run/kd:1", "run/kd:1"),
    ],
)
def test_parse_address(text: str, expected: object) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:0", "host:70000"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)
