r"""The Windows probes: one harmless command (or a few) per assumption vmtest makes about a Windows guest.

Each check states what it assumes, runs its commands with a deadline, and compares what came back.
Registry values are read with ``reg query``, whose value lines (``    Name    REG_SZ    data``) keep
their type names untranslated on every UI language (Microsoft Learn, "reg query"), so they are read
the same way on a German image. Service control goes through ``sc.exe``, whose exit status is the
Win32 error of the failed call (Microsoft Learn, "sc.exe query"/"sc.exe create"; the text around it is
translated). Sources for each row are in ``docs/WINDOWS.md``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from vmtest.capture.debugview import parse_tasklist_pids
from vmtest.config.windows import Windows11GuestConfig
from vmtest.drivers.verifier import REGISTRY_QUERY, parse_registry
from vmtest.drivers.windows_output import parse_bcdedit_testsigning, parse_reg_values
from vmtest.probe.context import ProbeContext, ProbeSettings
from vmtest.probe.model import Check, Observation, Status

__all__ = ["WINDOWS_CHECKS", "CheckFunction", "windows_settings"]

ENGLISH_CODE_PAGE = 437
ENGLISH_LANGUAGE = "0409"
WINDOWS_11_FIRST_BUILD = 22000  # Microsoft Learn, "Windows 11 release information": 10.0.22000
ERROR_SERVICE_DOES_NOT_EXIST = 1060
DEBUG_PRINT_INFO_BIT = 0x8  # DPFLTR_INFO_LEVEL (3) is bit 3 of a component's mask ("Reading and Filtering
# Debugging Messages", Microsoft Learn); DbgPrint sends at that level for the DEFAULT component.
PROBE_SERVICE = "vmtestprobe"
PROBE_FOLDER = r"C:\vmtest\probe"

_SC_FAILED_ENGLISH = re.compile(r"FAILED (?P<code>\d+):")
_SC_FAILED_ANY = re.compile(r"\b(?P<code>\d{1,5})\s*:")

CheckFunction = Callable[[ProbeContext], Observation]


def _number(data: str) -> int | None:
    try:
        return int(data, 0)
    except ValueError:
        return None


OS = Check(
    "os",
    "Windows build and edition",
    "The guest runs Windows 11 (build 22000 or later), and cmd.exe reports it with `ver`.",
    "CurrentBuild >= 22000",
    rows=("W-OS-BUILD",),
    needed_by_run=True,
)


def check_os(ctx: ProbeContext) -> Observation:
    """The build, edition and display version from the registry."""
    raw = ctx.run(["reg", "query", r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion"])
    values = parse_reg_values(raw.output)
    build = values.get("CurrentBuild", "")
    seen = f"build {build or '?'}, {values.get('EditionID', '?')} {values.get('DisplayVersion', '')}".strip()
    if raw.exit_code != 0 or not build.isdigit():
        return Observation(
            OS, Status.FAILED, f"reg query gave no CurrentBuild ({raw.exit_code})", "", ctx.take_raw()
        )
    if int(build) < WINDOWS_11_FIRST_BUILD:
        advice = "this is not Windows 11: vmtest's windows11 profile and its sources assume Windows 11"
        return Observation(OS, Status.DIFFERS, seen, advice, ctx.take_raw())
    return Observation(OS, Status.AS_EXPECTED, seen, "", ctx.take_raw())


SHELL = Check(
    "shell",
    "OpenSSH default shell",
    "Commands over SSH run in cmd.exe (OpenSSH's default shell), which is how vmtest quotes them.",
    "`ver` prints 'Microsoft Windows [Version 10.0.…]'",
    rows=("W-SSH-SHELL",),
    needed_by_run=True,
)


def check_shell(ctx: ProbeContext) -> Observation:
    """``ver`` is a cmd.exe built-in; under PowerShell it is not a command."""
    raw = ctx.run(["ver"])
    default = ctx.run(["reg", "query", r"HKLM\SOFTWARE\OpenSSH", "/v", "DefaultShell"])
    configured = parse_reg_values(default.output).get("DefaultShell")
    where = f" (HKLM\\SOFTWARE\\OpenSSH DefaultShell = {configured})" if configured else ""
    if raw.exit_code == 0 and "Windows" in raw.output and "[" in raw.output:
        return Observation(
            SHELL, Status.AS_EXPECTED, f"cmd.exe{where}: {raw.output.strip()}", "", ctx.take_raw()
        )
    advice = (
        "vmtest quotes commands for cmd.exe: remove the DefaultShell value under HKLM\\SOFTWARE\\OpenSSH "
        "(or set it to C:\\Windows\\System32\\cmd.exe) in the image, or use guest.transport: smb"
    )
    return Observation(
        SHELL, Status.DIFFERS, f"`ver` did not run as in cmd.exe{where}", advice, ctx.take_raw()
    )


CODE_PAGE = Check(
    "code-page",
    "OEM code page",
    "Console programs write in the OEM code page; English images use 437.",
    "OEMCP = 437 (another code page is decoded, not a problem)",
    rows=("W-OEM-CODEPAGE",),
)


def check_code_page(ctx: ProbeContext) -> Observation:
    """The OEM code page from the registry; later outputs are decoded with it."""
    raw = ctx.run(["reg", "query", r"HKLM\SYSTEM\CurrentControlSet\Control\Nls\CodePage", "/v", "OEMCP"])
    page = _number(parse_reg_values(raw.output).get("OEMCP", ""))
    if page is None:
        return Observation(CODE_PAGE, Status.FAILED, "no OEMCP value", "", ctx.take_raw())
    decoded = ctx.use_code_page(page)
    if page == ENGLISH_CODE_PAGE:
        return Observation(CODE_PAGE, Status.AS_EXPECTED, f"code page {page}", "", ctx.take_raw())
    if not decoded:
        advice = f"Python has no codec for code page {page}: guest text is decoded as UTF-8 with replacements"
        return Observation(CODE_PAGE, Status.DIFFERS, f"code page {page}", advice, ctx.take_raw())
    advice = f"guest text is in code page {page}: vmtest decodes it as cp{page}; nothing to do"
    return Observation(CODE_PAGE, Status.HANDLED, f"code page {page}", advice, ctx.take_raw())


LANGUAGE = Check(
    "ui-language",
    "Installed UI language",
    "Tool output (sc.exe, bcdedit, certutil) is in English on an en-US image.",
    f"InstallLanguage = {ENGLISH_LANGUAGE} (another language is handled through exit statuses)",
    rows=(
        "W-SC-LOCALISED",
        "W-BCDEDIT-LOCALISED",
    ),
)


def check_language(ctx: ProbeContext) -> Observation:
    """The installed language; with another one, vmtest reads exit statuses rather than text."""
    raw = ctx.run(
        ["reg", "query", r"HKLM\SYSTEM\CurrentControlSet\Control\Nls\Language", "/v", "InstallLanguage"]
    )
    language = parse_reg_values(raw.output).get("InstallLanguage")
    if language is None:
        return Observation(LANGUAGE, Status.FAILED, "no InstallLanguage value", "", ctx.take_raw())
    if language.upper() == ENGLISH_LANGUAGE:
        return Observation(LANGUAGE, Status.AS_EXPECTED, f"language {language} (en-US)", "", ctx.take_raw())
    advice = (
        f"the image's language is {language}: sc.exe, bcdedit and certutil print translated text; vmtest "
        "takes their exit statuses first, so nothing to do (see the sc.exe checks below)"
    )
    return Observation(LANGUAGE, Status.HANDLED, f"language {language}", advice, ctx.take_raw())


SC_MISSING = Check(
    "sc-missing-service",
    "sc.exe on a service that does not exist",
    "sc.exe's exit status is the Win32 error of the failed call (1060), whatever the UI language.",
    "exit status 1060; on English images the line '[SC] … FAILED 1060:'",
    rows=("W-SC-1060", "W-SC-EXIT-STATUS", "W-SC-FAILED-LINE"),
    needed_by_run=True,
)


def check_sc_missing(ctx: ProbeContext) -> Observation:
    """``sc.exe query`` of a service that does not exist."""
    raw = ctx.run(["sc.exe", "query", f"{PROBE_SERVICE}-missing"])
    english = _SC_FAILED_ENGLISH.search(raw.output)
    first = next((line.strip() for line in raw.output.splitlines() if line.strip()), "(no output)")
    seen = f"exit status {raw.exit_code}: {first}"
    if raw.exit_code != ERROR_SERVICE_DOES_NOT_EXIST:
        advice = (
            "sc.exe's exit status is not the Win32 error here: vmtest cannot tell a missing service from "
            "other failures on this image; report this with the fidelity report attached"
        )
        return Observation(SC_MISSING, Status.DIFFERS, seen, advice, ctx.take_raw())
    if english is None:
        advice = "this image's sc.exe prints translated text: vmtest reads the exit status; nothing to do"
        return Observation(SC_MISSING, Status.HANDLED, seen, advice, ctx.take_raw())
    return Observation(SC_MISSING, Status.AS_EXPECTED, seen, "", ctx.take_raw())


SC_BAD_IMAGE = Check(
    "sc-not-a-driver",
    "Loading a file that is not a driver",
    "A kernel service whose file is not a driver can be created and deleted, and `sc start` fails "
    "with the Win32 error as its exit status (documented failure: 193 or 577; which one is a guess).",
    "create 0, start fails with exit status = the code in its FAILED line, delete 0",
    rows=("W-SC-SYNTAX", "W-SC-EXIT-STATUS", "W-SC-NOT-A-DRIVER"),
    needed_by_run=True,
)


def check_sc_not_a_driver(ctx: ProbeContext) -> Observation:
    """Create, start and delete of a kernel service whose binary is a text file."""
    binary = PROBE_FOLDER + r"\not-a-driver.sys"
    ctx.run(["cmd.exe", "/c", "mkdir", PROBE_FOLDER])
    ctx.run(["cmd.exe", "/c", "copy", "/y", r"C:\Windows\win.ini", binary])
    created = ctx.run(["sc.exe", "create", PROBE_SERVICE, "type=", "kernel", "binPath=", binary])
    started = ctx.run(["sc.exe", "start", PROBE_SERVICE])
    deleted = ctx.run(["sc.exe", "delete", PROBE_SERVICE])
    ctx.run(["cmd.exe", "/c", "rmdir", "/s", "/q", PROBE_FOLDER])
    named = _SC_FAILED_ENGLISH.search(started.output) or _SC_FAILED_ANY.search(started.output)
    code = int(named["code"]) if named else None
    seen = f"create {created.exit_code}, start {started.exit_code} (line says {code}), "
    seen += f"delete {deleted.exit_code}"
    raw = ctx.take_raw()
    if created.exit_code != 0 or deleted.exit_code != 0:
        advice = "vmtest creates and deletes a kernel service per run: run the probe as an administrator"
        return Observation(SC_BAD_IMAGE, Status.DIFFERS, seen, advice, raw)
    if started.exit_code in (0, None):
        advice = "sc start of a text file did not fail: vmtest's load checks cannot be trusted here"
        return Observation(SC_BAD_IMAGE, Status.DIFFERS, seen, advice, raw)
    if code is not None and code != started.exit_code:
        advice = f"sc start's exit status ({started.exit_code}) differs from the code it printed ({code})"
        return Observation(SC_BAD_IMAGE, Status.DIFFERS, seen, advice, raw)
    return Observation(SC_BAD_IMAGE, Status.AS_EXPECTED, seen, "", raw)


BCDEDIT = Check(
    "bcdedit",
    "Boot settings: test signing and kernel debugging",
    "Test signing is on, so a test-signed driver loads; kernel debugging is on exactly when guest.kd is.",
    "bcdedit /enum {current}: testsigning Yes; debug Yes with kd",
    rows=("W-BCDEDIT-TESTSIGNING", "W-BCDEDIT-DEBUG"),
    needed_by_run=True,
)
_DEBUG = re.compile(r"^\s*debug\s+(?P<value>\S+)\s*$", re.MULTILINE | re.IGNORECASE)


def check_bcdedit(ctx: ProbeContext) -> Observation:
    """``bcdedit /enum {current}``: exit status first, then the testsigning and debug elements."""
    raw = ctx.run(["bcdedit", "/enum", "{current}"])
    want_kd = ctx.settings.kd
    if raw.exit_code != 0:
        advice = "bcdedit needs an elevated session: log in as the image's administrator"
        return Observation(
            BCDEDIT, Status.FAILED, f"bcdedit exit status {raw.exit_code}", advice, ctx.take_raw()
        )
    try:
        signing = parse_bcdedit_testsigning(raw.output)
    except ValueError as error:
        return Observation(BCDEDIT, Status.FAILED, str(error), "", ctx.take_raw())
    debug = _DEBUG.search(raw.output)
    debug_on = debug is not None and debug["value"].lower() in ("yes", "on", "true")
    seen = f"testsigning {'Yes' if signing else 'No'}, debug {'Yes' if debug_on else 'No'}"
    problems = []
    if not signing:
        problems.append("turn test signing on: bcdedit /set testsigning on, then reboot (in the image)")
    if want_kd and not debug_on:
        problems.append(
            "guest.kd is on but kernel debugging is off in the image: rebuild it with kernel debugging, "
            "or set guest.kd: false to read DbgPrint through DebugView"
        )
    if problems:
        return Observation(BCDEDIT, Status.DIFFERS, seen, "; ".join(problems), ctx.take_raw())
    return Observation(BCDEDIT, Status.AS_EXPECTED, seen, "", ctx.take_raw())


SECURE_BOOT = Check(
    "secure-boot",
    "Secure Boot state",
    "Secure Boot is off (an enrolled OVMF VARS file turns it on, and then test signing is ignored).",
    "UEFISecureBootEnabled = 0",
    rows=("W-SECUREBOOT-VARS",),
    needed_by_run=True,
)


def check_secure_boot(ctx: ProbeContext) -> Observation:
    """The Secure Boot state Windows recorded at boot."""
    raw = ctx.run(
        [
            "reg",
            "query",
            r"HKLM\SYSTEM\CurrentControlSet\Control\SecureBoot\State",
            "/v",
            "UEFISecureBootEnabled",
        ]
    )
    value = _number(parse_reg_values(raw.output).get("UEFISecureBootEnabled", ""))
    if value is None:  # firmware without Secure Boot support records no state (msinfo32: "Unsupported")
        advice = "the firmware does not report Secure Boot (unsupported): it is off, test signing works"
        return Observation(SECURE_BOOT, Status.HANDLED, "no Secure Boot state", advice, ctx.take_raw())
    if value:
        advice = (
            "Secure Boot is on: boot with OVMF variables without enrolled keys (OVMF_VARS_4M.fd, not the "
            ".ms variants) so that test signing takes effect"
        )
        return Observation(SECURE_BOOT, Status.DIFFERS, "Secure Boot on", advice, ctx.take_raw())
    return Observation(SECURE_BOOT, Status.AS_EXPECTED, "Secure Boot off", "", ctx.take_raw())


CERTIFICATES = Check(
    "certificate-stores",
    "LocalMachine Root and TrustedPublisher stores",
    "vmtest can read (and so add the driver's test certificate to) both LocalMachine stores.",
    "certutil -store Root / TrustedPublisher exit status 0",
    rows=("W-CERTUTIL-EXIT",),
)
_CERT_SUBJECT = re.compile(r"^Subject:\s*(?P<subject>.+?)\s*$", re.MULTILINE)


def check_certificates(ctx: ProbeContext) -> Observation:
    """List both stores; their subjects go in the report."""
    seen = []
    failed = False
    for store in ("Root", "TrustedPublisher"):
        raw = ctx.run(["certutil", "-store", store])
        subjects = _CERT_SUBJECT.findall(raw.output)
        seen.append(f"{store}: exit {raw.exit_code}, {len(subjects)} certificate(s)")
        failed = failed or raw.exit_code != 0
    status = Status.DIFFERS if failed else Status.AS_EXPECTED
    advice = (
        "certutil could not read a LocalMachine store: run as the image's administrator" if failed else ""
    )
    return Observation(CERTIFICATES, status, "; ".join(seen), advice, ctx.take_raw())


PRINT_FILTER = Check(
    "debug-print-filter",
    "Debug Print Filter",
    "DbgPrint (DEFAULT component) and DbgPrintEx(DPFLTR_IHVDRIVER_ID, INFO) reach the debugger: the "
    "Debug Print Filter masks of DEFAULT and IHVDRIVER include the INFO level bit (0x8).",
    "DEFAULT and IHVDRIVER masks with bit 0x8",
    rows=("W-DPF-COMPONENTS",),
    needed_by_run=True,
)


def check_print_filter(ctx: ProbeContext) -> Observation:
    """The Debug Print Filter key's component masks."""
    raw = ctx.run(
        ["reg", "query", r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Debug Print Filter"]
    )
    values = {name.upper(): _number(data) for name, data in parse_reg_values(raw.output).items()}
    seen = (
        ", ".join(f"{name} {value:#x}" for name, value in values.items() if value is not None) or "no values"
    )
    closed = [name for name in ("DEFAULT", "IHVDRIVER") if not (values.get(name) or 0) & DEBUG_PRINT_INFO_BIT]
    if closed:
        advice = (
            f"DbgPrint at INFO level is filtered for {', '.join(closed)}: set REG_DWORD 0xf under "
            "HKLM\\SYSTEM\\CurrentControlSet\\Control\\Session Manager\\Debug Print Filter (the image "
            "builder does) and reboot"
        )
        return Observation(PRINT_FILTER, Status.DIFFERS, seen, advice, ctx.take_raw())
    return Observation(PRINT_FILTER, Status.AS_EXPECTED, seen, "", ctx.take_raw())


DRIVER_TOOLS = Check(
    "driver-tools",
    "pnputil and devgen",
    "pnputil is in the guest (INF packages); devgen is on PATH (root-enumerated devices in INF mode).",
    "pnputil /? exit 0; devgen present (needed only for INF packages)",
    rows=("W-DEVGEN-FIRST", "W-PNPUTIL-259"),
)


def check_driver_tools(ctx: ProbeContext) -> Observation:
    """``pnputil /?`` and where devgen is."""
    pnputil = ctx.run(["pnputil", "/?"])
    devgen = ctx.run(["where", "devgen"])
    devgen_path = (
        devgen.output.strip().splitlines()[0] if devgen.exit_code == 0 and devgen.output.strip() else ""
    )
    seen = f"pnputil /? exit {pnputil.exit_code}; devgen {devgen_path or 'not found'}"
    if pnputil.exit_code != 0:
        return Observation(
            DRIVER_TOOLS,
            Status.DIFFERS,
            seen,
            "pnputil is missing: INF packages cannot be installed",
            ctx.take_raw(),
        )
    if not devgen_path:
        advice = "devgen (WDK tools) is not on PATH: only needed for INF packages of root-enumerated drivers"
        return Observation(DRIVER_TOOLS, Status.HANDLED, seen, advice, ctx.take_raw())
    return Observation(DRIVER_TOOLS, Status.AS_EXPECTED, seen, "", ctx.take_raw())


DEBUGVIEW = Check(
    "debugview-survives",
    "DbgViewCLI started the way vmtest starts it stays alive",
    "A DbgViewCLI started by vmtest over the transport outlives the command that started it "
    "(Win32-OpenSSH puts a session's processes in a job object that can kill them: #1195, #2452).",
    "dbgviewcli.exe still running a few seconds after the start command returned",
    rows=("W-SSH-JOB", "W-WMI-CREATE", "W-TASKLIST-CSV", "W-DBGVIEW-ARGS"),
    needed_by_run=True,
)


def check_debugview(ctx: ProbeContext) -> Observation:
    """Look for the run's own DbgViewCLI a few seconds after the capture started it (never start another)."""
    program = ctx.settings.debugview_program
    if not program:
        return Observation(
            DEBUGVIEW, Status.NOT_RUN, "DebugView is not used (kernel debugging)", "", ctx.take_raw()
        )
    time.sleep(ctx.settings.debugview_watch)  # the observation window itself, not a wait for an answer
    image = program.rsplit("\\", 1)[-1]
    pid = ctx.settings.debugview_pid
    wanted = f"PID eq {pid}" if pid is not None else f"IMAGENAME eq {image}"
    listed = ctx.run(["tasklist", "/FI", wanted, "/FO", "CSV", "/NH"])
    if parse_tasklist_pids(listed.output):
        seen = f"{image} running (PID {pid})" if pid is not None else f"{image} running"
        return Observation(DEBUGVIEW, Status.AS_EXPECTED, seen, "", ctx.take_raw())
    advice = (
        "DbgViewCLI was gone a few seconds after vmtest started it (the SSH session's job object ends what "
        "it starts): use the kernel debugger (guest.kd: true), or leave guest.debugview.start_command unset "
        "so that vmtest starts it through WMI, outside the session"
    )
    return Observation(DEBUGVIEW, Status.DIFFERS, f"{image} not running", advice, ctx.take_raw())


VERIFIER = Check(
    "driver-verifier",
    "Driver Verifier's tools and settings",
    "verifier.exe runs, and the settings for the next boot are the registry values VerifyDriverLevel and "
    "VerifyDrivers (how driver.verifier checks them); the outputs are recorded to confirm their layout.",
    "verifier /querysettings exit 0; reg query of Memory Management readable",
    rows=("W-VERIFIER-REGISTRY", "W-VERIFIER-QUERY"),
)


def check_verifier(ctx: ProbeContext) -> Observation:
    """Record what verifier and the registry say now (nothing is changed)."""
    settings = ctx.run(["verifier", "/querysettings"])
    ctx.run(["verifier", "/query"])
    registry = ctx.run(REGISTRY_QUERY)
    level, drivers = parse_registry(registry.output)
    named = " ".join(drivers) or "-"
    seen = f"verifier exit {settings.exit_code}; VerifyDriverLevel {level:#x}, VerifyDrivers {named}"
    if settings.exit_code != 0 or registry.exit_code != 0:
        advice = "Driver Verifier cannot be used here (driver.verifier): run as the image's administrator"
        return Observation(VERIFIER, Status.DIFFERS, seen, advice, ctx.take_raw())
    return Observation(VERIFIER, Status.AS_EXPECTED, seen, "", ctx.take_raw())


WINDOWS_CHECKS: tuple[tuple[Check, CheckFunction], ...] = (
    (CODE_PAGE, check_code_page),  # first: later outputs are decoded with it
    (OS, check_os),
    (SHELL, check_shell),
    (LANGUAGE, check_language),
    (SC_MISSING, check_sc_missing),
    (SC_BAD_IMAGE, check_sc_not_a_driver),
    (BCDEDIT, check_bcdedit),
    (SECURE_BOOT, check_secure_boot),
    (CERTIFICATES, check_certificates),
    (PRINT_FILTER, check_print_filter),
    (DRIVER_TOOLS, check_driver_tools),
    (DEBUGVIEW, check_debugview),
    (VERIFIER, check_verifier),
)
"""Every Windows check, in the order it runs."""


def windows_settings(guest: Windows11GuestConfig) -> ProbeSettings:
    """What the Windows checks compare the guest with, from its configuration."""
    return ProbeSettings(
        kd=guest.kd, debugview_program=guest.debugview.program if guest.debugview_enabled else ""
    )
