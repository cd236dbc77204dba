"""Every number of the KD serial protocol ("KDCOM") the host uses, each cited to its spec section.

The spec is the project's protocol reference ``kd-protocol.md`` (64-bit protocol version 2, x64
layouts); "§" numbers are its sections. Its certainty marks are kept: [C] confirmed, [I] inferred,
[U] unverified. Every [U] or [I] value that changes behaviour is also reachable through
:class:`vmtest.capture.kd.options.KdOptions`, so a wrong guess is corrected in one place.
"""

from __future__ import annotations

__all__ = [
    "ALTERNATE_STATE_CHANGE",
    "AMD64_CONTEXT_SIZE",
    "API_FAMILY_BY_PACKET_TYPE",
    "BREAKIN_PACKET_BYTE",
    "BREAKPOINT_OPCODE",
    "CONTEXT_ALL",
    "CONTEXT_CONTROL",
    "CONTEXT_FLAGS_OFFSET",
    "CONTEXT_RCX_OFFSET",
    "CONTEXT_RIP_OFFSET",
    "CONTROL_PACKET_LEADER",
    "CONTROL_PACKET_LEADER_BYTE",
    "CONTROL_PACKET_TYPES",
    "DATA_PACKET_TYPES",
    "DBG_CONTINUE",
    "DBG_EXCEPTION_HANDLED",
    "DBG_EXCEPTION_NOT_HANDLED",
    "DBG_STATUS_BUGCHECK_FIRST",
    "DBG_STATUS_BUGCHECK_SECOND",
    "DBG_STATUS_CONTROL_C",
    "DEBUG_IO_HEADER_SIZE",
    "DEBUG_IO_OLD_HEADER_SIZE",
    "FILE_IO_HEADER_SIZE",
    "INITIAL_PACKET_ID",
    "KDBG_BLOCK_READ_SIZE",
    "KDBG_KI_BUGCHECK_DATA_OFFSET",
    "KDBG_OWNER_TAG",
    "KDBG_OWNER_TAG_OFFSET",
    "KD_HEADER_SIZE",
    "KI_BUGCHECK_DATA_SIZE",
    "LEADER_SIZE",
    "MANIPULATE_HEADER_SIZE",
    "MAX_FRAME_SIZE",
    "PACKET_ID_BIT",
    "PACKET_LEADER",
    "PACKET_LEADER_BYTE",
    "PACKET_MAX_SIZE",
    "PACKET_TRAILING_BYTE",
    "PACKET_TYPE_KD_ACKNOWLEDGE",
    "PACKET_TYPE_KD_CONTROL_REQUEST",
    "PACKET_TYPE_KD_DEBUG_IO",
    "PACKET_TYPE_KD_FILE_IO",
    "PACKET_TYPE_KD_POLL_BREAKIN",
    "PACKET_TYPE_KD_RESEND",
    "PACKET_TYPE_KD_RESET",
    "PACKET_TYPE_KD_STATE_CHANGE32",
    "PACKET_TYPE_KD_STATE_CHANGE64",
    "PACKET_TYPE_KD_STATE_MANIPULATE",
    "PACKET_TYPE_KD_TRACE_IO",
    "PACKET_TYPE_MAX",
    "PACKET_TYPE_UNUSED",
    "STATE_CHANGE_SIZE",
    "STATUS_BREAKPOINT",
    "STATUS_NO_SUCH_FILE",
    "STATUS_SUCCESS",
    "STATUS_UNSUCCESSFUL",
    "SYNC_PACKET_ID",
    "UNLOAD_ALL_BASE",
    "DbgKdCommandStringStateChange",
    "DbgKdContinueApi",
    "DbgKdContinueApi2",
    "DbgKdCreateFileApi",
    "DbgKdExceptionStateChange",
    "DbgKdGetContextApi",
    "DbgKdGetStringApi",
    "DbgKdGetVersionApi",
    "DbgKdLoadSymbolsStateChange",
    "DbgKdPrintStringApi",
    "DbgKdReadVirtualMemoryApi",
    "DbgKdSetContextApi",
    "DbgKdSetContextExApi",
]

