"""Argument lists for the Windows tools that install, start, stop and remove a kernel driver.

Every builder returns a list of arguments, never a command string: the transport quotes them for
``cmd.exe``. Every name and value is checked first, and a bad one raises :class:`DriverError` instead of
producing a malformed command.

sc.exe's ``option= value`` pairs are two arguments each: "A space is required between an option and its
value (for example, type= own). If the space is omitted, the operation fails." (Microsoft, sc-create).

The folder helpers use cmd.exe built-ins (``if``, ``mkdir``, ``rmdir``); both transports run commands
through ``cmd.exe /c`` (the default shell of Windows OpenSSH, and what PsExec is told to start).
"""

from __future__ import annotations

import re
from typing import Literal

from vmtest.errors import DriverError

__all__ = [
    "CertStore",
    "bcdedit_enum_current",
    "certutil_addstore",
    "check_folder_path",
    "check_guest_path",
    "check_service_name",
    "check_value_name",
    "devgen_add",
    "make_folder",
    "pnputil_add_driver",
    "reg_add_parameter",
    "reg_query_oem_code_page",
    "remove_folder",
    "sc_create",
    "sc_delete",
    "sc_query",
    "sc_start",
    "sc_stop",
]

CertStore = Literal["Root", "TrustedPublisher"]

DWORD_MAX = 0xFFFFFFFF

_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}$")
_VALUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_GUEST_PATH = re.compile(r"^[A-Za-z]:\\[^\"<>|?*\x00-\x1f]*$")
_FOLDER_PATH = re.compile(r"^[A-Za-z]:(?:\\[A-Za-z0-9_.\-]+)+$")
_HARDWARE_ID = re.compile(r"^[A-Za-z0-9_&.\\\-]+$")
_CONTROL = re.compile(r"[\x00-\x1f]")


def check_service_name(name: str) -> str:
    """Return ``name`` if it can be a service name here: letters, digits, ``_ . -``, at most 256 chars.

    Windows itself forbids only slashes; vmtest is stricter so the name is safe in every command.
    """
    if not _SERVICE_NAME.match(name):
        raise DriverError(
            f"{name!r} cannot be used as a driver service name: use 1-256 letters, digits, '_', '.' or '-', "
            "starting with a letter, digit or '_' (rename the .sys, or the INF's AddService name)"
        )
    return name


def check_value_name(name: str) -> str:
    """Return ``name`` if it can be a registry value name here: letters, digits, ``_ . -``."""
    if not _VALUE_NAME.match(name):
        raise DriverError(
            f"driver parameter name {name!r} is not allowed: use 1-255 letters, digits, '_', '.' or '-'"
        )
    return name


def check_guest_path(path: str) -> str:
    r"""Return ``path`` if it is an absolute Windows path (``C:\...``) without characters Windows forbids."""
    if not _GUEST_PATH.match(path) or "\\..\\" in f"{path}\\":
        raise DriverError(f"{path!r} is not an absolute guest path like C:\\folder\\file.sys")
    return path


def check_folder_path(path: str) -> str:
    """Return ``path`` if it is a plain folder path: a drive and components of letters, digits, ``_ . -``.

    Stricter than :func:`check_guest_path` because cmd.exe's ``if exist`` parses its own argument.
    """
    if not _FOLDER_PATH.match(path) or any(part in (".", "..") for part in path.split("\\")):
        raise DriverError(
            f"{path!r} is not a plain guest folder path (C:\\name\\name, letters, digits, '_', '.', '-')"
        )
    return path


def sc_create(name: str, binary: str) -> list[str]:
    """``sc.exe create NAME type= kernel start= demand binPath= PATH``: a demand-start kernel driver."""
    return [
        "sc.exe",
        "create",
        check_service_name(name),
        "type=",
        "kernel",
        "start=",
        "demand",
        "binPath=",
        check_guest_path(binary),
    ]


