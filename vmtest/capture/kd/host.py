"""``KdHost``: stands in for WinDbg on a Windows guest's KD serial port, to capture and keep it running.

It follows the spec's host algorithm (§9): ACK everything (the link layer), print every DbgPrint as
timestamped lines, answer DbgPrompt and FILE_IO so the guest never blocks, continue every load-symbols
stop (recording the module), step past hard-coded ``int 3`` breaks (GetContext, RIP + 1, SetContext,
continue, §5.5), and turn the "*** Fatal System Error" banner plus its breakpoint stop into a
:class:`~vmtest.capture.kd.events.KdBugcheck` (§5.7). Nothing it waits for is waited on forever: a
target that stops answering is reported as :class:`~vmtest.capture.kd.events.KdStalled`.

Usage::

    async with KdHost(reader, writer, raw=raw_file) as host:
        async for event in host.events():
            ...

The events end when the stream ends (QEMU closed the socket) or the host is closed.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any, BinaryIO

from vmtest.capture.kd.bugcheck import Banner, BannerWatcher
from vmtest.capture.kd.channel import Channel
from vmtest.capture.kd.constants import (
    AMD64_CONTEXT_SIZE,
    BREAKPOINT_OPCODE,
    CONTEXT_RCX_OFFSET,
    CONTEXT_RIP_OFFSET,
    DBG_CONTINUE,
    DBG_EXCEPTION_NOT_HANDLED,
    DBG_STATUS_BUGCHECK_FIRST,
    DBG_STATUS_BUGCHECK_SECOND,
    KDBG_BLOCK_READ_SIZE,
    KDBG_KI_BUGCHECK_DATA_OFFSET,
    KDBG_OWNER_TAG,
    KDBG_OWNER_TAG_OFFSET,
    KI_BUGCHECK_DATA_SIZE,
    PACKET_TYPE_KD_DEBUG_IO,
    PACKET_TYPE_KD_FILE_IO,
    PACKET_TYPE_KD_STATE_CHANGE64,
    PACKET_TYPE_KD_STATE_MANIPULATE,
    STATUS_BREAKPOINT,
    STATUS_SUCCESS,
    UNLOAD_ALL_BASE,
    DbgKdExceptionStateChange,
    DbgKdGetContextApi,
    DbgKdGetStringApi,
    DbgKdGetVersionApi,
    DbgKdLoadSymbolsStateChange,
    DbgKdPrintStringApi,
    DbgKdReadVirtualMemoryApi,
    DbgKdSetContextApi,
    DbgKdSetContextExApi,
)
from vmtest.capture.kd.events import (
    BugcheckSource,
    KdBugcheck,
    KdEvent,
    KdLinkStats,
    KdModule,
    KdModuleLoad,
    KdPrint,
    KdStalled,
)
from vmtest.capture.kd.framing import DataPacket
from vmtest.capture.kd.lines import LineAssembler
from vmtest.capture.kd.link import KdLink, SendOutcome
from vmtest.capture.kd.modules import ModuleTable, module_name
from vmtest.capture.kd.options import KdOptions
from vmtest.capture.kd.packets import (
    DebugIo,
    ExceptionRecord,
    LoadSymbols,
    ManipulateReply,
    StateChange,
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
    context_with_field,
    parse_debug_io,
    parse_file_io,
    parse_manipulate,
    parse_state_change,
    parse_version,
)

__all__ = ["KdHost"]

logger = logging.getLogger(__name__)


class _StopInterrupted(Exception):
    """Serving a stop cannot go on; ``packet`` is the stop the target sent instead, if any."""

    def __init__(self, packet: DataPacket | None) -> None:
        super().__init__()
        self.packet = packet


class KdHost:
    """The host end of a KD serial link, over an asyncio stream pair (unix socket, TCP, socket pair).

    ``raw`` receives every byte read, before any parsing. With ``attach``, the host breaks into a
    target that is already running (§3.5, §3.7b); otherwise it stays silent until the target speaks
    (§3.7a). ``options`` holds the timeouts and policies.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        options: KdOptions | None = None,
        raw: BinaryIO | None = None,
        attach: bool = False,
    ) -> None:
        self.options = options or KdOptions()
        self._inbound: asyncio.Queue[DataPacket | None] = asyncio.Queue(self.options.queue_depth)
        self._link = KdLink(reader, writer, options=self.options, deliver=self._inbound.put, raw=raw)
        self._events: Channel[KdEvent] = Channel(self.options.queue_depth)
        self._lines = LineAssembler(self.options.encoding, self.options.max_line_chars)
        self._banner = BannerWatcher()
        self._modules = ModuleTable()
        self._attach = attach
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: Exception | None = None
        self._ended = False  # the link delivered the end of the stream
        self._finished = False  # the final events are out
        self._last_print = 0.0
        # The stop being served: its payload (a re-sent stop is recognised by it, §12.8), the banner
        # it took, whether its event was emitted, and whether the host holds it.
        self._stop_payload: bytes | None = None
        self._stop_banner: Banner | None = None
        self._stop_reported = False
        self._held = False

    @property
    def modules(self) -> tuple[KdModule, ...]:
        """The driver images loaded now, as the target reported them."""
        return self._modules.snapshot()

    @property
    def stats(self) -> KdLinkStats:
        """The link counters now."""
        return self._link.stats()

    async def start(self) -> None:
        """Start reading and serving the target."""
        if self._tasks:
            raise RuntimeError("KdHost already started")
        self._tasks = [
            asyncio.create_task(self._guard(self._link.run()), name="kd-link"),
            asyncio.create_task(self._guard(self._dispatch()), name="kd-host"),
        ]
        if self.options.reset_on_connect:
            await self._link.send_reset()
        if self._attach:
            self._tasks.append(asyncio.create_task(self._guard(self._break_in()), name="kd-attach"))

    async def close(self) -> None:
        """Stop, close the stream, and emit the partial line and the link statistics."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._link.close()
        self._finish()

    async def __aenter__(self) -> KdHost:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def events(self) -> AsyncIterator[KdEvent]:
        """Every event in order, until the stream ends or the host is closed.

        The host waits for the caller to take events (a bounded queue), and the target waits for the
        host, so keep reading. An internal error ends the iteration by raising it.
        """
        while (event := await self._events.get()) is not None:
            yield event
        if self._failure is not None:
            raise self._failure

    # -- tasks --------------------------------------------------------------------------------------

    async def _guard(self, job: Coroutine[Any, Any, None]) -> None:
        try:
            await job
        except Exception as exc:
            logger.exception("KD host failed")
            self._failure = self._failure or exc
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()
            self._finish()

    async def _dispatch(self) -> None:
        while (packet := await self._next_packet(None)) is not None:
            await self._handle(packet)
        self._finish()

    async def _break_in(self) -> None:
        """Break into a running target (§3.5, §9.7): one byte, then wait; never a burst of them."""
        deadline = time.monotonic() + self.options.attach_timeout
        attempt = 0
        while not self._link.heard.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._stalled("an answer to the break-in")
                return
            if attempt % 2 and self.options.attach_reset:
                await self._link.send_reset()  # for a target halted in a stop the host never saw (§3.7c)
            else:
                await self._link.send_breakin()
            attempt += 1
            try:
                await asyncio.wait_for(self._link.heard.wait(), min(self.options.breakin_interval, remaining))
            except asyncio.TimeoutError:
                continue

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        line = self._lines.flush()
        if line is not None:
            self._events.put_final(KdPrint(*line))
        self._events.put_final(self._link.stats())
        self._events.close()

    # -- receiving ----------------------------------------------------------------------------------

    async def _next_packet(self, timeout: float | None) -> DataPacket | None:
        """The next new target packet; ``None`` at the end of the stream or after ``timeout``.

        While it waits, a partial line is emitted once prints have been idle for ``line_flush_after``.
        """
        if self._ended:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            flush_at = None
            if self._lines.partial_since is not None:
                flush_at = self._last_print + self.options.line_flush_after
                until_flush = max(flush_at - time.monotonic(), 0.0)
                wait = until_flush if wait is None else min(wait, until_flush)
            try:
                if wait is None:
                    packet = await self._inbound.get()
                else:
                    packet = await asyncio.wait_for(self._inbound.get(), wait)
            except asyncio.TimeoutError:
                now = time.monotonic()
                if flush_at is not None and now >= flush_at:
                    await self._flush_partial()
                if deadline is not None and now >= deadline:
                    return None
                continue
            if packet is None:
                self._ended = True
            return packet

    async def _handle(self, packet: DataPacket) -> None:
        if packet.packet_type == PACKET_TYPE_KD_DEBUG_IO:
            await self._on_debug_io(packet)
        elif packet.packet_type == PACKET_TYPE_KD_STATE_CHANGE64:
            await self._serve_stop(packet)
        elif packet.packet_type == PACKET_TYPE_KD_FILE_IO:
            await self._on_file_io(packet)
        else:  # trace I/O, control requests, late manipulate replies: the ACK was all they needed (§6.3)
            logger.debug("type-%d packet acknowledged and ignored", packet.packet_type)

    # -- prints, prompts, files ---------------------------------------------------------------------

    async def _on_debug_io(self, packet: DataPacket) -> None:
        request = parse_debug_io(packet.payload)
        if request is None:
            logger.warning("DEBUG_IO packet of %d bytes is too short", len(packet.payload))
        elif request.api == DbgKdPrintStringApi:
            await self._print(request.text)
        elif request.api == DbgKdGetStringApi:
            await self._answer_prompt(request)
        else:
            logger.warning("DEBUG_IO API 0x%04x ignored", request.api)

    async def _print(self, data: bytes) -> None:
        self._last_print = time.monotonic()
        for since, text in self._lines.feed(data, time.time()):
            await self._emit_line(since, text)

    async def _emit_line(self, since: float, text: str) -> None:
        self._banner.feed(text)
        await self._events.put(KdPrint(since, text))

    async def _flush_partial(self) -> None:
        line = self._lines.flush()
        if line is not None:
            await self._emit_line(*line)

    async def _answer_prompt(self, request: DebugIo) -> None:
        """Show the prompt as a line of its own, then answer it so the guest does not block (§4.5)."""
        await self._print(request.text)
        await self._flush_partial()  # the answer ends the prompt's line, as Enter would
        prompt = request.text.decode(self.options.encoding, errors="replace")
        answer = self.options.answer_prompt(prompt)
        logger.info("DbgPrompt %r answered %r", prompt, answer)
        reply = build_prompt_reply(request, answer.encode(self.options.encoding, errors="replace"))
        if await self._link.send(PACKET_TYPE_KD_DEBUG_IO, reply) is SendOutcome.LOST:
            await self._lost("a DbgPrompt answer")

    async def _on_file_io(self, packet: DataPacket) -> None:
        """Refuse every file request (§6.3): the target then uses its own copy of the file."""
        request = parse_file_io(packet.payload)
        if request is None:
            logger.warning("FILE_IO packet of %d bytes is too short", len(packet.payload))
            return
        logger.info("FILE_IO 0x%04x %r refused", request.api, request.name)
        reply = build_file_io_reply(request.api, self.options.file_io_status)
        if await self._link.send(PACKET_TYPE_KD_FILE_IO, reply) is SendOutcome.LOST:
            await self._lost("a FILE_IO reply")

    # -- stops --------------------------------------------------------------------------------------

    async def _serve_stop(self, packet: DataPacket) -> None:
        stop: DataPacket | None = packet
        while stop is not None:
            try:
                await self._serve_stop_once(stop)
                stop = None
            except _StopInterrupted as interrupted:
                stop = interrupted.packet

    async def _serve_stop_once(self, packet: DataPacket) -> None:
        change = parse_state_change(packet.payload)
        if change is None:
            logger.warning("state change of %d bytes is too short", len(packet.payload))
            return
        if packet.payload != self._stop_payload:
            self._stop_payload = packet.payload
            self._stop_reported = self._held = False
            breakpoint_stop = change.exception is not None and change.exception.code == STATUS_BREAKPOINT
            self._stop_banner = self._banner.take() if breakpoint_stop else None
        elif self._held:
            logger.debug("the held stop was sent again")
            return
        else:
            logger.debug("the same stop was sent again: serving it again")
        if not self._link.in_step:
            await self._realign()
            return
        if change.kind == DbgKdLoadSymbolsStateChange and change.load_symbols is not None:
            if not self._stop_reported:
                self._stop_reported = True
                await self._record_module(change.load_symbols)
            await self._continue(change, DBG_CONTINUE)
        elif change.kind == DbgKdExceptionStateChange and change.exception is not None:
            await self._serve_exception(change, change.exception)
        else:  # command string (§5.6) and anything newer: just continue
            await self._continue(change, DBG_CONTINUE)

    async def _realign(self) -> None:
        """RESET a stopped target whose expected id the host does not know (§3.3, §3.7b).

        The target answers and re-sends the stop with fresh ids; the main loop serves it as the same stop.
        """
        logger.info("packet ids unknown: sending RESET to the stopped target")
        if not await self._link.reset():
            await self._stalled("a RESET answer from the stopped target")

    async def _record_module(self, load: LoadSymbols) -> None:
        path = load.path.decode(self.options.encoding, errors="replace")
        module = KdModule(module_name(path), path, load.base, load.size, load.checksum)
        if load.unload:
            self._modules.unload(load.base)
        else:
            self._modules.load(module)
        what = "all" if load.base == UNLOAD_ALL_BASE else f"{module.name} at 0x{load.base:x}"
        logger.debug("%s %s", "unload" if load.unload else "load", what)
        await self._events.put(KdModuleLoad(time.time(), module, load.unload))

    async def _serve_exception(self, change: StateChange, exception: ExceptionRecord) -> None:
        """§5.5's decision rule, with the bugcheck break of §5.7."""
        code = exception.code
        if code != STATUS_BREAKPOINT or change.control.instruction_stream[:1] != bytes([BREAKPOINT_OPCODE]):
            # Not a hard-coded int 3: a stale debugger breakpoint continues in place, any other
            # exception goes back to the kernel's own handling.
            if self._stop_banner is not None and await self._report_bugcheck(change, None):
                return
            await self._continue(
                change, DBG_CONTINUE if code == STATUS_BREAKPOINT else DBG_EXCEPTION_NOT_HANDLED
            )
            return
        reply = await self._request(
            change, build_get_context(change.processor), DbgKdGetContextApi, "GetContext"
        )
        context = reply.data[:AMD64_CONTEXT_SIZE]
        if reply.status != STATUS_SUCCESS or len(context) != AMD64_CONTEXT_SIZE:
            logger.warning("GetContext failed (0x%08x): cannot step past the int 3", reply.status)
            await self._continue(change, DBG_CONTINUE)
            return
        status = context_field(context, CONTEXT_RCX_OFFSET)
        if status == DBG_STATUS_BUGCHECK_SECOND and self._stop_banner is None:
            # Windows without auto-reboot breaks like this forever (§5.7 step 5, §9.8): hold it.
            logger.warning("second bugcheck break: the guest is left stopped")
            self._held = True
            return
        if (
            self._stop_banner is not None or status == DBG_STATUS_BUGCHECK_FIRST
        ) and await self._report_bugcheck(change, status):
            return
        await self._skip_breakpoint(change, context)
        await self._continue(change, DBG_CONTINUE)

    async def _report_bugcheck(self, change: StateChange, status: int | None) -> bool:
        """Emit the bugcheck of this stop, once; returns True when the guest is to be held here."""
        if not self._stop_reported:
            banner = self._stop_banner
            driver = None
            source: BugcheckSource
            if banner is not None:
                code, parameters, driver, source = banner.code, banner.parameters, banner.driver, "banner"
            elif self.options.read_bugcheck_data and (data := await self._read_bugcheck_data(change)):
                code, parameters, source = data[0], data[1:], "kdbg"
            else:
                code, parameters, source = None, (), "break-status"
            event = KdBugcheck(
                time=time.time(),
                code=code,
                parameters=parameters,
                driver=driver,
                modules=self._modules.snapshot(),
                processor=change.processor,
                thread=change.thread,
                program_counter=change.program_counter,
                break_status=status,
                source=source,
                held=self.options.hold_on_bugcheck,
            )
            self._stop_reported = True
            logger.warning("bugcheck %s", event.summary)
            await self._events.put(event)
        self._held = self.options.hold_on_bugcheck
        return self._held

    async def _read_bugcheck_data(self, change: StateChange) -> tuple[int, ...] | None:
        """KiBugCheckData through GetVersion and KDDEBUGGER_DATA64 (§5.7B); None if any step fails."""
        reply = await self._request(
            change, build_get_version(change.processor), DbgKdGetVersionApi, "GetVersion"
        )
        if reply.status != STATUS_SUCCESS:
            return None
        head = await self._read_memory(change, parse_version(reply).debugger_data_list, 8)
        if head is None:
            return None
        block = await self._read_memory(change, int.from_bytes(head, "little"), KDBG_BLOCK_READ_SIZE)
        tag = slice(KDBG_OWNER_TAG_OFFSET, KDBG_OWNER_TAG_OFFSET + len(KDBG_OWNER_TAG))
        if block is None or block[tag] != KDBG_OWNER_TAG:
            logger.info("KDDEBUGGER_DATA64 unreadable or encoded: bugcheck code unknown")
            return None
        address = int.from_bytes(block[KDBG_KI_BUGCHECK_DATA_OFFSET:], "little")
        data = await self._read_memory(change, address, KI_BUGCHECK_DATA_SIZE)
        if data is None:
            return None
        code, *parameters = struct.unpack("<5Q", data)
        return (code & 0xFFFFFFFF, *parameters)

    async def _read_memory(self, change: StateChange, address: int, count: int) -> bytes | None:
        payload = build_read_virtual_memory(change.processor, address, count)
        reply = await self._request(change, payload, DbgKdReadVirtualMemoryApi, "ReadVirtualMemory")
        data = reply.data[:count]
        return data if reply.status == STATUS_SUCCESS and len(data) == count else None

    async def _skip_breakpoint(self, change: StateChange, context: bytes) -> None:
        """RIP + 1 past the int 3 the kernel rewound to (§5.5), with SetContext or one SetContextEx."""
        rip = context_field(context, CONTEXT_RIP_OFFSET)
        if rip != change.program_counter:
            logger.warning("RIP 0x%x is not the stop's PC 0x%x: left in place", rip, change.program_counter)
            return
        moved = context_with_field(context, CONTEXT_RIP_OFFSET, rip + 1)
        cpu = change.processor
        reply = await self._request(change, build_set_context(cpu, moved), DbgKdSetContextApi, "SetContext")
        if reply.status == STATUS_SUCCESS:
            return
        if self.options.set_context_ex_fallback:
            logger.info("SetContext refused (0x%08x): trying SetContextEx", reply.status)
            payload = build_set_context_ex(cpu, moved)
            reply = await self._request(change, payload, DbgKdSetContextExApi, "SetContextEx")
        if reply.status != STATUS_SUCCESS:
            logger.warning("could not move RIP past the int 3 (0x%08x): it will break again", reply.status)

    async def _continue(self, change: StateChange, status: int) -> None:
        if self.options.continue_api == "continue2":
            payload = build_continue2(change.processor, status, change.control.dr7)
        else:
            payload = build_continue(change.processor, status)
        outcome = await self._link.send(PACKET_TYPE_KD_STATE_MANIPULATE, payload)
        if outcome is SendOutcome.DELIVERED:
            self._stop_payload = None
        elif outcome is SendOutcome.LOST:
            await self._lost("a continue")

    async def _request(self, change: StateChange, payload: bytes, api: int, what: str) -> ManipulateReply:
        """One manipulate request and its reply; raises :class:`_StopInterrupted` when none comes."""
        outcome = await self._link.send(PACKET_TYPE_KD_STATE_MANIPULATE, payload)
        if outcome is SendOutcome.DELIVERED:
            return await self._await_reply(api, f"the reply to {what}")
        if outcome is SendOutcome.LOST:
            await self._lost(what)
        raise _StopInterrupted(None)

    async def _await_reply(self, api: int, what: str) -> ManipulateReply:
        """The manipulate reply for ``api``, serving other packets meanwhile.

        A state change instead means the target re-sent its stop (after a RESEND or RESET, §3.3,
        §12.8): serving starts again from it. No reply in time is a stall; a RESET then makes a
        still-stopped target re-send the stop, which the main loop serves.
        """
        deadline = time.monotonic() + self.options.reply_timeout
        while True:
            packet = await self._next_packet(max(deadline - time.monotonic(), 0.0))
            if packet is None:
                if not self._ended:
                    await self._stalled(what)
                    await self._link.send_reset()
                raise _StopInterrupted(None)
            if packet.packet_type == PACKET_TYPE_KD_STATE_CHANGE64:
                raise _StopInterrupted(packet)
            if packet.packet_type == PACKET_TYPE_KD_STATE_MANIPULATE:
                reply = parse_manipulate(packet.payload)
                if reply is not None and reply.api == api:
                    return reply
                logger.debug("stray manipulate reply ignored")
                continue
            await self._handle(packet)

    async def _lost(self, what: str) -> None:
        """No ACK for a host packet after every try: report the stall, then RESET.

        A target still waiting re-sends its request (stop, prompt, file) with fresh ids and is served
        again; a running target drops the RESET (§3.3).
        """
        await self._stalled(f"the ACK of {what}")
        await self._link.send_reset()

    async def _stalled(self, waiting_for: str) -> None:
        silent = time.monotonic() - self._link.last_rx
        logger.warning("KD target stalled: no %s (silent for %.1f s)", waiting_for, silent)
        await self._events.put(KdStalled(time.time(), waiting_for, silent))
