"""The guest profile interface: what differs between guest kinds in the QEMU command line."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from vmtest.machine.confine import Confinement
from vmtest.machine.hostfiles import HostFiles

__all__ = ["LaunchContext", "Profile"]


@dataclass(frozen=True)
class LaunchContext:
    """What the machine decided before asking the profile for its arguments."""

    accel: str
    overlays: tuple[Path, ...]
    run_dir: Path
    files: HostFiles = field(default_factory=HostFiles.described)
    """How QEMU reaches every host file the profile names: ask it, never put a path in an argument."""


class Profile(abc.ABC):
    """One kind of guest (``linux``, ``windows11``): its virtual hardware and how it shows readiness.

    The machine adds what every guest shares (QMP, the serial ports in ``serial_roles`` order, user
    networking with ``netdev`` id ``net0``, the accelerator, memory and CPUs); the profile adds the rest.
    """

    name: ClassVar[str]
    confinement: Confinement | None = None
    """How the profile's helpers (swtpm) are confined; set from the machine configuration."""
    serial_roles: ClassVar[tuple[str, ...]] = ("console",)
    requires_kvm: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def base_disks(self) -> tuple[Path, ...]:
        """Disk images the guest boots from; vmtest never writes them (each run gets overlays)."""

    @property
    @abc.abstractmethod
    def forwards(self) -> Mapping[str, int]:
        """Guest TCP ports to forward to 127.0.0.1, by name (for example ``{"ssh": 22}``)."""

    @property
    def ready_marker(self) -> str | None:
        """Text the guest prints on its ``console`` serial port once it is ready, if it prints any."""
        return None

    @property
    def probe_kernel(self) -> Path | None:
        """A Linux kernel the KVM probe may boot to test whether KVM can run a real guest."""
        return None

    @property
    def powerdown_timeout(self) -> float:
        """How long an ACPI power-button press may take to power the guest off."""
        return 10.0

    @property
    def snapshot_nodes(self) -> tuple[str, ...]:
        """Node names of every writable disk, for RAM snapshots; empty: the guest cannot be snapshotted.

        The first node receives the RAM state (``vmstate``); every node's disk state is saved and restored
        with it. Each must be a qcow2 overlay (a raw node cannot hold a snapshot).
        """
        return ()

    @abc.abstractmethod
    def cpu_model(self, accel: str) -> str:
        """The ``-cpu`` model for ``accel`` (``kvm`` or ``tcg``)."""

    def backing_format(self, index: int) -> str:
        """The format of base disk ``index`` (``qcow2`` or ``raw``, by its name)."""
        return "qcow2" if self.base_disks[index].suffix == ".qcow2" else "raw"

    def overlay_file(self, context: LaunchContext, index: int) -> str:
        """The ``file=...`` part of the ``-drive`` of overlay ``index`` over its base disk."""
        return context.files.overlay(
            context.overlays[index], self.base_disks[index].resolve(), self.backing_format(index)
        )

    @abc.abstractmethod
    def qemu_args(self, context: LaunchContext) -> list[str]:
        """The guest-specific part of the QEMU command line."""

    def describe(self) -> str:
        """A short human description for logs."""
        return self.name

    def check_accelerator(self, accel: str) -> None:  # noqa: B027  (a hook: most profiles need nothing)
        """Raise AcceleratorError if the guest cannot run under ``accel``; most guests run under either."""

    async def start_helpers(self, run_dir: Path) -> None:  # noqa: B027
        """Start what QEMU connects to (a software TPM, for example) before QEMU starts."""

    async def stop_helpers(self) -> None:  # noqa: B027
        """Stop what :meth:`start_helpers` started; idempotent."""
