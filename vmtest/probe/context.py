"""The probe's view of the guest: commands with deadlines, raw outputs kept, decoded as the guest writes.

Windows console programs write in the OEM code page (437 on an English image, 850 on a German or
French one: Microsoft Learn, "Code Page Identifiers" and ``chcp``); the probe learns it first and
decodes every later output with it, and keeps what it decoded in the report.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmtest.errors import GuestCommandFailed, VmtestError
from vmtest.guest.quoting import ShellKind, join_for
from vmtest.guest.transport import CommandResult, ProgressCallback, Transport
from vmtest.probe.model import RawOutput

__all__ = ["COMMAND_TIMEOUT", "ProbeContext", "ProbeSettings"]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
"""Each probe command's deadline, in seconds: every probe is a short, harmless command."""


@dataclass(frozen=True)
class ProbeSettings:
    """What the checks compare the guest with, taken from the configuration and the image."""

    kd: bool = False
    debugview_program: str = ""
    debugview_start: tuple[str, ...] | None = None
    """``debugview.start_command``: None starts DbgViewCLI through WMI, as the capture does."""
    debugview_no_win32: bool = True
    kernel_release: str = ""
    debugview_watch: float = 3.0
    """How long DbgViewCLI must stay alive after the command that started it has returned (seconds)."""


@dataclass
class ProbeContext:
    """A logged-in guest and the settings the probe compares it with."""

    transport: Transport
    shell: ShellKind  # how commands are quoted, as the transport does
    settings: ProbeSettings = field(default_factory=ProbeSettings)
    encoding: str = "utf-8"
    timeout: float = COMMAND_TIMEOUT
    _raw: list[RawOutput] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> RawOutput:
        """Run ``argv`` in the guest; the result (or why it could not run) is kept for the current check."""
        command = join_for(self.shell, argv)
        try:
            result = self.transport.run(argv, timeout=timeout or self.timeout)
        except VmtestError as error:
            raw = RawOutput(command, None, f"could not run: {error}", self.encoding)
        else:
            text = (result.stdout + result.stderr).decode(self.encoding, errors="replace")
            raw = RawOutput(command, result.exit_code, text.replace("\r\n", "\n"), self.encoding)
        self._raw.append(raw)
        log.debug("probe: %s -> %s", command, raw.exit_code)
        return raw

    def use_code_page(self, code_page: int) -> bool:
        """Decode later outputs with Windows code page ``code_page``; False if Python has no codec for it."""
        name = f"cp{code_page}"
        with contextlib.suppress(LookupError):
            codecs.lookup(name)
            self.encoding = name
            return True
        return False

    def recording(self) -> Transport:
        """The guest's transport, with every command run through it kept for the current check."""
        return _Recording(self)

    def take_raw(self) -> tuple[RawOutput, ...]:
        """The outputs kept since the last call (one check's)."""
        raw, self._raw = tuple(self._raw), []
        return raw


class _Recording(Transport):
    """A transport that runs commands through a :class:`ProbeContext` (so their outputs are kept)."""

    def __init__(self, context: ProbeContext) -> None:
        self.context = context

    def wait_ready(self, timeout: float) -> None:
        """The guest is logged in already."""

    def close(self) -> None:
        """The context's transport stays open."""

    def put(
        self, local: Path, remote: str, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        """Copy a file in, through the context's transport."""
        self.context.transport.put(local, remote, timeout=timeout, progress=progress)

    def get(
        self, remote: str, local: Path, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        """Copy a file out, through the context's transport."""
        self.context.transport.get(remote, local, timeout=timeout, progress=progress)

    def run(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` and keep its output in the context."""
        started = time.monotonic()
        raw = self.context.run(argv, timeout=timeout)
        if raw.exit_code is None:
            raise GuestCommandFailed(raw.output)
        output = raw.output.encode("utf-8")
        return CommandResult(raw.command, raw.exit_code, output, b"", time.monotonic() - started)
