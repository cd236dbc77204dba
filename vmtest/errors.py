"""vmtest's exception hierarchy, from generic to specific.

Three kinds of outcome leave vmtest, and each has its own exit code:

* :class:`ConfigError` (exit 2): the user's input is wrong; nothing was started.
* :class:`InfraError` (exit 3): the machinery failed (QEMU, the guest, the network); it names the phase
  that failed and where the logs and screenshot are, so CI may retry only these.
* Test failures are verdicts, never exceptions (exit 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXIT_CONFIG",
    "EXIT_INFRA",
    "EXIT_TEST_FAILURE",
    "AcceleratorError",
    "AuthenticationFailed",
    "CommandTimeout",
    "ConfigError",
    "ConfigProblem",
    "DeadlineExceeded",
    "DriverError",
    "EntryPointFailed",
    "GuestCommandFailed",
    "GuestCrashed",
    "GuestError",
    "GuestUnreachable",
    "HostKeyMismatch",
    "ImageError",
    "InfraError",
    "MachineExited",
    "MonitorError",
    "QemuStartError",
    "VmtestError",
]

EXIT_TEST_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INFRA = 3


class VmtestError(Exception):
    """Base class of every error vmtest raises on purpose."""

    exit_code: int = EXIT_INFRA


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file, located as precisely as the input allows."""

    source: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(VmtestError):
    """The configuration or the command line is invalid; every problem found is listed at once."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: Sequence[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("<command line>", None, None, "", problems)]
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        count = len(self.problems)
        header = f"{count} configuration problem{'s' if count != 1 else ''}:"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))


class InfraError(VmtestError):
    """The machinery failed: names the phase and where the evidence (logs, screenshot) was kept."""

    exit_code = EXIT_INFRA

    def __init__(
        self,
        message: str,
        *,
        phase: str | None = None,
        artifacts: Path | None = None,
        screenshot: Path | None = None,
    ) -> None:
        self.message = message
        self.phase = phase
        self.artifacts = artifacts
        self.screenshot = screenshot
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        if self.phase:
            text = f"{self.phase}: {text}"
        if self.artifacts is not None:
            text += f"\n  logs: {self.artifacts}"
        if self.screenshot is not None:
            text += f"\n  screenshot: {self.screenshot}"
        return text

    def located(self, *, phase: str, artifacts: Path, screenshot: Path | None = None) -> InfraError:
        """Fill in the phase and artifact locations where the raiser did not know them; returns self."""
        self.phase = self.phase or phase
        self.artifacts = self.artifacts or artifacts
        self.screenshot = self.screenshot or screenshot
        return self


class ImageError(InfraError):
    """A guest image is missing, incomplete, or could not be built."""


class AcceleratorError(InfraError):
    """The requested accelerator cannot run a guest on this host."""


class QemuStartError(InfraError):
    """QEMU could not be started or refused its command line."""


class MachineExited(InfraError):
    """QEMU exited, or its QMP connection dropped, while vmtest was still using it."""

    def __init__(self, message: str, *, returncode: int | None = None, phase: str | None = None) -> None:
        self.returncode = returncode
        super().__init__(message, phase=phase)


class MonitorError(InfraError):
    """A QMP command failed, or QEMU reported an error for it."""


class DeadlineExceeded(InfraError, TimeoutError):
    """A wait ran past its deadline."""


class GuestCrashed(InfraError):
    """The guest kernel crashed (Linux panic, Windows bugcheck), as reported by QEMU or the console."""

    def __init__(self, message: str, *, crash: object = None, phase: str | None = None) -> None:
        self.crash = crash
        super().__init__(message, phase=phase)


class GuestError(InfraError):
    """Talking to the guest failed: it cannot be reached, refused us, or a command misbehaved."""


class GuestUnreachable(GuestError):
    """The guest did not answer on its transport before the deadline, or the connection dropped."""


class AuthenticationFailed(GuestError):
    """The guest refused our credentials; retrying cannot help."""


class HostKeyMismatch(GuestError):
    """The guest's SSH host key is not the pinned one; retrying cannot help."""


class GuestCommandFailed(GuestError):
    """A command in the guest exited with a non-zero status where success was required."""


class CommandTimeout(GuestError, DeadlineExceeded):
    """A command in the guest ran past its deadline."""


class DriverError(VmtestError):
    """The driver under test could not be deployed, loaded or unloaded; the message says what to do.

    This is the driver's (or its package's) failure, not the machinery's, so it counts as a test failure.
    """

    exit_code = EXIT_TEST_FAILURE

    def __init__(self, message: str, *, code: int | None = None, output: str = "") -> None:
        self.code = code
        self.output = output
        super().__init__(message)


class EntryPointFailed(DriverError):
    """The driver's entry point (DriverEntry, a Linux module's init) returned an error while loading.

    ``code`` is what the OS reported (a Win32 error such as 31 from ``sc start``, or a negative errno
    from ``insmod``). Some test drivers fail their entry point by design, after printing their results
    (``driver.expect_entry_failure``); for every other driver this is a load failure.
    """
