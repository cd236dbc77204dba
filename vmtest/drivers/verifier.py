r"""Driver Verifier in the guest: switch it on for the driver under test, confirm it, read what it did.

Commands (Microsoft Learn, "Driver Verifier Command Syntax"):

* ``verifier /volatile /flags F /adddriver NAME.sys``: rules Windows 11 applies at once ("Using
  Volatile Settings": 0x4, 0x20, 0x80, 0x200, 0x400); they last until the next boot.
* ``verifier /flags F /driver NAME.sys``: every other rule; "activates the specified options after
  the next reboot", so the guest is rebooted once before the driver loads.
* The settings that take effect at the next boot are the registry values ``VerifyDriverLevel``
  (REG_DWORD, the flags) and ``VerifyDrivers`` (REG_SZ, the driver names) under
  ``HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management`` (Microsoft Support,
  "Using Driver Verifier to identify issues with Windows drivers for advanced users"; a guess as far as
  Microsoft Learn goes). vmtest reads them with ``reg query`` rather than parse ``verifier
  /querysettings``, whose layout changed between Windows versions (the probe records both).
* Return codes ("Driver Verifier Command Syntax", Return Codes): 0 success, 1 error,
  2 EXIT_CODE_REBOOT_NEEDED: the change takes effect at the next boot, which is success here.
* ``verifier /query``: what is in effect now: ``Level: <hex flags>`` and, per verified driver that is
  known to the running kernel, ``Name: NAME.sys, loads: N, unloads: M`` followed by its counters.
  (Layout from a transcript of the command; unconfirmed which drivers a volatile setting lists before
  they load, so vmtest confirms again after the load.)
* ``verifier /reset``: clear every setting (takes effect at the next boot). vmtest never needs it:
  each run works on an overlay of the golden image, which is never written.

Output is English on an en-US image; the parsers read only option names and numbers, and say so
when they find neither.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from vmtest.config.models import VmtestConfig
from vmtest.config.verifier import VerifierConfig
from vmtest.drivers.windows_output import parse_reg_values
from vmtest.errors import GuestError
from vmtest.guest.transport import Transport
from vmtest.verdict.verifier_rules import OPTIONS

__all__ = [
    "REGISTRY_QUERY",
    "WINDOWS_REBOOT",
    "RuntimeState",
    "already_set",
    "enable_command",
    "guest_setup",
    "parse_query",
    "parse_registry",
    "run_verifier",
    "verifier_confirmation",
]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0
WINDOWS_REBOOT = ("shutdown", "/r", "/f", "/t", "0")
"""Restart now (Microsoft Learn, "shutdown": /r restart, /t 0 no delay; /f, which is implied only for a
delay above 0, so that no application of the logged-on session holds the restart up)."""
VERIFIER_SUCCESS = (0, 2)
"""verifier's exit statuses for success: 0, and 2 EXIT_CODE_REBOOT_NEEDED."""
REGISTRY_KEY = r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management"
REGISTRY_QUERY = ["reg", "query", REGISTRY_KEY]
_SETTING = re.compile(r"^(?P<title>[A-Za-z/ ()-]+?):\s*(?P<state>Enabled|Disabled)\s*$", re.MULTILINE)
_LEVEL = re.compile(r"^\s*Level:\s*(?P<level>[0-9A-Fa-f]+)\s*$", re.MULTILINE)
_DRIVER = re.compile(
    r"^\s*Name:\s*(?P<name>[^,\s]+),\s*loads:\s*(?P<loads>\d+),\s*unloads:\s*(?P<unloads>\d+)", re.MULTILINE
)


def enable_command(config: VerifierConfig, driver_file: str) -> list[str]:
    """The ``verifier`` command that switches ``config``'s rules on for ``driver_file`` (``x.sys``)."""
    if config.volatile:
        return ["verifier", "/volatile", "/flags", f"{config.flags:#x}", "/adddriver", driver_file]
    if config.rules == "standard":
        return ["verifier", "/standard", "/driver", driver_file]
    return ["verifier", "/flags", f"{config.flags:#x}", "/driver", driver_file]


