"""KdHost against a scripted Windows target over a real socket pair.

The target below is written from the spec alone (kd-protocol.md §1, §3, §4-§6, modelled on the
ReactOS/Singularity kdcom behaviour it describes), with its own framing code: it sends with SYNC ids,
retransmits when no ACK comes, answers RESEND and RESET, drops host packets with the wrong id, and
serves manipulate requests until it is continued. It runs in a thread on blocking sockets; the host
runs in asyncio on the other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from vmtest.capture.kd import (
    KdBugcheck,
    KdConnectError,
    KdEvent,
    KdHost,
    KdLinkStats,
    KdModuleLoad,
    KdOptions,
    KdPrint,
    KdStalled,
    run_kd,
)

INITIAL = 0x80800000
SYNC = 0x800
HEADER = struct.Struct("<IHHII")
DATA_LEADER, CONTROL_LEADER = 0x30303030, 0x69696969
ACK, RESEND, RESET = 4, 5, 6
MANIPULATE, DEBUG_IO, STATE_CHANGE, FILE_IO = 2, 3, 7, 11
CONTROL_FLAGS = 0x00100001
UNLOAD_ALL = 0xFFFFFFFFFFFFFFFF
KERNEL_BREAK = 0xFFFFF80012345670  # nt!DbgBreakPointWithStatus in this fake kernel
NEEDS_RESEND = "needs-resend"

FAST = KdOptions(
    ack_timeout=0.2,
    send_tries=5,
    reply_timeout=2.0,
    frame_timeout=0.1,
    line_flush_after=0.2,
    breakin_interval=0.3,
    attach_timeout=5.0,
)


class TargetClosed(Exception):
    """The host closed the socket."""


@dataclass
class Continued:
    """How the host resumed a stop, and the registers the CPU resumed with."""

    api: int
    status: int
    dr7: int | None
    rip: int
    rcx: int


def frame(packet_type: int, packet_id: int, payload: bytes) -> bytes:
    return (
        HEADER.pack(DATA_LEADER, packet_type, len(payload), packet_id, sum(payload) & 0xFFFFFFFF)
        + payload
        + b"\xaa"
    )


def control(packet_type: int, packet_id: int = 0) -> bytes:
    return HEADER.pack(CONTROL_LEADER, packet_type, 0, packet_id, 0)


def print_payload(text: bytes) -> bytes:
    return struct.pack("<IHHII", 0x3230, 6, 0, len(text), 0) + text


def state_change(new_state: int, pc: int, *, stream: bytes = b"", processor: int = 0) -> bytearray:
    p = bytearray(0xF0)
    struct.pack_into("<IHHI", p, 0, new_state, 6, processor, 2)
    struct.pack_into("<QQ", p, 0x10, 0xFFFFA00000001080, pc)
    struct.pack_into("<Q", p, 0xC8, 0x400)  # Dr7
    struct.pack_into("<H", p, 0xD4, len(stream))
    p[0xD8 : 0xD8 + len(stream)] = stream
    return p


def exception_change(code: int, pc: int, stream: bytes, processor: int = 0) -> bytes:
    p = state_change(0x3030, pc, stream=stream, processor=processor)
    struct.pack_into("<IIQQI", p, 0x20, code, 0, 0, pc, 1)  # one parameter: BREAKPOINT_BREAK = 0
    struct.pack_into("<I", p, 0xB8, 1)  # first chance
    return bytes(p)


def load_change(path: bytes, base: int, size: int, *, unload: bool = False) -> bytes:
    p = state_change(0x3031, 0xFFFFF80000001000)
    name = path + b"\0" if path else b""
    struct.pack_into("<I", p, 0x20, len(name))
    struct.pack_into("<QQII", p, 0x28, base, 4, 0x1234, size)
    p[0x40] = int(unload)
    return bytes(p) + name


class ScriptedTarget:
    """The target side of KDCOM: KdSendPacket, KdReceivePacket, KdpSendWaitContinue (spec §3, §5)."""

    def __init__(self, sock: socket.socket, *, ack_timeout: float = 0.2, retries: int = 20) -> None:
        self.sock = sock
        self.ack_timeout = ack_timeout
        self.retries = retries
        self.stop_timeout = 10.0  # how long a stop waits for a continue before giving up ("held")
        self.send_id = INITIAL | SYNC
        self.expect_id = INITIAL
        self.buf = bytearray()
        self.wire = bytearray()  # every byte the target sent
        self.breakins = 0
        self.ignore_acks = 0  # pretend this many ACKs were lost on the line
        self.resets = 0
        self.requests: list[int] = []
        self.context = bytearray(0x4D0)
        self.context_sent = False
        self.staged: dict[int, bytes] = {}
        self.reject_set_context = False
        self.memory: dict[int, bytes] = {}
        self.debugger_data_list = 0
        self.acked_at = 0.0

    # -- bytes ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.wire += data
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError as exc:
            raise TargetClosed from exc
        if not chunk:
            raise TargetClosed
        self.buf += chunk
        return True

    def _take(self, count: int, deadline: float) -> bytes | None:
        while len(self.buf) < count:
            if not self._fill(deadline):
                return None
        data = bytes(self.buf[:count])
        del self.buf[:count]
        return data

    def _unit(self, deadline: float) -> tuple[Any, ...] | None:
        """The next control or data packet; ("bad",) for a broken one; None at the deadline."""
        run_byte, run = 0, 0
        while run < 4:
            byte = self._take(1, deadline)
            if byte is None:
                return None
            if byte[0] == 0x62:
                self.breakins += 1
                run = 0
            elif byte[0] in (0x30, 0x69):
                run = run + 1 if byte[0] == run_byte else 1
                run_byte = byte[0]
            else:
                run = 0
        head = self._take(12, deadline)
        if head is None:
            return None
        packet_type, count, packet_id, total = struct.unpack("<HHII", head)
        if run_byte == 0x69:
            return ("control", packet_type, packet_id)
        if count > 4000:
            return ("bad",)
        body = self._take(count + 1, deadline)
        if body is None:
            return None
        if body[-1] != 0xAA or sum(body[:-1]) & 0xFFFFFFFF != total:
            return ("bad",)
        return ("data", packet_type, packet_id, body[:-1])

    def _reset(self) -> None:
        self.resets += 1
        self.send_id = self.expect_id = INITIAL
        self.write(control(RESET))

    # -- KdSendPacket / KdReceivePacket -------------------------------------------------------------

    def send_packet(self, packet_type: int, payload: bytes, *, may_time_out: bool) -> bool:
        """Send until ACKed. False when a may-time-out packet exhausts its retries (§3.6)."""
        retries = self.retries
        while True:
            self.write(frame(packet_type, self.send_id, payload))
            deadline = time.monotonic() + self.ack_timeout
            resend = False
            while not resend:
                unit = self._unit(deadline)
                if unit is None:
                    break
                if unit[0] == "control" and unit[1] == ACK:
                    if self.ignore_acks:
                        self.ignore_acks -= 1
                    elif unit[2] == self.send_id & ~SYNC:
                        self.send_id = (self.send_id & ~SYNC) ^ 1
                        self.acked_at = time.time()
                        return True
                elif unit[0] == "control" and unit[1] == RESET:
                    self._reset()
                    resend = True
                elif unit[0] == "control" and unit[1] == RESEND:
                    resend = True
                elif unit[0] == "data":  # a data packet where an ACK was due: RESEND it, ours is done
                    self.write(control(RESEND))
                    self.send_id = (self.send_id & ~SYNC) ^ 1
                    return True
            if resend:
                continue
            retries -= 1
            if retries == 0 and may_time_out:
                self.send_id, self.expect_id = INITIAL | SYNC, INITIAL  # debugger not present
                return False

    def receive_packet(self, deadline: float) -> tuple[int, bytes] | str | None:
        """The next host data packet with the expected id; NEEDS_RESEND after RESEND/RESET."""
        while True:
            unit = self._unit(deadline)
            if unit is None:
                return None
            if unit[0] == "bad":
                self.write(control(RESEND))
            elif unit[0] == "control":
                if unit[1] == RESET:
                    self._reset()
                    return NEEDS_RESEND
                if unit[1] == RESEND:
                    return NEEDS_RESEND
            else:
                _, packet_type, packet_id, payload = unit
                if packet_id & ~1 != INITIAL:
                    self.write(control(RESEND))
                    continue
                self.write(control(ACK, packet_id))
                if packet_id != self.expect_id:
                    continue  # a valid id, but not the expected one: ACKed and dropped (§1.5)
                self.expect_id ^= 1
                return packet_type, payload

    # -- KdpSendWaitContinue ------------------------------------------------------------------------

    def stop(self, payload: bytes, *, may_time_out: bool = False) -> Continued | None:
        """Report a state change and serve requests until continued; None if nobody continues."""
        self.context_sent = False
        deadline = time.monotonic() + self.stop_timeout
        while True:
            if not self.send_packet(STATE_CHANGE, payload, may_time_out=may_time_out):
                return None
            while True:
                got = self.receive_packet(deadline)
                if got is None:
                    return None
                if got == NEEDS_RESEND:
                    break
                assert isinstance(got, tuple)
                if got[0] == MANIPULATE:
                    result = self._serve(got[1])
                    if result is not None:
                        return result

    def _serve(self, request: bytes) -> Continued | None:
        api, _level, cpu, _status = struct.unpack_from("<IHHI", request)
        self.requests.append(api)
        reply = bytearray(struct.pack("<IHHI", api, 0, cpu, 0) + bytes(0x38 - 12))
        data = b""
        if api in (0x3136, 0x313C):
            status = struct.unpack_from("<I", request, 0x10)[0]
            dr7 = struct.unpack_from("<Q", request, 0x18)[0] if api == 0x313C else None
            rip, rcx = (
                struct.unpack_from("<Q", self.context, 0xF8)[0],
                struct.unpack_from("<Q", self.context, 0x80)[0],
            )
            return Continued(api, status, dr7, rip, rcx)
        if api == 0x3132:  # GetContext
            data = bytes(self.context)
            self.context_sent = True
        elif api == 0x3133:  # SetContext
            flags, context = struct.unpack_from("<I", request, 0x10)[0], request[0x38:]
            if self.reject_set_context or not self.context_sent or len(context) != 0x4D0:
                struct.pack_into("<I", reply, 8, 0xC0000001)
            elif flags & CONTROL_FLAGS == CONTROL_FLAGS:
                self.context[:] = context
        elif api == 0x3160:  # SetContextEx: staged until offset + count reaches the total
            offset, count, total = struct.unpack_from("<III", request, 0x10)
            self.staged[offset] = request[0x38 : 0x38 + count]
            if offset + count == total and self.context_sent:
                for where, chunk in self.staged.items():
                    self.context[where : where + len(chunk)] = chunk
                self.staged.clear()
        elif api == 0x3146:  # GetVersion
            struct.pack_into("<HHBBHH", reply, 0x10, 0xF, 22631, 6, 2, 7, 0x8664)
            struct.pack_into("<Q", reply, 0x30, self.debugger_data_list)
        elif api == 0x3130:  # ReadVirtualMemory
            address, count = struct.unpack_from("<QI", request, 0x10)
            if address in self.memory:
                data = self.memory[address][:count]
                struct.pack_into("<I", reply, 0x1C, len(data))
            else:
                struct.pack_into("<I", reply, 8, 0xC0000005)
        else:
            struct.pack_into("<I", reply, 8, 0xC0000001)
        self.send_packet(MANIPULATE, bytes(reply) + data, may_time_out=False)
        return None

    # -- what a kernel does ---------------------------------------------------------------------------

    def print(self, text: bytes) -> bool:
        return self.send_packet(DEBUG_IO, print_payload(text), may_time_out=True)

    def load(self, path: bytes, base: int, size: int, *, unload: bool = False) -> Continued | None:
        return self.stop(load_change(path, base, size, unload=unload), may_time_out=True)

    def prompt(self, text: bytes, max_length: int) -> bytes | None:
        payload = struct.pack("<IHHII", 0x3231, 6, 0, len(text), max_length) + text
        deadline = time.monotonic() + self.stop_timeout
        while self.send_packet(DEBUG_IO, payload, may_time_out=False):
            got = self.receive_packet(deadline)
            if isinstance(got, tuple) and got[0] == DEBUG_IO:
                length = struct.unpack_from("<I", got[1], 0x0C)[0]
                return got[1][16 : 16 + min(length, max_length)]
            if got is None:
                return None
        return None

    def create_file(self, name: str) -> int | None:
        request = bytearray(64)
        struct.pack_into("<IIIIIII", request, 0, 0x3430, 0, 0x80000000, 0x80, 1, 1, 0)
        payload = bytes(request) + (name + "\0").encode("utf-16-le")
        deadline = time.monotonic() + self.stop_timeout
        while self.send_packet(FILE_IO, payload, may_time_out=True):
            got = self.receive_packet(deadline)
            if isinstance(got, tuple) and got[0] == FILE_IO:
                return int(struct.unpack_from("<I", got[1], 4)[0])
            if got is None:
                return None
        return None

    def set_registers(self, rip: int, rcx: int) -> None:
        struct.pack_into("<I", self.context, 0x30, 0x0010001F)
        struct.pack_into("<Q", self.context, 0x80, rcx)
        struct.pack_into("<Q", self.context, 0xF8, rip)

    def breakpoint(self, pc: int, *, rcx: int = 0, stream: bytes = b"\xcc\xc3") -> Continued | None:
        """A hard-coded int 3 at ``pc``: the kernel rewound RIP to it (§5.5)."""
        self.set_registers(pc, rcx)
        return self.stop(exception_change(0x80000003, pc, stream))

    def bugcheck(
        self, code: int, params: tuple[int, int, int, int], driver: bytes | None
    ) -> Continued | None:
        """KeBugCheck2 with a host attached (§5.7): refresh, banner, driver, then the first break."""
        self.print(b"KDTARGET: Refreshing KD connection\n")
        banner = b"\n*** Fatal System Error: 0x%08x\n" % code + b" " * 23
        banner += b"(0x%016X,0x%016X,0x%016X,0x%016X)\n\n" % params
        self.print(banner)
        if driver is not None:
            self.print(b"Driver at fault: " + driver + b".\n")
        return self.breakpoint(KERNEL_BREAK, rcx=3)

    def reboot(self) -> None:
        """Unload everything (§6.1), then come back up with fresh SYNC ids, like a new boot."""
        self.load(b"", UNLOAD_ALL, 0, unload=True)
        self.send_id, self.expect_id = INITIAL | SYNC, INITIAL

    def run_until_breakin(self, timeout: float) -> bool:
        """A running kernel: read the port one byte at a time, keep nothing but 0x62 (§3.3, §3.5)."""
        deadline = time.monotonic() + timeout
        while (byte := self._take(1, deadline)) is not None:
            if byte == b"b":
                return True
        return False


# -- harness -----------------------------------------------------------------------------------------


@dataclass
class Session:
    events: list[KdEvent]
    target: ScriptedTarget
    result: Any
    raw: bytes

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def lines(self) -> list[str]:
        return [e.text for e in self.of(KdPrint)]


def run_session(
    script: Callable[[ScriptedTarget], Any],
    *,
    options: KdOptions = FAST,
    attach: bool = False,
    target_setup: Callable[[ScriptedTarget], None] | None = None,
    middle: Callable[[socket.socket, socket.socket], list[threading.Thread]] | None = None,
    timeout: float = 60.0,
) -> Session:
    """Play ``script`` as the target against a KdHost until the target hangs up."""
    host_end, target_end = socket.socketpair()
    threads: list[threading.Thread] = []
    if middle is not None:  # put a proxy between the two ends: middle(target side, host side)
        target_side, proxy_end = socket.socketpair()
        threads = middle(proxy_end, target_end)
        target_end = target_side
    target = ScriptedTarget(target_end)
    if target_setup is not None:
        target_setup(target)
    outcome: dict[str, Any] = {}

    def play() -> None:
        try:
            outcome["result"] = script(target)
        except TargetClosed:
            outcome["result"] = None
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            target_end.shutdown(socket.SHUT_RDWR)
            target_end.close()

    raw = io.BytesIO()
    player = threading.Thread(target=play, name="kd-target")

    async def host() -> list[KdEvent]:
        reader, writer = await asyncio.open_unix_connection(sock=host_end)
        collected: list[KdEvent] = []
        async with KdHost(reader, writer, options=options, raw=raw, attach=attach) as kd:
            player.start()
            async for event in kd.events():
                collected.append(event)
        return collected

    try:
        events = asyncio.run(asyncio.wait_for(host(), timeout))
    finally:
        player.join(10)
        for thread in threads:
            thread.join(10)
    assert not player.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return Session(events, target, outcome.get("result"), raw.getvalue())


# -- the boot-to-bugcheck script ------------------------------------------------------------------------

NT, HAL, DRV, AUX = 0xFFFFF80000000000, 0xFFFFF80000800000, 0xFFFFF80001000000, 0xFFFFF80002000000
PARAMS = (0xFFFFF80001001234, 0x2, 0x0, 0xFFFFF80001004321)


def boot_to_bugcheck(t: ScriptedTarget) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    t.write(b'BdsDxe: loading Boot0000 "UEFI QEMU HARDDISK QM00001"\r\n')  # firmware text (§12.2)
    seen["first_id"] = t.send_id
    seen["nt"] = t.load(b"\\SystemRoot\\system32\\ntoskrnl.exe", NT, 0x1000000)
    seen["hal"] = t.load(b"\\SystemRoot\\system32\\hal.dll", HAL, 0x100000)
    t.print(b"KDTARGET: Refreshing KD connection\n")
    t.print(b"mydrv: DriverEntry\n")
    t.print(b"mydrv: part")
    t.print(b"ial line\nsecond\nthird\n")
    t.print(b"")  # zero-length print (§12.4)
    seen["drv"] = t.load(b"\\SystemRoot\\system32\\drivers\\mydrv.sys", DRV, 0x8000)
    seen["aux"] = t.load(b"\\SystemRoot\\system32\\drivers\\aux.sys", AUX, 0x4000)
    seen["aux_unload"] = t.load(b"\\SystemRoot\\system32\\drivers\\aux.sys", AUX, 0x4000, unload=True)
    seen["prompt"] = t.prompt(b"Break, Ignore, terminate Process or terminate Thread (bipt)? ", 8)
    seen["file"] = t.create_file("\\SystemRoot\\system32\\drivers\\mydrv.sys")
    seen["int3"] = t.breakpoint(DRV + 0x1230)
    t.set_registers(DRV + 0x2000, 0)
    seen["av"] = t.stop(exception_change(0xC0000005, DRV + 0x2000, b"\x8b\x00"))
    t.print(b"mydrv: about to crash\n")
    seen["bugcheck"] = t.bugcheck(0xD1, PARAMS, b"mydrv.sys")
    t.reboot()
    seen["reboot_id"] = t.send_id
    seen["nt2"] = t.load(b"\\SystemRoot\\system32\\ntoskrnl.exe", NT + 0x200000, 0x1000000)
    t.print(b"second boot\n")
    t.print(b"no newline at the end")
    return seen


def test_boot_to_bugcheck() -> None:
    options = replace(FAST, prompt_answer="i")
    session = run_session(boot_to_bugcheck, options=options)
    seen, target = session.result, session.target
    assert seen["first_id"] == INITIAL | SYNC and seen["reboot_id"] == INITIAL | SYNC

    # every print, in order, as lines; the partial line is flushed at the end
    banner_params = "(" + ",".join(f"0x{p:016X}" for p in PARAMS) + ")"
    assert session.lines == [
        "KDTARGET: Refreshing KD connection",
        "mydrv: DriverEntry",
        "mydrv: partial line",
        "second",
        "third",
        "Break, Ignore, terminate Process or terminate Thread (bipt)? ",
        "mydrv: about to crash",
        "KDTARGET: Refreshing KD connection",
        "",
        "*** Fatal System Error: 0x000000d1",
        " " * 23 + banner_params,
        "",
        "Driver at fault: mydrv.sys.",
        "second boot",
        "no newline at the end",
    ]
    stamps = [e.time for e in session.of(KdPrint)]
    assert stamps == sorted(stamps)

    # every load-symbols stop was continued with Continue2, DBG_CONTINUE and the report's Dr7 (§5.4)
    for key in ("nt", "hal", "drv", "aux", "aux_unload", "nt2"):
        assert seen[key].api == 0x313C and seen[key].status == 0x00010002 and seen[key].dr7 == 0x400, key
    loads = [(e.module.name, e.module.base, e.unload) for e in session.of(KdModuleLoad)]
    assert loads == [
        ("ntoskrnl.exe", NT, False),
        ("hal.dll", HAL, False),
        ("mydrv.sys", DRV, False),
        ("aux.sys", AUX, False),
        ("aux.sys", AUX, True),
        ("", UNLOAD_ALL, True),
        ("ntoskrnl.exe", NT + 0x200000, False),
    ]

    # the prompt got the configured answer, truncated to what the target allows; FILE_IO was refused
    assert seen["prompt"] == b"i"
    assert seen["file"] == 0xC0000001

    # the hard-coded int 3: GetContext, SetContext with RIP + 1, continue (§5.5)
    assert seen["int3"].rip == DRV + 0x1230 + 1 and seen["int3"].status == 0x00010002
    # another exception goes back to the kernel, untouched
    assert seen["av"].status == 0x80010001 and seen["av"].rip == DRV + 0x2000

    # the bugcheck: banner + break; recorded, then the guest continued past the int 3
    (bugcheck,) = session.of(KdBugcheck)
    assert bugcheck.code == 0xD1 and bugcheck.parameters == PARAMS
    assert bugcheck.driver == "mydrv.sys" and bugcheck.source == "banner"
    assert bugcheck.break_status == 3 and not bugcheck.held
    assert bugcheck.program_counter == KERNEL_BREAK
    assert [m.name for m in bugcheck.modules] == ["ntoskrnl.exe", "hal.dll", "mydrv.sys"]
    assert seen["bugcheck"].rip == KERNEL_BREAK + 1 and seen["bugcheck"].status == 0x00010002
    assert target.requests.count(0x3132) == 2 and target.requests.count(0x3133) == 2

    # no stall, the raw tap has every byte the target sent, and the link counted it all
    assert session.of(KdStalled) == []
    assert session.raw == bytes(target.wire)
    stats = session.events[-1]
    assert isinstance(stats, KdLinkStats)
    assert stats.bytes_received == len(target.wire)
    assert stats.junk_bytes >= len('BdsDxe: loading Boot0000 "UEFI QEMU HARDDISK QM00001"\r\n')
    assert stats.duplicates == 0 and stats.corrupt_frames == 0


def test_lost_ack_gives_a_duplicate_that_is_acked_again_and_delivered_once() -> None:
    def script(t: ScriptedTarget) -> None:
        t.print(b"first\n")
        t.ignore_acks = 2  # the host's ACKs of the next packet are "lost" twice: it comes three times
        t.print(b"twice\n")
        t.print(b"third\n")

    session = run_session(script)
    assert session.lines == ["first", "twice", "third"]
    assert session.events[-1].duplicates == 2  # type: ignore[union-attr]


def test_print_resent_after_a_reset_is_delivered_once() -> None:
    def script(t: ScriptedTarget) -> list[tuple[Any, ...] | None]:
        answers = []
        for unit in (
            frame(DEBUG_IO, INITIAL | SYNC, print_payload(b"once\n")),
            control(RESET),  # the host must answer it (§3.3)
            frame(DEBUG_IO, INITIAL, print_payload(b"once\n")),  # re-sent after the RESET: its ACK was lost
            frame(DEBUG_IO, INITIAL | 1, print_payload(b"next\n")),
        ):
            t.write(unit)
            answers.append(t._unit(time.monotonic() + 2))
        return answers

    session = run_session(script)
    assert session.lines == ["once", "next"]
    assert session.result == [
        ("control", ACK, INITIAL),
        ("control", RESET, 0),
        ("control", ACK, INITIAL),
        ("control", ACK, INITIAL | 1),
    ]


def test_bugcheck_held_when_asked() -> None:
    def script(t: ScriptedTarget) -> Continued | None:
        t.load(b"\\SystemRoot\\system32\\ntoskrnl.exe", NT, 0x1000000)
        t.stop_timeout = 1.5
        return t.bugcheck(
            0x7E, (0xC0000005, 0xFFFFF80001000010, 0xFFFF8000AAAA0000, 0xFFFF8000BBBB0000), None
        )

    options = replace(FAST, hold_on_bugcheck=True)
    session = run_session(script, options=options)
    assert session.result is None  # the target was never continued
    assert session.target.requests == [0x313C, 0x3132]  # continue for the load, then only GetContext
    (bugcheck,) = session.of(KdBugcheck)
    assert bugcheck.held and bugcheck.code == 0x7E and bugcheck.driver is None
    assert bugcheck.parameters[0] == 0xC0000005


def test_a_stalled_target_is_reported_within_its_deadline() -> None:
    def script(t: ScriptedTarget) -> float:
        t.set_registers(DRV, 0)
        t.send_packet(STATE_CHANGE, exception_change(0x80000003, DRV, b"\xcc"), may_time_out=False)
        acked = t.acked_at
        time.sleep(2.0)  # hung: never reads the host's GetContext
        return acked

    session = run_session(script)
    (stall,) = session.of(KdStalled)
    assert "GetContext" in stall.waiting_for
    budget = FAST.ack_timeout * FAST.send_tries
    assert stall.time - session.result <= budget + 0.5


def test_attach_to_a_running_target() -> None:
    def setup(t: ScriptedTarget) -> None:
        t.send_id = t.expect_id = INITIAL | 1  # mid-session ids the host cannot know

    def script(t: ScriptedTarget) -> Continued | None:
        if not t.run_until_breakin(5.0):
            return None
        stop = t.breakpoint(0xFFFFF80012340000, rcx=1)  # DbgBreakPointWithStatus(DBG_STATUS_CONTROL_C)
        t.print(b"running again\n")
        return stop

    session = run_session(script, attach=True, target_setup=setup)
    assert session.result is not None and session.result.rip == 0xFFFFF80012340001
    assert session.target.resets == 1  # the host reset the ids before its first request (§3.7b)
    assert session.lines == ["running again"]
    stats = session.events[-1]
    assert isinstance(stats, KdLinkStats) and stats.breakins_sent == 1


@pytest.mark.parametrize("encoded", [False, True])
def test_bugcheck_without_banner_reads_kibugcheckdata(encoded: bool) -> None:
    ddl, block, data = 0xFFFFF80000200000, 0xFFFFF80000300000, 0xFFFFF80000400000

    def setup(t: ScriptedTarget) -> None:
        t.debugger_data_list = ddl
        kdbg = bytearray(0x90)
        kdbg[0x10:0x14] = b"\x91\x22\x03\x77" if encoded else b"KDBG"
        struct.pack_into("<Q", kdbg, 0x88, data)
        t.memory = {
            ddl: struct.pack("<Q", block),
            block: bytes(kdbg),
            data: struct.pack("<5Q", 0x133, 1, 0x1E00, 0xFFFFF80000500000, 0),
        }

    session = run_session(lambda t: t.breakpoint(KERNEL_BREAK, rcx=3), target_setup=setup)
    (bugcheck,) = session.of(KdBugcheck)
    if encoded:
        assert bugcheck.source == "break-status" and bugcheck.code is None and bugcheck.parameters == ()
    else:
        assert bugcheck.source == "kdbg" and bugcheck.code == 0x133
        assert bugcheck.parameters == (1, 0x1E00, 0xFFFFF80000500000, 0)
    assert session.result.rip == KERNEL_BREAK + 1


def test_set_context_refused_falls_back_to_set_context_ex() -> None:
    def setup(t: ScriptedTarget) -> None:
        t.reject_set_context = True

    session = run_session(lambda t: t.breakpoint(DRV + 0x10), target_setup=setup)
    assert session.target.requests == [0x3132, 0x3133, 0x3160, 0x313C]
    assert session.result.rip == DRV + 0x11


# -- a line that corrupts bytes --------------------------------------------------------------------------


class CorruptingProxy:
    """Relays both ways and damages traffic; notes which target prints went through intact.

    Target to host, it cuts the (clean) stream into packets and damages some: a flipped byte, a
    truncation, or junk in front. Host to target, it flips a byte in some chunks.
    """

    def __init__(self, seed: int, packet_rate: float, chunk_rate: float) -> None:
        self.rng = random.Random(seed)
        self.packet_rate = packet_rate
        self.chunk_rate = chunk_rate
        self.intact: list[bytes] = []
        self.damaged = 0

    def start(self, target: socket.socket, host: socket.socket) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._to_host, args=(target, host), name="proxy-t2h"),
            threading.Thread(target=self._to_target, args=(host, target), name="proxy-h2t"),
        ]
        for thread in threads:
            thread.start()
        return threads

    def _to_host(self, source: socket.socket, sink: socket.socket) -> None:
        pending = bytearray()
        while chunk := self._recv(source):
            pending += chunk
            while len(pending) >= 16:
                size = 16 if pending[:4] == b"iiii" else 17 + struct.unpack_from("<H", pending, 6)[0]
                if len(pending) < size:
                    break
                unit, pending = bytes(pending[:size]), pending[size:]
                sink.sendall(self._damage(unit))
        self._hang_up(sink)

    def _damage(self, unit: bytes) -> bytes:
        if self.rng.random() >= self.packet_rate:
            if unit[4] == DEBUG_IO and unit[16:20] == b"\x30\x32\0\0":
                self.intact.append(unit[32:-1])
            return unit
        self.damaged += 1
        how = self.rng.choice(["flip", "truncate", "junk"])
        if how == "flip":
            where = self.rng.randrange(len(unit))
            return unit[:where] + bytes([unit[where] ^ self.rng.randrange(1, 256)]) + unit[where + 1 :]
        if how == "truncate":
            return unit[: self.rng.randrange(len(unit))]
        return bytes(self.rng.choice(b"0i\xaa\x00x") for _ in range(self.rng.randrange(1, 12))) + unit

    def _to_target(self, source: socket.socket, sink: socket.socket) -> None:
        while chunk := self._recv(source):
            if self.rng.random() < self.chunk_rate:
                where = self.rng.randrange(len(chunk))
                chunk = chunk[:where] + bytes([chunk[where] ^ 0x41]) + chunk[where + 1 :]
            with contextlib.suppress(OSError):
                sink.sendall(chunk)
        self._hang_up(sink)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _hang_up(sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_corrupted_line_loses_no_intact_print() -> None:
    proxy = CorruptingProxy(seed=20240501, packet_rate=0.08, chunk_rate=0.04)
    count = 200

    def script(t: ScriptedTarget) -> None:
        t.ack_timeout, t.retries = 0.1, 60
        t.load(b"\\SystemRoot\\system32\\ntoskrnl.exe", NT, 0x1000000)
        for n in range(count):
            t.print(b"line %d\n" % n)
            if n % 40 == 39:
                t.load(b"\\SystemRoot\\system32\\drivers\\d%d.sys" % n, DRV + n * 0x10000, 0x1000)

    options = replace(FAST, ack_timeout=0.15, send_tries=10)
    session = run_session(script, options=options, middle=proxy.start)
    assert proxy.damaged > 10  # the line really was bad
    received = session.lines
    numbers = [int(line.split()[1]) for line in received if line.startswith("line ")]
    assert numbers == sorted(set(numbers)), "a print was duplicated or reordered"
    intact = {bytes(text).rstrip(b"\n").decode() for text in proxy.intact}
    assert intact <= set(received), f"lost intact prints: {sorted(intact - set(received))}"
    assert len(numbers) >= count * 0.95
    stats = session.events[-1]
    assert isinstance(stats, KdLinkStats) and stats.corrupt_frames + stats.junk_bytes > 0


# -- run_kd, the live capture behind `vmtest kd` --------------------------------------------------------


def test_run_kd_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "kd.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    played: dict[str, ScriptedTarget] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        target = played["target"] = ScriptedTarget(conn)
        try:
            target.print(b"hello from the guest\n")
            target.print(b"\x1b[31mcolour\n")
            target.bugcheck(0xD1, PARAMS, b"mydrv.sys")
        finally:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    thread = threading.Thread(target=serve, name="kd-target")
    thread.start()
    out, raw = io.StringIO(), io.BytesIO()
    try:
        code = asyncio.run(
            asyncio.wait_for(run_kd(str(path), out=out, raw=raw, attach=False, hold_on_bugcheck=False), 30)
        )
    finally:
        thread.join(10)
        listener.close()
    assert code == 1  # the guest bugchecked
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z hello from the guest", lines[0])
    assert lines[1].endswith(" \\x1b[31mcolour")  # guest control characters made printable
    assert any(
        "*** bugcheck 0x000000D1 (0xFFFFF80001001234," in line and "in mydrv.sys" in line for line in lines
    )
    assert lines[-2].startswith("--- kd: 8 lines, 1 bugcheck; link: ")
    assert lines[-1].startswith("*** bugcheck 1: 0x000000D1")
    assert raw.getvalue() == bytes(played["target"].wire)


def test_run_kd_reports_an_unreachable_socket(tmp_path: Path) -> None:
    with pytest.raises(KdConnectError, match="cannot connect"):
        asyncio.run(
            run_kd(
                str(tmp_path / "absent.sock"),
                out=io.StringIO(),
                raw=None,
                attach=False,
                hold_on_bugcheck=False,
            )
        )
