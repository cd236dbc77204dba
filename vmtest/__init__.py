"""vmtest: integration tests for kernel drivers in QEMU virtual machines.

Boot a guest through QMP, load the driver, capture what the kernel prints, and judge it.
"""

import logging

from vmtest.config import VmtestConfig, load_config
from vmtest.errors import ConfigError, InfraError, VmtestError
from vmtest.machine import Machine
from vmtest.session import VmSession

__all__ = [
    "ConfigError",
    "InfraError",
    "Machine",
    "VmSession",
    "VmtestConfig",
    "VmtestError",
    "load_config",
]

__version__ = "0.1.0"

logging.getLogger("vmtest").addHandler(logging.NullHandler())
