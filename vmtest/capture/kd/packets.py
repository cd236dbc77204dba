"""The payloads the host reads and writes: debug I/O, state changes, manipulate requests, file I/O.

Parsers take a data packet's payload and return a frozen record, or ``None`` when the payload is too
short for its layout: they never raise on target input. Builders return the payload of a host data
packet. All layouts are x64 (spec §4.1, §5.1-5.8, §6.1, §6.3), little-endian, offsets from the start of
the payload exactly as the spec's tables give them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmtest.capture.kd.constants import (
    ALTERNATE_STATE_CHANGE,
    AMD64_CONTEXT_SIZE,
    API_FAMILY_BY_PACKET_TYPE,
    CONTEXT_ALL,
    CONTEXT_CONTROL,
    CONTEXT_FLAGS_OFFSET,
    DEBUG_IO_HEADER_SIZE,
    DEBUG_IO_OLD_HEADER_SIZE,
    FILE_IO_HEADER_SIZE,
    MANIPULATE_HEADER_SIZE,
    STATE_CHANGE_SIZE,
    DbgKdContinueApi,
    DbgKdContinueApi2,
    DbgKdExceptionStateChange,
    DbgKdGetContextApi,
    DbgKdGetStringApi,
    DbgKdGetVersionApi,
    DbgKdLoadSymbolsStateChange,
    DbgKdReadVirtualMemoryApi,
    DbgKdSetContextApi,
    DbgKdSetContextExApi,
)
from vmtest.capture.kd.layout import Field, Layout

__all__ = [
    "CONTEXT_REQUEST",
    "CONTINUE",
    "CONTINUE2",
    "CONTROL_REPORT",
    "DEBUG_IO",
    "EXCEPTION_STATE",
    "FILE_IO",
    "GET_VERSION",
    "LOAD_SYMBOLS_STATE",
    "MANIPULATE",
    "READ_MEMORY",
    "SET_CONTEXT_EX",
    "STATE_CHANGE",
    "ControlReport",
    "DebugIo",
    "ExceptionRecord",
    "FileIoRequest",
    "KdVersion",
    "LoadSymbols",
    "ManipulateReply",
    "StateChange",
    "api_matches_packet_type",
    "build_continue",
    "build_continue2",
    "build_file_io_reply",
    "build_get_context",
    "build_get_version",
    "build_prompt_reply",
    "build_read_virtual_memory",
    "build_set_context",
    "build_set_context_ex",
    "context_field",
    "context_with_field",
    "parse_debug_io",
    "parse_file_io",
    "parse_manipulate",
    "parse_state_change",
    "parse_version",
]

# §4.1 DBGKD_DEBUG_IO. Offset 8 is LengthOfString for PrintString, LengthOfPromptString for GetString.
DEBUG_IO = Layout(
    "DBGKD_DEBUG_IO",
    DEBUG_IO_HEADER_SIZE,
    [
        ("ApiNumber", 0x00, "I"),
        ("ProcessorLevel", 0x04, "H"),
        ("Processor", 0x06, "H"),
        ("LengthOfString", 0x08, "I"),
        ("LengthOfStringRead", 0x0C, "I"),
    ],
)

# §5.1 DBGKD_ANY_WAIT_STATE_CHANGE, the part common to every state.
STATE_CHANGE = Layout(
    "DBGKD_ANY_WAIT_STATE_CHANGE",
    STATE_CHANGE_SIZE,
    [
        ("NewState", 0x00, "I"),
        ("ProcessorLevel", 0x04, "H"),
        ("Processor", 0x06, "H"),
        ("NumberProcessors", 0x08, "I"),
        ("Thread", 0x10, "Q"),
        ("ProgramCounter", 0x18, "Q"),
    ],
)

# §5.2 the exception union: EXCEPTION_RECORD64 then FirstChance.
EXCEPTION_STATE = Layout(
    "DBGKM_EXCEPTION64",
    STATE_CHANGE_SIZE,
    [
        ("ExceptionCode", 0x20, "I"),
        ("ExceptionFlags", 0x24, "I"),
        ("ExceptionRecord", 0x28, "Q"),
        ("ExceptionAddress", 0x30, "Q"),
        ("NumberParameters", 0x38, "I"),
        ("ExceptionInformation", 0x40, "15Q"),
        ("FirstChance", 0xB8, "I"),
    ],
)

# §6.1 the load-symbols union; the path is the last PathNameLength bytes of the payload.
LOAD_SYMBOLS_STATE = Layout(
    "DBGKD_LOAD_SYMBOLS64",
    STATE_CHANGE_SIZE,
    [
        ("PathNameLength", 0x20, "I"),
        ("BaseOfDll", 0x28, "Q"),
        ("ProcessId", 0x30, "Q"),
        ("CheckSum", 0x38, "I"),
        ("SizeOfImage", 0x3C, "I"),
        ("UnloadSymbols", 0x40, "B"),
    ],
)

# §5.3 AMD64_DBGKD_CONTROL_REPORT at 0xC0.
CONTROL_REPORT = Layout(
    "AMD64_DBGKD_CONTROL_REPORT",
    STATE_CHANGE_SIZE,
    [
        ("Dr6", 0xC0, "Q"),
        ("Dr7", 0xC8, "Q"),
        ("EFlags", 0xD0, "I"),
        ("InstructionCount", 0xD4, "H"),
        ("ReportFlags", 0xD6, "H"),
        ("InstructionStream", 0xD8, "16s"),
        ("SegCs", 0xE8, "H"),
        ("SegDs", 0xEA, "H"),
        ("SegEs", 0xEC, "H"),
        ("SegFs", 0xEE, "H"),
    ],
)

# §5.4 DBGKD_MANIPULATE_STATE64: header, then the union at 0x10; data follows at 0x38.
_MANIPULATE_HEAD: list[Field] = [
    ("ApiNumber", 0x00, "I"),
    ("ProcessorLevel", 0x04, "H"),
    ("Processor", 0x06, "H"),
    ("ReturnStatus", 0x08, "I"),
]
MANIPULATE = Layout("DBGKD_MANIPULATE_STATE64", MANIPULATE_HEADER_SIZE, _MANIPULATE_HEAD)
CONTINUE = Layout(
    "DBGKD_CONTINUE", MANIPULATE_HEADER_SIZE, [*_MANIPULATE_HEAD, ("ContinueStatus", 0x10, "I")]
)
CONTINUE2 = Layout(  # AMD64_DBGKD_CONTROL_SET, pack(4)
    "DBGKD_CONTINUE2",
    MANIPULATE_HEADER_SIZE,
    [
        *_MANIPULATE_HEAD,
        ("ContinueStatus", 0x10, "I"),
        ("TraceFlag", 0x14, "I"),
        ("Dr7", 0x18, "Q"),
        ("CurrentSymbolStart", 0x20, "Q"),
        ("CurrentSymbolEnd", 0x28, "Q"),
    ],
)
CONTEXT_REQUEST = Layout(  # §5.5 GetContext and SetContext both carry ContextFlags at 0x10
    "DBGKD_GET_SET_CONTEXT", MANIPULATE_HEADER_SIZE, [*_MANIPULATE_HEAD, ("ContextFlags", 0x10, "I")]
)
SET_CONTEXT_EX = Layout(  # §5.5, as NTE writes it
    "DBGKD_CONTEXT_EX",
    MANIPULATE_HEADER_SIZE,
    [*_MANIPULATE_HEAD, ("Offset", 0x10, "I"), ("ByteCount", 0x14, "I"), ("BytesCopied", 0x18, "I")],
)
READ_MEMORY = Layout(  # §5.7 DBGKD_READ_MEMORY64
    "DBGKD_READ_MEMORY64",
    MANIPULATE_HEADER_SIZE,
    [
        *_MANIPULATE_HEAD,
        ("TargetBaseAddress", 0x10, "Q"),
        ("TransferCount", 0x18, "I"),
        ("ActualBytesRead", 0x1C, "I"),
    ],
)
GET_VERSION = Layout(  # §5.8 DBGKD_GET_VERSION64
    "DBGKD_GET_VERSION64",
    MANIPULATE_HEADER_SIZE,
    [
        *_MANIPULATE_HEAD,
        ("MajorVersion", 0x10, "H"),
        ("MinorVersion", 0x12, "H"),
        ("ProtocolVersion", 0x14, "B"),
        ("KdSecondaryVersion", 0x15, "B"),
        ("Flags", 0x16, "H"),
        ("MachineType", 0x18, "H"),
        ("MaxPacketType", 0x1A, "B"),
        ("MaxStateChange", 0x1B, "B"),
        ("MaxManipulate", 0x1C, "B"),
        ("Simulation", 0x1D, "B"),
        ("KernBase", 0x20, "Q"),
        ("PsLoadedModuleList", 0x28, "Q"),
        ("DebuggerDataList", 0x30, "Q"),
    ],
)

# §6.3 DBGKD_FILE_IO: the host only needs the API number and the status; the name follows the header.
FILE_IO = Layout("DBGKD_FILE_IO", FILE_IO_HEADER_SIZE, [("ApiNumber", 0x00, "I"), ("Status", 0x04, "I")])


@dataclass(frozen=True, slots=True)
class DebugIo:
    """A DEBUG_IO packet from the target: a DbgPrint string, or a DbgPrompt with its maximum answer."""

    api: int
    processor_level: int
    processor: int
    text: bytes
    max_response: int


@dataclass(frozen=True, slots=True)
class ControlReport:
    """The x64 control report of a state change (§5.3): the code bytes at PC and the debug registers."""

    dr6: int
    dr7: int
    eflags: int
    report_flags: int
    instruction_stream: bytes  # only the InstructionCount valid bytes


@dataclass(frozen=True, slots=True)
class ExceptionRecord:
    """The exception of an exception state change (§5.2)."""

    code: int
    flags: int
    address: int
    parameters: tuple[int, ...]
    first_chance: bool


@dataclass(frozen=True, slots=True)
class LoadSymbols:
    """A driver image loaded or unloaded (§6.1); ``path`` is the raw ANSI path without its NUL."""

    path: bytes
    base: int
    process_id: int
    checksum: int
    size: int
    unload: bool


@dataclass(frozen=True, slots=True)
class StateChange:
    """A STATE_CHANGE64 packet: the target stopped and waits for a continue (§5)."""

    new_state: int
    processor_level: int
    processor: int
    number_processors: int
    thread: int
    program_counter: int
    control: ControlReport
    exception: ExceptionRecord | None
    load_symbols: LoadSymbols | None

    @property
    def kind(self) -> int:
        """``NewState`` without the alternate-source bit: 0x3030, 0x3031 or 0x3032."""
        return self.new_state & ~ALTERNATE_STATE_CHANGE


@dataclass(frozen=True, slots=True)
class ManipulateReply:
    """The target's answer to a manipulate request: API, status, the whole payload for the union."""

    api: int
    processor: int
    status: int
    payload: bytes

    @property
    def data(self) -> bytes:
        """The bytes after the 0x38-byte header: memory contents, a CONTEXT."""
        return self.payload[MANIPULATE_HEADER_SIZE:]