def sc_start(name: str) -> list[str]:
    """``sc.exe start NAME``."""
    return ["sc.exe", "start", check_service_name(name)]


def sc_query(name: str) -> list[str]:
    """``sc.exe query NAME``."""
    return ["sc.exe", "query", check_service_name(name)]


def sc_stop(name: str) -> list[str]:
    """``sc.exe stop NAME``."""
    return ["sc.exe", "stop", check_service_name(name)]


def sc_delete(name: str) -> list[str]:
    """``sc.exe delete NAME``."""
    return ["sc.exe", "delete", check_service_name(name)]


def certutil_addstore(store: CertStore, certificate: str) -> list[str]:
    """``certutil -addstore -f STORE CER``: trust a certificate machine-wide (``-f``: overwrite)."""
    if store not in ("Root", "TrustedPublisher"):
        raise DriverError(f"unknown certificate store {store!r}: expected Root or TrustedPublisher")
    return ["certutil", "-addstore", "-f", store, check_guest_path(certificate)]


def bcdedit_enum_current() -> list[str]:
    """``bcdedit /enum {current}``: the running boot entry, whose ``testsigning`` element matters."""
    return ["bcdedit", "/enum", "{current}"]


def pnputil_add_driver(inf: str) -> list[str]:
    """``pnputil.exe /add-driver INF /install``: stage the package and install it on matching devices."""
    return ["pnputil.exe", "/add-driver", check_guest_path(inf), "/install"]


def devgen_add(devgen: str, hardware_id: str) -> list[str]:
    """``devgen /add /hardwareid ID``: create a software (root-enumerated) device; devgen is a WDK tool."""
    if not _HARDWARE_ID.match(hardware_id):
        raise DriverError(f"{hardware_id!r} is not a hardware id vmtest can pass on (like root\\NAME)")
    return [check_guest_path(devgen), "/add", "/hardwareid", hardware_id]


def reg_add_parameter(service: str, key: str, value: str | int) -> list[str]:
    r"""``reg add HKLM\SYSTEM\CurrentControlSet\Services\NAME\Parameters /v KEY /t TYPE /d VALUE /f``.

    Integers (and booleans, as 0/1) become ``REG_DWORD``, strings ``REG_SZ``.
    """
    registry_key = rf"HKLM\SYSTEM\CurrentControlSet\Services\{check_service_name(service)}\Parameters"
    kind, data = _registry_data(key, value)
    return ["reg", "add", registry_key, "/v", check_value_name(key), "/t", kind, "/d", data, "/f"]


def reg_query_oem_code_page() -> list[str]:
    r"""``reg query HKLM\SYSTEM\CurrentControlSet\Control\Nls\CodePage /v OEMCP``: the console code page."""
    return ["reg", "query", r"HKLM\SYSTEM\CurrentControlSet\Control\Nls\CodePage", "/v", "OEMCP"]


def _registry_data(key: str, value: str | int) -> tuple[str, str]:
    if isinstance(value, bool):
        return "REG_DWORD", str(int(value))
    if isinstance(value, int):
        if not 0 <= value <= DWORD_MAX:
            raise DriverError(f"driver parameter {key}={value} does not fit a REG_DWORD (0..{DWORD_MAX})")
        return "REG_DWORD", str(value)
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise DriverError(f"driver parameter {key} contains a control character (line break, NUL, tab)")
        return "REG_SZ", value
    raise DriverError(f"driver parameter {key} must be an int or a str, not {type(value).__name__}")


def make_folder(path: str) -> list[str]:
    """``if not exist PATH mkdir PATH``: create a folder (and its parents) unless it exists."""
    folder = check_folder_path(path)
    return ["if", "not", "exist", folder, "mkdir", folder]


def remove_folder(path: str) -> list[str]:
    """``if exist PATH rmdir /s /q PATH``: delete a folder and everything in it, if it exists."""
    folder = check_folder_path(path)
    return ["if", "exist", folder, "rmdir", "/s", "/q", folder]