# §1.2 Leaders and magic bytes [C]
PACKET_LEADER = 0x30303030  # "0000": data packet
PACKET_LEADER_BYTE = 0x30
CONTROL_PACKET_LEADER = 0x69696969  # "iiii": control packet
CONTROL_PACKET_LEADER_BYTE = 0x69
BREAKIN_PACKET_BYTE = 0x62  # 'b', host -> target only, no header (§1.1, §3.5)
PACKET_TRAILING_BYTE = 0xAA  # ends every data packet, never a control packet (§1.1)
LEADER_SIZE = 4  # four identical leader bytes in a row (§1.7)

# §1.3 KD_PACKET header: leader u32, type u16, byte count u16, id u32, checksum u32 [C]
KD_HEADER_SIZE = 16

# §1.6 Maximum payload; a longer packet is refused with RESEND [C]
PACKET_MAX_SIZE = 4000
# The largest unit on the wire: header + payload + trailing byte (§1.1, §1.6).
MAX_FRAME_SIZE = KD_HEADER_SIZE + PACKET_MAX_SIZE + 1

# §1.5 Packet ids [C]
INITIAL_PACKET_ID = 0x80800000
SYNC_PACKET_ID = 0x00000800
PACKET_ID_BIT = 0x00000001  # toggled after each accepted packet

# §2 Packet types [C]
PACKET_TYPE_UNUSED = 0
PACKET_TYPE_KD_STATE_CHANGE32 = 1
PACKET_TYPE_KD_STATE_MANIPULATE = 2
PACKET_TYPE_KD_DEBUG_IO = 3
PACKET_TYPE_KD_ACKNOWLEDGE = 4
PACKET_TYPE_KD_RESEND = 5
PACKET_TYPE_KD_RESET = 6
PACKET_TYPE_KD_STATE_CHANGE64 = 7
PACKET_TYPE_KD_POLL_BREAKIN = 8  # never on the wire
PACKET_TYPE_KD_TRACE_IO = 9
PACKET_TYPE_KD_CONTROL_REQUEST = 10
PACKET_TYPE_KD_FILE_IO = 11
PACKET_TYPE_MAX = 12

CONTROL_PACKET_TYPES = frozenset({PACKET_TYPE_KD_ACKNOWLEDGE, PACKET_TYPE_KD_RESEND, PACKET_TYPE_KD_RESET})
# Types that may follow a "0000" leader. UNUSED (0) and POLL_BREAKIN (8) never travel on serial (§2),
# so a header carrying them is junk (§12.2).
DATA_PACKET_TYPES = frozenset(
    {
        PACKET_TYPE_KD_STATE_CHANGE32,
        PACKET_TYPE_KD_STATE_MANIPULATE,
        PACKET_TYPE_KD_DEBUG_IO,
        PACKET_TYPE_KD_STATE_CHANGE64,
        PACKET_TYPE_KD_TRACE_IO,
        PACKET_TYPE_KD_CONTROL_REQUEST,
        PACKET_TYPE_KD_FILE_IO,
    }
)

# §2 Sub-type ("API number") constants [C]. Names keep the Windows spelling so they can be grepped.
DbgKdExceptionStateChange = 0x3030
DbgKdLoadSymbolsStateChange = 0x3031
DbgKdCommandStringStateChange = 0x3032
ALTERNATE_STATE_CHANGE = 0x00010000  # OR-ed into NewState by an alternate source
DbgKdPrintStringApi = 0x3230
DbgKdGetStringApi = 0x3231
DbgKdReadVirtualMemoryApi = 0x3130
DbgKdGetContextApi = 0x3132
DbgKdSetContextApi = 0x3133
DbgKdContinueApi = 0x3136
DbgKdContinueApi2 = 0x313C
DbgKdGetVersionApi = 0x3146
DbgKdSetContextExApi = 0x3160
DbgKdCreateFileApi = 0x3430