@dataclass(frozen=True, slots=True)
class KdVersion:
    """The GetVersion reply (§5.8)."""

    major: int
    minor: int
    protocol: int
    secondary: int
    flags: int
    machine: int
    kern_base: int
    ps_loaded_module_list: int
    debugger_data_list: int


@dataclass(frozen=True, slots=True)
class FileIoRequest:
    """A FILE_IO request from the target (§6.3) and the file it names, decoded from UTF-16LE."""

    api: int
    status: int
    name: str


def api_matches_packet_type(packet_type: int, payload: bytes) -> bool:
    """False when the API number's family byte cannot belong to this packet type (see constants).

    Types without a known family, and payloads too short to hold an API number, are not judged here.
    """
    family = API_FAMILY_BY_PACKET_TYPE.get(packet_type)
    if family is None or len(payload) < 4:
        return True
    api = int.from_bytes(payload[:4], "little")
    return (api >> 8) & 0xFF == family and api & 0xFFFF0000 in (0, ALTERNATE_STATE_CHANGE)


def parse_debug_io(payload: bytes) -> DebugIo | None:
    """A DEBUG_IO payload (§4.1, §4.5); the string starts at 0x10, or at 0x0C for the old header."""
    if len(payload) < DEBUG_IO_OLD_HEADER_SIZE:
        return None
    head = payload.ljust(DEBUG_IO_HEADER_SIZE, b"\0")
    api, level, processor, length, max_response = DEBUG_IO.unpack(head)
    # The length field is authoritative; NTE also accepts a 12-byte header and picks the offset that
    # makes ByteCount = header + LengthOfString (§4.1). Anything else: the string runs to the end.
    start = DEBUG_IO_HEADER_SIZE
    if len(payload) == DEBUG_IO_OLD_HEADER_SIZE + length:
        start, max_response = DEBUG_IO_OLD_HEADER_SIZE, 0
    return DebugIo(api, level, processor, payload[start : start + length], max_response)


