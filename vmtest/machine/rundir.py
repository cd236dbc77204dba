"""The run directory: one private folder per VM run holding every log, socket, overlay and screenshot."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from vmtest.errors import InfraError

__all__ = ["RunDirectory"]


@dataclass(frozen=True)
class RunDirectory:
    """A private (0700) directory for one run; nothing in it is deleted by vmtest."""

    path: Path

    @classmethod
    def create(cls, parent: Path, label: str = "run") -> RunDirectory:
        """Make a new, uniquely named run directory under ``parent`` (created 0700 if needed)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{label}-{stamp}-{secrets.token_hex(3)}"
        parent = parent.resolve()  # tools run elsewhere (make -C, QEMU) must find it too
        try:
            parent.mkdir(parents=True, exist_ok=True)
            path = parent / name
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
            (path / "screenshots").mkdir(mode=0o700)
        except OSError as error:
            raise InfraError(
                f"cannot create the run directory under {parent}: {error}", phase="setup"
            ) from None
        return cls(path)

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stdout and stderr."""
        return self.path / "qemu.log"

    @property
    def events_log(self) -> Path:
        """Every QMP event, one JSON object per line."""
        return self.path / "qmp-events.jsonl"

    @property
    def vmtest_log(self) -> Path:
        """Vmtest's own debug log for this run."""
        return self.path / "vmtest.log"

    @property
    def command_file(self) -> Path:
        """The QEMU command line, one argument per line."""
        return self.path / "qemu-command.txt"

    def serial_log(self, role: str) -> Path:
        """Raw bytes of the serial port with this role (``console``, ``kd``...)."""
        return self.path / f"serial-{role}.log"

    def overlay(self, index: int) -> Path:
        """The qcow2 overlay for the ``index``-th disk."""
        return self.path / f"disk{index}.qcow2"

    def screenshot(self, label: str) -> Path:
        """A fresh, numbered screenshot path named after ``label``."""
        folder = self.path / "screenshots"
        number = len(list(folder.glob("*.png"))) + 1
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[:40]
        return folder / f"{number:02d}-{safe}.png"
