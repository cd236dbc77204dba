"""The driver lifecycle interface: deploy, load with parameters, unload, remove; one per guest kind."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmtest.guest.transport import ProgressCallback

__all__ = ["DeployedDriver", "DriverLifecycle", "DriverParameters"]

DriverParameters = Mapping[str, "str | int"]
"""Parameters for the driver (which scenarios, iteration counts): registry values under the service's
``Parameters`` key on Windows, module parameters on Linux."""


@dataclass(frozen=True)
class DeployedDriver:
    """A driver package copied into the guest."""

    name: str
    """The service name (Windows) or module name (Linux)."""
    guest_dir: str
    """The per-run guest folder holding the package."""
    guest_binary: str
    """The guest path of the ``.sys`` or ``.ko`` file."""


class DriverLifecycle(abc.ABC):
    """Installs, starts, stops and removes a kernel driver in one kind of guest."""

    @abc.abstractmethod
    def deploy(self, package: Path, *, progress: ProgressCallback | None = None) -> DeployedDriver:
        """Copy the package (a driver folder, or a single ``.sys``/``.ko``) into the guest and prepare it."""

    @abc.abstractmethod
    def load(self, driver: DeployedDriver, parameters: DriverParameters) -> None:
        """Load the driver with ``parameters``; raise DriverError with what to do if the kernel refuses."""

    @abc.abstractmethod
    def is_loaded(self, driver: DeployedDriver) -> bool:
        """True if the driver is loaded (running) in the guest now."""

    @abc.abstractmethod
    def unload(self, driver: DeployedDriver) -> None:
        """Stop the driver; raise DriverError if it cannot be unloaded."""

    @abc.abstractmethod
    def remove(self, driver: DeployedDriver) -> None:
        """Delete what :meth:`deploy` and :meth:`load` left in the guest (service entry, files)."""