def parse_state_change(payload: bytes) -> StateChange | None:
    """A STATE_CHANGE64 payload: the fixed 0xF0 bytes; extra bytes are type-specific (§5.1, §12.9)."""
    if len(payload) < STATE_CHANGE_SIZE:
        return None
    new_state, level, processor, processors, thread, pc = STATE_CHANGE.unpack(payload)
    dr6, dr7, eflags, count, report_flags, stream, *_segments = CONTROL_REPORT.unpack(payload)
    control = ControlReport(dr6, dr7, eflags, report_flags, stream[: min(count, len(stream))])
    kind = new_state & ~ALTERNATE_STATE_CHANGE
    exception = load = None
    if kind == DbgKdExceptionStateChange:
        code, flags, _chain, address, count, *info, first = EXCEPTION_STATE.unpack(payload)
        exception = ExceptionRecord(code, flags, address, tuple(info[: min(count, len(info))]), first != 0)
    elif kind == DbgKdLoadSymbolsStateChange:
        path_length, base, pid, image_sum, size, unload = LOAD_SYMBOLS_STATE.unpack(payload)
        extra = payload[STATE_CHANGE_SIZE:]
        path = extra[len(extra) - min(path_length, len(extra)) :]  # the last PathNameLength bytes (§6.1)
        load = LoadSymbols(path.split(b"\0", 1)[0], base, pid, image_sum, size, unload != 0)
    return StateChange(new_state, level, processor, max(processors, 1), thread, pc, control, exception, load)


