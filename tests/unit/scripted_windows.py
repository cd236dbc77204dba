"""The plumbing of a scripted Windows guest: a transport whose commands a subclass answers from samples.

Files copied in are kept in memory; every command is recorded; ``answer`` (the subclass's) says what
Windows would print and exit with, from the documented samples in tests/data/windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmtest.guest.transport import CommandResult, ProgressCallback, Transport


@dataclass
class ScriptedWindows(Transport):
    """A guest that answers each command with ``answer(argv)``: (exit status, output bytes)."""

    commands: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def answer(self, argv: list[str]) -> tuple[int, bytes]:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass

    def put(
        self, local: Path, remote: str, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        self.files[remote] = local.read_bytes()

    def get(
        self, remote: str, local: Path, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        local.write_bytes(self.files[remote])

    def run(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        command = " ".join(argv)
        self.commands.append(command)
        code, output = self.answer(list(argv))
        return CommandResult(command, code, output, b"", 0.01)
