"""The transport interface: run commands in the guest and move files in and out, whatever the wire.

Transports are blocking (paramiko and pypsexec are); async code calls them through
``asyncio.to_thread`` and races them against the machine's own waits. Every method has a deadline.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmtest.errors import GuestCommandFailed

__all__ = ["CommandResult", "ProgressCallback", "Transport"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` while a file is copied."""


@dataclass(frozen=True)
class CommandResult:
    """What a command in the guest did."""

    command: str
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    def text(self) -> str:
        """Standard output then standard error, decoded leniently (guest output is not always valid UTF-8)."""
        return (self.stdout + self.stderr).decode("utf-8", errors="replace")

    def check(self, what: str) -> CommandResult:
        """Return self if the command succeeded, else raise GuestCommandFailed saying ``what`` failed."""
        if not self.ok:
            output = self.text().strip()
            detail = f":\n{output[-2000:]}" if output else " (no output)"
            raise GuestCommandFailed(
                f"{what} failed with exit status {self.exit_code}: {self.command}{detail}"
            )
        return self


class Transport(abc.ABC):
    """A way into the guest: SSH (Linux, or Windows with OpenSSH) or SMB with PsExec (Windows)."""

    @abc.abstractmethod
    def wait_ready(self, timeout: float) -> None:
        """Connect, retrying only what can heal while the guest boots, until ``timeout`` seconds pass."""

    @abc.abstractmethod
    def run(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` within ``timeout`` seconds; the transport quotes it for the guest's shell."""

    @abc.abstractmethod
    def put(
        self, local: Path, remote: str, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        """Copy the host file ``local`` to the guest path ``remote``."""

    @abc.abstractmethod
    def get(
        self, remote: str, local: Path, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        """Copy the guest file ``remote`` to the host path ``local``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection; safe to call more than once."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