@dataclass(frozen=True)
class RuntimeState:
    """``verifier /query``: the flags in effect and, per driver, how often it was loaded and unloaded."""

    level: int
    drivers: dict[str, tuple[int, int]] = field(default_factory=dict)


def parse_registry(text: str) -> tuple[int, tuple[str, ...]]:
    """The flags and driver names ``reg query`` of the Memory Management key shows (0, () when unset)."""
    values = parse_reg_values(text)
    try:
        level = int(values.get("VerifyDriverLevel", "0"), 0)
    except ValueError:
        level = 0
    return level, tuple(values.get("VerifyDrivers", "").split())


def parse_query(text: str) -> RuntimeState:
    """Parse ``verifier /query``; ValueError when it shows no ``Level:`` line."""
    level = _LEVEL.search(text)
    if level is None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "(no output)")
        raise ValueError(f"verifier /query printed no 'Level:' line: {first!r}")
    drivers = {
        match["name"].lower(): (int(match["loads"]), int(match["unloads"]))
        for match in _DRIVER.finditer(text)
    }
    return RuntimeState(int(level["level"], 16), drivers)


def verifier_confirmation(config: VerifierConfig, driver_file: str, state: RuntimeState) -> str:
    """One line for the report saying the driver ran verified with the rules asked for; GuestError if not."""
    missing = config.flags & ~state.level
    name = driver_file.lower()
    if missing:
        absent = ", ".join(option.name for option in OPTIONS if option.flag & missing)
        raise GuestError(
            f"Driver Verifier is not applying {absent} (verifier /query shows Level {state.level:#x}, "
            f"asked for {config.flags:#x}); a rule that needs a reboot was not rebooted into"
        )
    if name not in state.drivers:
        raise GuestError(f"verifier /query does not list {driver_file} among the verified drivers")
    loads, unloads = state.drivers[name]
    return (
        f"Driver Verifier on for {driver_file}: {', '.join(config.names)} (flags {config.flags:#x}); "
        f"verifier /query: Level {state.level:#x}, loads {loads}, unloads {unloads}"
    )


def guest_setup(config: VmtestConfig) -> dict[str, object]:
    """What a run does to the guest before its warm snapshot: Driver Verifier's rules (none: empty)."""
    verifier = config.driver.verifier
    if verifier is None:
        return {}
    return {
        "verifier": {"flags": verifier.flags, "rules": list(verifier.names), "driver": driver_file_of(config)}
    }


def driver_file_of(config: VmtestConfig) -> str:
    """The ``.sys`` name Verifier is told about: the package's (known before the guest boots)."""
    package = config.driver.package
    if package is None:
        return ""
    if package.suffix.lower() == ".sys":
        return package.name
    found = sorted(path.name for path in package.glob("*.sys")) if package.is_dir() else []
    return found[0] if found else ""


def run_verifier(transport: Transport, argv: list[str], what: str) -> str:
    """Run a ``verifier`` (or ``reg query``) command; its output, or GuestError naming ``what`` and why.

    Exit status 2 is verifier's "reboot needed": the setting was recorded.
    """
    result = transport.run(argv, timeout=COMMAND_TIMEOUT)
    text = result.text()
    if result.exit_code not in VERIFIER_SUCCESS:
        raise GuestError(
            f"{what} failed with exit status {result.exit_code}: {' '.join(argv)}\n{text.strip()}"
        )
    log.info("%s: %s", " ".join(argv), text.strip().replace("\n", " | ")[:500])
    return text


def already_set(config: VerifierConfig, driver_file: str, registry: tuple[int, tuple[str, ...]]) -> bool:
    """The registry already holds these rules for this driver (a warm snapshot taken after enabling)."""
    level, drivers = registry
    return driver_file.lower() in {name.lower() for name in drivers} and config.flags & ~level == 0
