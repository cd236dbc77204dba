"""The KD host's tunables: timeouts, policies, and every guess the spec marks unconfirmed ([U]/[I])."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from vmtest.capture.kd.constants import STATUS_UNSUCCESSFUL

__all__ = ["ContinueApi", "KdOptions"]

ContinueApi = Literal["continue", "continue2"]
"""How the host resumes a stop: ``DbgKdContinueApi`` or ``DbgKdContinueApi2`` (§5.4)."""


@dataclass(frozen=True)
class KdOptions:
    """How a :class:`~vmtest.capture.kd.host.KdHost` behaves; the defaults follow the spec.

    Timing. The target waits about a second per byte and retries a packet about 5-20 times (§3.6,
    [U] for Windows 10/11), so replies must come well inside a second; the host's own waits are:

    * ``ack_timeout``: retransmit a host packet when its ACK has not come after this long (§9.5: 1-2 s).
    * ``send_tries``: transmissions of one host packet before the target is reported stalled.
    * ``reply_timeout``: how long an ACKed request may wait for its reply before a stall is reported.
    * ``frame_timeout``: how long a frame may take to arrive in full once its leader was seen; then the
      decoder gives up on it and rescans its bytes. A corrupted byte count can claim bytes that never
      come, while the target's retransmissions keep the line busy. QEMU does not pace the UART to the
      baud rate (§7.2), so a whole packet arrives at once; on a real 115200-baud line a maximum packet
      takes about 0.35 s.
    * ``line_flush_after``: idle time after which a line without its newline is emitted anyway.

    Attaching to a running target (§3.5, §3.7b, §9.7): one break-in byte every ``breakin_interval``
    seconds, alternating with RESET when ``attach_reset`` (as NTE does), until ``attach_timeout``.

    Policies:

    * ``prompt_answer``: the DbgPrompt answer, or a function of the prompt text (§4.5). Default empty:
      the exact prompts Windows sends are [U] (§11.7).
    * ``hold_on_bugcheck``: leave the guest stopped at the bugcheck break instead of continuing it.
    * ``continue_api``: Continue2 (WinDbg, NTE, PYKD; keeps Dr7) or plain Continue (R2) (§5.4).
    * ``set_context_ex_fallback``: when plain SetContext is refused, write the context with one
      SetContextEx chunk instead; whether current Windows accepts SetContext is [U] (§11.3).
    * ``read_bugcheck_data``: at a bugcheck break with no banner (RCX = 3), read KiBugCheckData through
      GetVersion and KDDEBUGGER_DATA64 (§5.7B); the block may be encoded on Windows 8+ [U] (§11.5).
    * ``file_io_status``: the failure status of FILE_IO replies; NTE's 0xC0000001 or R2's 0xC000000F,
      which Windows prefers is [U] (§6.3).
    * ``reset_on_connect``: send RESET as soon as the stream is open. Off by default: §12.1 found that an
      early RESET can race the target's first packet into a stall, and §3.7a says to stay silent.
    * ``resend_on_corrupt``: ask for a data packet again when its checksum or trailer is wrong (§3.4).
    * ``check_api_family``: refuse (with RESEND) a data packet whose API number cannot belong to its
      packet type, i.e. whose type byte was flipped; the family table is [I] (constants).
    * ``encoding``: how DbgPrint bytes are decoded; Windows formats ANSI text, cp1252 on most systems [I]
      (§4.2). Undecodable bytes become U+FFFD.
    * ``max_line_chars``: a line longer than this is emitted in pieces, so memory stays bounded.
    * ``queue_depth``: packets and events buffered between the reader, the dispatcher and the caller.
    """

    ack_timeout: float = 1.0
    send_tries: int = 5
    reply_timeout: float = 5.0
    frame_timeout: float = 0.5
    line_flush_after: float = 0.5
    breakin_interval: float = 2.0
    attach_reset: bool = True
    attach_timeout: float = 30.0
    prompt_answer: str | Callable[[str], str] = ""
    hold_on_bugcheck: bool = False
    continue_api: ContinueApi = "continue2"
    set_context_ex_fallback: bool = True
    read_bugcheck_data: bool = True
    file_io_status: int = STATUS_UNSUCCESSFUL
    reset_on_connect: bool = False
    resend_on_corrupt: bool = True
    check_api_family: bool = True
    encoding: str = "cp1252"
    max_line_chars: int = 16384
    queue_depth: int = 256

    def answer_prompt(self, prompt: str) -> str:
        """The answer to one DbgPrompt."""
        return self.prompt_answer if isinstance(self.prompt_answer, str) else self.prompt_answer(prompt)