# The API numbers are ASCII pairs and every packet type uses one "family" byte (bits 8..15): state changes
# 0x30xx, manipulate 0x31xx, debug I/O 0x32xx, trace I/O 0x33xx, file I/O 0x34xx, control request 0x43xx
# (§2, §6.3). [I]: inferred from the numbers the spec lists, not stated by a source. The link uses it to
# refuse a packet whose type byte was flipped in transit; KdOptions.check_api_family turns it off.
API_FAMILY_BY_PACKET_TYPE = {
    PACKET_TYPE_KD_STATE_CHANGE64: 0x30,
    PACKET_TYPE_KD_STATE_MANIPULATE: 0x31,
    PACKET_TYPE_KD_DEBUG_IO: 0x32,
    PACKET_TYPE_KD_TRACE_IO: 0x33,
    PACKET_TYPE_KD_FILE_IO: 0x34,
    PACKET_TYPE_KD_CONTROL_REQUEST: 0x43,
}

# §4.1 DBGKD_DEBUG_IO header [C]; NTE also accepts an older 12-byte header [I].
DEBUG_IO_HEADER_SIZE = 0x10
DEBUG_IO_OLD_HEADER_SIZE = 0x0C

# §5.1 DBGKD_ANY_WAIT_STATE_CHANGE: the fixed part; anything after it is type-specific [C]
STATE_CHANGE_SIZE = 0xF0

# §5.4 DBGKD_MANIPULATE_STATE64 header; request/reply data follows at 0x38 [C]
MANIPULATE_HEADER_SIZE = 0x38

# §6.3 DBGKD_FILE_IO header; a UTF-16LE file name follows [C]
FILE_IO_HEADER_SIZE = 64

# §5.4 Continue statuses [C]
DBG_CONTINUE = 0x00010002
DBG_EXCEPTION_HANDLED = 0x00010001
DBG_EXCEPTION_NOT_HANDLED = 0x80010001

# NTSTATUS values (§5.2, §5.5, §6.3)
STATUS_SUCCESS = 0x00000000
STATUS_BREAKPOINT = 0x80000003
# FILE_IO failure replies (§6.3): NTE answers STATUS_UNSUCCESSFUL, R2 STATUS_NO_SUCH_FILE. Which one Windows
# prefers is [U]; the default is KdOptions.file_io_status.
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_NO_SUCH_FILE = 0xC000000F

# §5.7 DBG_STATUS_* passed in RCX to DbgBreakPointWithStatus [C]
DBG_STATUS_CONTROL_C = 1
DBG_STATUS_BUGCHECK_FIRST = 3
DBG_STATUS_BUGCHECK_SECOND = 4

# §5.5 x64 int 3 and the AMD64 CONTEXT the target returns to GetContext [C for the layout]
BREAKPOINT_OPCODE = 0xCC
AMD64_CONTEXT_SIZE = 0x4D0
CONTEXT_FLAGS_OFFSET = 0x30
CONTEXT_RCX_OFFSET = 0x80
CONTEXT_RIP_OFFSET = 0xF8
# CONTEXT_AMD64 | CONTROL; SetContext moves RIP only when the flags include it (§12.5).
CONTEXT_CONTROL = 0x00100001
# What NTE asks GetContext for (§5.5); ReactOS ignores the value.
CONTEXT_ALL = 0x0010001F

# §6.1 BaseOfDll of the "unload everything" notification sent before a reboot [C]
UNLOAD_ALL_BASE = 0xFFFFFFFFFFFFFFFF

# §5.7B KDDEBUGGER_DATA64, reached through GetVersion's DebuggerDataList [C offsets; U on Win8+, where
# the block may be encoded, which the owner tag check detects].
KDBG_OWNER_TAG_OFFSET = 0x10
KDBG_OWNER_TAG = b"KDBG"
KDBG_KI_BUGCHECK_DATA_OFFSET = 0x88
KDBG_BLOCK_READ_SIZE = KDBG_KI_BUGCHECK_DATA_OFFSET + 8
KI_BUGCHECK_DATA_SIZE = 5 * 8  # code, then four parameters
