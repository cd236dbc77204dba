"""Configuration: a YAML file loaded into typed models, with precise errors and secrets kept secret."""

from __future__ import annotations

from pathlib import Path

from vmtest.config.loader import load_model
from vmtest.config.models import (
    Accelerator,
    LinuxGuestConfig,
    MachineConfig,
    SshConfig,
    Timeouts,
    VmtestConfig,
)

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "Accelerator",
    "LinuxGuestConfig",
    "MachineConfig",
    "SshConfig",
    "Timeouts",
    "VmtestConfig",
    "load_config",
]

DEFAULT_CONFIG_NAME = "vmtest.yaml"


def load_config(path: Path | None = None) -> VmtestConfig:
    """Load ``path``; with no path, ``./vmtest.yaml`` if it exists, else the Linux self-test defaults."""
    if path is None:
        default = Path(DEFAULT_CONFIG_NAME)
        if not default.exists():
            return VmtestConfig()
        path = default
    return load_model(VmtestConfig, path)
