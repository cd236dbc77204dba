"""Parsers for what Windows' driver tools print: ``sc.exe``, ``bcdedit``, ``certutil``, and INF files.

Pure functions over text, no I/O. The formats come from Microsoft's documentation and field transcripts;
``tests/data/windows/SOURCES.md`` names the source of every sample the tests parse. Windows prints CRLF;
every parser here accepts CRLF and LF alike.

:data:`SC_ERRORS` is the one table of the Win32 error codes a driver developer meets while loading a
driver, with what each one means for them.
"""

from __future__ import annotations

import codecs
import enum
import logging
import re
from dataclasses import dataclass

__all__ = [
    "SC_ERRORS",
    "CertutilResult",
    "InfInfo",
    "ScError",
    "ScFailure",
    "ServiceState",
    "ServiceStatus",
    "codec_for_code_page",
    "decode_inf",
    "decode_output",
    "describe_sc_failure",
    "parse_bcdedit_testsigning",
    "parse_certutil_addstore",
    "parse_inf",
    "parse_oem_code_page",
    "parse_reg_values",
    "parse_sc_failure",
    "parse_sc_query",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScError:
    """A Win32 error code as a driver developer needs it: its name and what to do about it."""

    name: str
    advice: str


SC_ERRORS: dict[int, ScError] = {
    2: ScError(
        "ERROR_FILE_NOT_FOUND",
        "the driver file was not found: the binPath= given to sc create does not point at the .sys in the "
        "guest (a wrong path, or the copy did not happen)",
    ),
    5: ScError(
        "ERROR_ACCESS_DENIED",
        "access is denied: the command did not run with administrator rights; use an administrator account "
        "whose token is not filtered by UAC (LocalAccountTokenFilterPolicy=1, or the built-in Administrator)",
    ),
    577: ScError(
        "ERROR_INVALID_IMAGE_HASH",
        "the image is unsigned, or its certificate is not trusted, or test signing is off: sign the .sys "
        "(cargo make signs it with WDRLocalTestCert), trust the package's .cer in LocalMachine Root and "
        "TrustedPublisher, and turn test signing on (bcdedit /set testsigning on, Secure Boot off, reboot)",
    ),
    1052: ScError(
        "ERROR_INVALID_SERVICE_CONTROL",
        "the driver has no unload routine, so Windows cannot stop it: set DriverObject->DriverUnload in "
        "DriverEntry; until then the driver stays loaded until the guest reboots",
    ),
    1056: ScError(
        "ERROR_SERVICE_ALREADY_RUNNING",
        "the driver is already running: an earlier instance was never stopped (unload it first, or restore "
        "the VM snapshot)",
    ),
    1058: ScError(
        "ERROR_SERVICE_DISABLED",
        "the service's start type is 'disabled': recreate it with start= demand",
    ),
    1060: ScError(
        "ERROR_SERVICE_DOES_NOT_EXIST",
        "no service of that name is installed: it was never created, or it was already deleted",
    ),
    1062: ScError(
        "ERROR_SERVICE_NOT_ACTIVE",
        "the driver is not running: it was never started, or it has already stopped",
    ),
    1072: ScError(
        "ERROR_SERVICE_MARKED_FOR_DELETE",
        "the service is marked for deletion but something still holds a handle to it (an open Services "
        "console, a process with the driver's device open): close it, or reboot or restore the VM, before "
        "creating the service again",
    ),
    1073: ScError(
        "ERROR_SERVICE_EXISTS",
        "a service of that name already exists: delete it first (sc delete NAME)",
    ),
    1275: ScError(
        "ERROR_DRIVER_BLOCKED",
        "Windows blocked this driver from loading: seen for a test-signed driver while test signing is off, "
        "and for drivers denied by policy (the vulnerable-driver blocklist, HVCI/WDAC); check test signing "
        "and the CodeIntegrity event log",
    ),
    4421: ScError(
        "ERROR_SECUREBOOT_POLICY_VIOLATION",
        "Secure Boot forbids the change: test signing cannot be turned on while Secure Boot is enabled. "
        "The OVMF variable store decides it, not the code file: boot with a store that has no Secure "
        "Boot keys enrolled (a copy of Debian's empty OVMF_VARS_4M.fd, not OVMF_VARS_4M.ms.fd)",
    ),
}
"""Win32 error code -> (name, advice). The codes and names are winerror.h's; the advice is vmtest's."""


# ---------------------------------------------------------------------------------------------- sc.exe


@dataclass(frozen=True)
class ScFailure:
    """``[SC] <API> FAILED <code>:`` and the system message sc.exe printed after it."""

    api: str
    """The Win32 API that failed, as printed: ``StartService``, ``EnumQueryServicesStatus:OpenService``."""
    code: int
    """The decimal Win32 error code."""
    message: str
    """Windows' own text for the code (possibly localised), on one line; empty if sc printed none."""


_SC_FAILED = re.compile(r"^\[SC\]\s+(?P<api>\S+)\s+FAILED\s+(?P<code>\d+):[ \t\r]*$", re.MULTILINE)
# Localised sc.exe translates the word and the typography, not the numbers: "[SC] OpenService FEHLER 1060:"
# (German), "[SC] OpenService ÉCHEC 1060 :" (French; issue 17, and transcripts found by text search).
_SC_FAILED_ANY_LANGUAGE = re.compile(
    r"^\[SC\]\s+(?P<api>\S+)\s+(?P<word>\S+)\s+(?P<code>\d+)\s*:[ \t\r]*$", re.MULTILINE
)
_SC_MARK = re.compile(r"^\[SC\]\s+(?P<api>\S+)", re.MULTILINE)


def _following(text: str, end: int) -> str:
    return " ".join(line.strip() for line in text[end:].splitlines() if line.strip())


def parse_sc_failure(text: str, exit_code: int | None = None) -> ScFailure | None:
    """sc.exe's failure: the code from its ``[SC] <API> FAILED <code>:`` line, in any language.

    English first; then the same line with a translated word (``FEHLER``, ``ÉCHEC``); then, when sc.exe
    printed an ``[SC]`` line vmtest cannot read and exited non-zero, the exit status, which is the Win32
    error (issue 17.5; the German ``sc qc`` transcripts found by text search exit with 1060). None when
    the output reports no failure.
    """
    for pattern in (_SC_FAILED, _SC_FAILED_ANY_LANGUAGE):
        match = pattern.search(text)
        if match is not None:
            return ScFailure(api=match["api"], code=int(match["code"]), message=_following(text, match.end()))
    mark = _SC_MARK.search(text)
    if mark is not None and exit_code:
        line_end = text.find("\n", mark.end())
        message = _following(text, len(text) if line_end < 0 else line_end)
        return ScFailure(api=mark["api"].rstrip(":"), code=exit_code, message=message)
    return None


def describe_sc_failure(failure: ScFailure) -> str:
    """A sentence for a developer: what failed, the code and its name, and what to do (from SC_ERRORS)."""
    known = SC_ERRORS.get(failure.code)
    head = f"sc.exe {failure.api} failed with Win32 error {failure.code}"
    if known is not None:
        return f"{head} ({known.name}): {known.advice}"
    detail = f": {failure.message}" if failure.message else ""
    return f"{head}{detail}"


class ServiceState(enum.IntEnum):
    """``SERVICE_STATUS.dwCurrentState`` values (winsvc.h), as ``sc query`` prints them."""

    STOPPED = 1
    START_PENDING = 2
    STOP_PENDING = 3
    RUNNING = 4
    CONTINUE_PENDING = 5
    PAUSE_PENDING = 6
    PAUSED = 7


@dataclass(frozen=True)
class ServiceStatus:
    """The fields of one ``sc query`` (or ``sc start``/``sc stop``) status block."""

    name: str
    type_code: int
    type_name: str
    state: ServiceState
    state_name: str
    controls: tuple[str, ...]
    """The accepted-controls line under STATE, e.g. ``("STOPPABLE", "NOT_PAUSABLE", "IGNORES_SHUTDOWN")``."""
    win32_exit_code: int
    service_exit_code: int
    checkpoint: int
    wait_hint: int


_FIELD = re.compile(r"^\s*(?P<key>[A-Z][A-Z0-9_]*)\s*:\s*(?P<value>.*?)\s*$")
_CONTROLS = re.compile(r"^\s*\((?P<controls>[^)]*)\)\s*$")
_CODE_AND_NAME = re.compile(r"^(?P<code>\d+)\s+(?P<name>.+)$")
_DECIMAL_FIRST = re.compile(r"^(?P<code>\d+)\b")
_REQUIRED = (
    "SERVICE_NAME",
    "TYPE",
    "STATE",
    "WIN32_EXIT_CODE",
    "SERVICE_EXIT_CODE",
    "CHECKPOINT",
    "WAIT_HINT",
)


def _status_fields(text: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """Collect ``KEY : value`` lines (first block only) and the parenthesised line that follows STATE."""
    fields: dict[str, str] = {}
    controls: tuple[str, ...] = ()
    previous = ""
    for line in text.splitlines():
        control_match = _CONTROLS.match(line)
        if control_match is not None and previous == "STATE":
            controls = tuple(part.strip() for part in control_match["controls"].split(",") if part.strip())
            continue
        field_match = _FIELD.match(line)
        if field_match is None:
            continue
        key = field_match["key"]
        if key == "SERVICE_NAME" and key in fields:
            break
        fields.setdefault(key, field_match["value"])
        previous = key
    return fields, controls


def _code_and_name(field: str, value: str) -> tuple[int, str]:
    match = _CODE_AND_NAME.match(value)
    if match is None:
        raise ValueError(f"sc query field {field} has no '<code> <name>' value: {value!r}")
    return int(match["code"]), match["name"].strip()


def _first_decimal(field: str, value: str) -> int:
    match = _DECIMAL_FIRST.match(value)
    if match is None:
        raise ValueError(f"sc query field {field} does not start with a decimal code: {value!r}")
    return int(match["code"])


def _hex_or_decimal(field: str, value: str) -> int:
    try:
        return int(value.split()[0], 0)
    except (IndexError, ValueError):
        raise ValueError(f"sc query field {field} is not a number: {value!r}") from None


def parse_sc_query(text: str) -> ServiceStatus:
    """Parse an ``sc query NAME`` status block; raise ValueError if ``text`` is not one.

    Check :func:`parse_sc_failure` first: a ``FAILED`` output has no status block.
    """
    fields, controls = _status_fields(text)
    missing = [key for key in _REQUIRED if key not in fields]
    if missing:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        raise ValueError(f"not an sc query status (missing {', '.join(missing)}): {first!r}")
    type_code, type_name = _code_and_name("TYPE", fields["TYPE"])
    state_code, state_name = _code_and_name("STATE", fields["STATE"])
    try:
        state = ServiceState(state_code)
    except ValueError:
        raise ValueError(f"sc query STATE {state_code} is not a service state") from None
    return ServiceStatus(
        name=fields["SERVICE_NAME"],
        type_code=type_code,
        type_name=type_name,
        state=state,
        state_name=state_name,
        controls=controls,
        win32_exit_code=_first_decimal("WIN32_EXIT_CODE", fields["WIN32_EXIT_CODE"]),
        service_exit_code=_first_decimal("SERVICE_EXIT_CODE", fields["SERVICE_EXIT_CODE"]),
        checkpoint=_hex_or_decimal("CHECKPOINT", fields["CHECKPOINT"]),
        wait_hint=_hex_or_decimal("WAIT_HINT", fields["WAIT_HINT"]),
    )


# --------------------------------------------------------------------------------------------- bcdedit

_TESTSIGNING = re.compile(r"^\s*testsigning\s+(?P<value>\S+)\s*$", re.MULTILINE | re.IGNORECASE)
# bcdedit prints element names untranslated and boolean values in the display language. English is
# Microsoft's (Sharks Cove page, "testsigning Yes"); the translations are a guess (the usual words for
# yes/no in German, French, Spanish, Italian, Portuguese, Dutch); anything else is refused, not guessed.
_YES = frozenset({"yes", "on", "true", "1", "ja", "oui", "sí", "si", "sì", "sim"})
_NO = frozenset({"no", "off", "false", "0", "nein", "non", "não", "nao", "nee"})


def parse_bcdedit_testsigning(text: str) -> bool | None:
    """Read the ``testsigning`` element from ``bcdedit /enum {current}`` output.

    True for ``testsigning Yes``, False for ``No``, None when the element is absent (which means off).
    Raise ValueError for any other value (e.g. a localised ``Ja``), rather than guess.
    """
    match = _TESTSIGNING.search(text)
    if match is None:
        return None
    value = match["value"].lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise ValueError(f"bcdedit shows testsigning {match['value']!r}, which is neither Yes nor No")


# -------------------------------------------------------------------------------------------- certutil


@dataclass(frozen=True)
class CertutilResult:
    """What ``certutil -addstore`` reported."""

    ok: bool
    certificates: tuple[str, ...]
    """The certificate names certutil reported as added to (or already in) the store."""
    hresult: int | None
    """The HRESULT of a failure (``0x80070005``), None on success."""
    message: str
    """On failure, certutil's explanation (the ``CertUtil: ...`` lines after the FAILED line)."""


_CERTUTIL_OK = re.compile(r"^CertUtil: -addstore command completed successfully\.", re.MULTILINE)
_CERTUTIL_FAILED = re.compile(
    r"^CertUtil: -addstore command FAILED:\s*(?P<hresult>0x[0-9A-Fa-f]+)?(?P<rest>.*)$", re.MULTILINE
)
_CERTUTIL_CERT = re.compile(r'^Certificate "(?P<name>[^"]*)" (?:added to|already in) store\.', re.MULTILINE)
_CERTUTIL_NOTE = re.compile(r"^CertUtil: (?P<text>.+?)\s*$", re.MULTILINE)


def parse_certutil_addstore(text: str, exit_code: int | None = None) -> CertutilResult:
    """Parse ``certutil -addstore`` output; raise ValueError if it reports neither success nor failure.

    With ``exit_code``, the exit status decides first (0: success; otherwise certutil's exit status is
    the HRESULT, as transcripts show ``%ERRORLEVEL%`` -2147024891 for 0x80070005), the text second: a
    localised guest prints its verdict line translated.
    """
    certificates = tuple(match["name"] for match in _CERTUTIL_CERT.finditer(text))
    if exit_code is not None:
        if exit_code == 0:
            return CertutilResult(ok=True, certificates=certificates, hresult=None, message="")
        status = exit_code & 0xFFFFFFFF
        try:
            parsed = parse_certutil_addstore(text)
        except ValueError:
            parsed = None
        if parsed is not None and not parsed.ok:
            return CertutilResult(False, certificates, status, parsed.message)
        last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "no output")
        return CertutilResult(False, certificates, status, last)
    if _CERTUTIL_OK.search(text):
        return CertutilResult(ok=True, certificates=certificates, hresult=None, message="")
    failed = _CERTUTIL_FAILED.search(text)
    if failed is None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        raise ValueError(f"certutil -addstore printed no verdict line: {first!r}")
    hresult = int(failed["hresult"], 16) if failed["hresult"] else None
    notes = [m["text"] for m in _CERTUTIL_NOTE.finditer(text, failed.end())]
    message = " ".join(notes) if notes else failed.group(0).strip()
    return CertutilResult(ok=False, certificates=certificates, hresult=hresult, message=message)


# ---------------------------------------------------------------------------------------- code pages

# Console tools (sc.exe, certutil, bcdedit, reg) write in the OEM code page, not UTF-8: 437 (US), 850
# (Western Europe), ... Windows records it as HKLM\SYSTEM\CurrentControlSet\Control\Nls\CodePage
# value OEMCP (REG_SZ), which `reg query` prints as "    OEMCP    REG_SZ    850" (Microsoft Learn, "reg
# query"; "Code Page Identifiers"). vmtest reads it once per guest; a setting overrides it.
_OEMCP = re.compile(r"^\s*OEMCP\s+REG_SZ\s+(?P<code_page>\d+)\s*$", re.MULTILINE | re.IGNORECASE)
_UTF8_CODE_PAGE = 65001


def parse_oem_code_page(text: str) -> int | None:
    r"""The OEMCP value in ``reg query ...\Nls\CodePage /v OEMCP`` output; None if it is not there."""
    match = _OEMCP.search(text)
    return int(match["code_page"]) if match else None


def codec_for_code_page(code_page: int) -> str:
    """Python's codec for a Windows code page (65001 is UTF-8); ValueError if Python has none."""
    name = "utf-8" if code_page == _UTF8_CODE_PAGE else f"cp{code_page}"
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ValueError(f"Windows code page {code_page} has no Python codec") from None


def decode_output(data: bytes, codec: str) -> str:
    """A console tool's output in ``codec`` (lenient: a byte that does not decode becomes U+FFFD)."""
    return data.decode(codec, errors="replace")


# ------------------------------------------------------------------------------------------------- INF


@dataclass(frozen=True)
class InfInfo:
    """The two things vmtest needs from a driver package's INF."""

    service_names: tuple[str, ...]
    """Names from ``AddService = <name>, ...`` directives, in file order."""
    hardware_ids: tuple[str, ...]
    """Hardware ids from models lines (``%Desc% = Section, <hwid>[, <compatible id>...]``)."""

    @property
    def root_hardware_ids(self) -> tuple[str, ...]:
        r"""The ``root\...`` hardware ids: a root-enumerated (software) device the driver can attach to."""
        return tuple(hwid for hwid in self.hardware_ids if hwid.lower().startswith("root\\"))


_INF_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")
_INF_DIRECTIVE = re.compile(r"^\s*(?P<key>[^=]+?)\s*=\s*(?P<value>.*?)\s*$")


def decode_inf(data: bytes) -> str:
    """Decode an INF file: UTF-16 when it starts with a byte-order mark, else UTF-8 (lenient)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    return data.decode("utf-8-sig", errors="replace")


def _strip_inf_comment(line: str) -> str:
    in_quotes = False
    for index, char in enumerate(line):
        if char == '"':
            in_quotes = not in_quotes
        elif char == ";" and not in_quotes:
            return line[:index]
    return line


def _models_sections(lines: list[str]) -> set[str]:
    """Names of the models sections that [Manufacturer] points at (with their TargetOS decorations)."""
    names: set[str] = set()
    section = ""
    for line in lines:
        header = _INF_SECTION.match(line)
        if header is not None:
            section = header["name"].strip().lower()
            continue
        directive = _INF_DIRECTIVE.match(line)
        if section == "manufacturer" and directive is not None:
            base, *decorations = [part.strip() for part in directive["value"].split(",")]
            names.add(base.lower())
            names.update(f"{base}.{decoration}".lower() for decoration in decorations if decoration)
    return names


# INF Strings section (https://learn.microsoft.com/windows-hardware/drivers/install/inf-strings-section):
# "%strkey%" tokens anywhere in the INF are replaced by the value of strkey in [Strings] (or a
# [Strings.<LanguageID>] section); keys are case-insensitive; "%%" stands for one literal percent sign.
# Tokens that name no string (DIRIDs such as %13%) stay as written.
_STRING_TOKEN = re.compile(r"%([^%\s]*)%")


def _strings(lines: list[str]) -> dict[str, str]:
    """The [Strings] section's keys (lower-cased) and values; the plain section wins over a localised one."""
    plain: dict[str, str] = {}
    localised: dict[str, str] = {}
    target: dict[str, str] | None = None
    for line in lines:
        header = _INF_SECTION.match(line)
        if header is not None:
            name = header["name"].strip().lower()
            target = plain if name == "strings" else localised if name.startswith("strings.") else None
            continue
        directive = _INF_DIRECTIVE.match(line)
        if target is not None and directive is not None:
            value = directive["value"].strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('""', '"')
            target.setdefault(directive["key"].strip().lower(), value)
    return {**localised, **plain}


def _expand(value: str, strings: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match[1]
        if not key:
            return "%"
        return strings.get(key.lower(), match[0])

    return _STRING_TOKEN.sub(replace, value)


def parse_inf(text: str) -> InfInfo:
    """Collect the AddService names and the models' hardware ids of an INF (or INX) file.

    ``%strkey%`` tokens are expanded from the [Strings] section first.
    """
    raw = [_strip_inf_comment(line) for line in text.splitlines()]
    strings = _strings(raw)
    lines = [line if _INF_SECTION.match(line) else _expand(line, strings) for line in raw]
    models = _models_sections(lines)
    services: list[str] = []
    hardware_ids: list[str] = []
    section = ""
    for line in lines:
        header = _INF_SECTION.match(line)
        if header is not None:
            section = header["name"].strip().lower()
            continue
        directive = _INF_DIRECTIVE.match(line)
        if directive is None:
            continue
        values = [part.strip().strip('"') for part in directive["value"].split(",")]
        if directive["key"].strip().lower() == "addservice" and values[0]:
            services.append(values[0])
        elif section in models and len(values) >= 2 and values[1]:
            hardware_ids.append(values[1])
    log.debug("INF: services %s, hardware ids %s", services, hardware_ids)
    return InfInfo(service_names=tuple(services), hardware_ids=tuple(hardware_ids))


_REG_VALUE = re.compile(r"^\s+(?P<name>\S+)\s+(?P<type>REG_\w+)\s+(?P<data>.*?)\s*$", re.MULTILINE)


def parse_reg_values(text: str) -> dict[str, str]:
    """The values ``reg query KEY`` printed, by name (``    Name    REG_TYPE    data`` lines).

    The type names are not translated, so this reads a German guest's output too (Microsoft Learn,
    "reg query"). Value names with spaces are not supported (none that vmtest reads has one).
    """
    return {match["name"]: match["data"] for match in _REG_VALUE.finditer(text)}
