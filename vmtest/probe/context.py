"""The probe's view of the guest: commands with deadlines, raw outputs kept, decoded as the guest writes.

Windows console programs write in the OEM code page (437 on an English image, 850 on a German or
French one: Microsoft Learn, "Code Page Identifiers" and ``chcp``); the probe learns it first and
decodes every later output with it, and keeps what it decoded in the report.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmtest.errors import VmtestError
from vmtest.guest.quoting import ShellKind, join_for
from vmtest.guest.transport import Transport
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
    debugview_pid: int | None = None
    """The PID of the run's own DbgViewCLI, when the capture started it through WMI."""
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

    def take_raw(self) -> tuple[RawOutput, ...]:
        """The outputs kept since the last call (one check's)."""
        raw, self._raw = tuple(self._raw), []
        return raw