def parse_manipulate(payload: bytes) -> ManipulateReply | None:
    """A STATE_MANIPULATE reply: at least the 0x38-byte header (§5.4)."""
    if len(payload) < MANIPULATE_HEADER_SIZE:
        return None
    api, _level, processor, status = MANIPULATE.unpack(payload)
    return ManipulateReply(api, processor, status, payload)


def parse_version(reply: ManipulateReply) -> KdVersion:
    """The GetVersion fields of a GetVersion reply (§5.8)."""
    _api, _level, _cpu, _status, *fields = GET_VERSION.unpack(reply.payload)
    major, minor, protocol, secondary, flags, machine, _mpt, _msc, _mm, _sim, kern, modules, ddl = fields
    return KdVersion(major, minor, protocol, secondary, flags, machine, kern, modules, ddl)


def parse_file_io(payload: bytes) -> FileIoRequest | None:
    """A FILE_IO request: its API number, status and the UTF-16LE file name after the header (§6.3)."""
    if len(payload) < FILE_IO_HEADER_SIZE:
        return None
    api, status = FILE_IO.unpack(payload)
    raw = payload[FILE_IO_HEADER_SIZE:]
    name = raw[: len(raw) - len(raw) % 2].decode("utf-16-le", errors="replace").split("\0", 1)[0]
    return FileIoRequest(api, status, name)


