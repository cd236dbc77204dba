"""vmtest: integration tests for kernel drivers in QEMU virtual machines.

Boot a guest through QMP, load the driver, capture what the kernel prints, judge it, and report::

    import vmtest

    result = vmtest.run("vmtest.yaml", driver="build/my_driver.ko", junitxml="junit.xml")
    print(result.status, result.exit_code)      # passed 0
    for test in result.verdict.scenarios:       # one per scenario (protocol), test (text), or the smoke test
        print(test.name, test.status)
    print(result.reports["html"])
"""

import logging

from vmtest.config import VmtestConfig, load_config
from vmtest.errors import ConfigError, InfraError, VmtestError
from vmtest.machine import Machine
from vmtest.pipeline import RunResult, run
from vmtest.session import VmSession

__all__ = [  # noqa: RUF022 (by importance, not alphabetically)
    "run",
    "RunResult",
    "load_config",
    "VmtestConfig",
    "VmtestError",
    "ConfigError",
    "InfraError",
    "VmSession",
    "Machine",
]

__version__ = "0.1.0"

logging.getLogger("vmtest").addHandler(logging.NullHandler())
