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
from vmtest.config.policy import check_policy

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
    """Load ``path``; with no path, ``./vmtest.yaml`` if it exists, else the Linux self-test defaults.

    Keys that run host programs are refused unless the runner's policy allows them (config/policy.py).
    """
    if path is None:
        default = Path(DEFAULT_CONFIG_NAME)
        if not default.exists():
            return VmtestConfig()
        path = default
    config = load_model(VmtestConfig, path)
    check_policy(config, str(path))
    return config