def build_prompt_reply(request: DebugIo, answer: bytes) -> bytes:
    """The host's answer to a DbgPrompt (§4.5): header with LengthOfStringRead, then the answer.

    The target copies at most the length it asked for, so the answer is cut to that. What belongs at
    offset 8 in a reply is not documented [U]; it is sent as 0, like NTE.
    """
    answer = answer[: request.max_response]
    header = DEBUG_IO.pack(DbgKdGetStringApi, request.processor_level, request.processor, 0, len(answer))
    return header + answer


def build_continue(processor: int, status: int) -> bytes:
    """``DbgKdContinueApi`` with a continue status (§5.4); the target answers with an ACK only.

    The status also goes into ReturnStatus, as WinDbg does (§5.4, KDD).
    """
    return CONTINUE.pack(DbgKdContinueApi, 0, processor, status, status)


def build_continue2(processor: int, status: int, dr7: int) -> bytes:
    """``DbgKdContinueApi2`` as §5.4 recommends: no single-step, the report's Dr7, symbol range 1..0.

    The status also goes into ReturnStatus, as WinDbg does (§5.4, KDD).
    """
    return CONTINUE2.pack(DbgKdContinueApi2, 0, processor, status, status, 0, dr7, 1, 0)


def build_get_context(processor: int, flags: int = CONTEXT_ALL) -> bytes:
    """``DbgKdGetContextApi`` (§5.5); the reply carries a 0x4D0-byte AMD64 CONTEXT after 0x38."""
    return CONTEXT_REQUEST.pack(DbgKdGetContextApi, 0, processor, 0, flags)


def build_set_context(processor: int, context: bytes) -> bytes:
    """``DbgKdSetContextApi`` with the whole CONTEXT; CONTEXT_CONTROL is forced on so RIP moves (§12.5)."""
    context = _with_control_flag(context)
    flags = context_field(context, CONTEXT_FLAGS_OFFSET, 4)
    return CONTEXT_REQUEST.pack(DbgKdSetContextApi, 0, processor, 0, flags) + context


def build_set_context_ex(processor: int, context: bytes) -> bytes:
    """``DbgKdSetContextExApi`` writing the whole CONTEXT in one chunk from offset 0 (§5.5).

    NTE writes in chunks and passes the total size in BytesCopied; Windows commits when offset +
    length reaches it [U]. One chunk of the whole context meets that rule and fits in a packet.
    """
    context = _with_control_flag(context)
    size = len(context)
    return SET_CONTEXT_EX.pack(DbgKdSetContextExApi, 0, processor, 0, 0, size, size) + context


def build_read_virtual_memory(processor: int, address: int, count: int) -> bytes:
    """``DbgKdReadVirtualMemoryApi`` (§5.7): the reply's data is what could be read."""
    return READ_MEMORY.pack(DbgKdReadVirtualMemoryApi, 0, processor, 0, address, count, 0)


def build_get_version(processor: int) -> bytes:
    """``DbgKdGetVersionApi`` (§5.8)."""
    return MANIPULATE.pack(DbgKdGetVersionApi, 0, processor, 0)


def build_file_io_reply(api: int, status: int) -> bytes:
    """A FILE_IO reply that refuses the request (§6.3): the same API number and a failure status."""
    return FILE_IO.pack(api, status)


def context_field(context: bytes, offset: int, size: int = 8) -> int:
    """An unsigned little-endian field of an AMD64 CONTEXT (§5.5 offsets)."""
    return int.from_bytes(context[offset : offset + size], "little")


def context_with_field(context: bytes, offset: int, value: int, size: int = 8) -> bytes:
    """A copy of ``context`` with one field replaced."""
    return context[:offset] + value.to_bytes(size, "little") + context[offset + size :]


def _with_control_flag(context: bytes) -> bytes:
    if len(context) != AMD64_CONTEXT_SIZE:
        raise ValueError(f"an AMD64 CONTEXT is {AMD64_CONTEXT_SIZE:#x} bytes, not {len(context):#x}")
    flags = context_field(context, CONTEXT_FLAGS_OFFSET, 4) | CONTEXT_CONTROL
    return context_with_field(context, CONTEXT_FLAGS_OFFSET, flags, 4)
