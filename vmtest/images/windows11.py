r"""Build the Windows 11 golden image: an unattended install from the user's ISO, provisioned, sealed.

:func:`plan_windows_image` decides everything first (paths, the answer ISO's contents, the QEMU command,
the deadlines) and creates the build's run directory; ``--dry-run`` prints that plan and stops.
:func:`build_windows_image` then:

1. renders ``images/windows11/autounattend.xml.in`` (values escaped by the XML serializer) and builds
   the answer ISO with xorriso (or genisoimage): ``Autounattend.xml``, the provisioning scripts, their
   ``settings.json``, the user's Win32-OpenSSH zip and tools. It holds the password (base64 UTF-16, not
   encryption), so it is created 0600 in the run directory and deleted when the build ends;
2. creates a blank qcow2 and boots the installer (:class:`Windows11InstallerProfile`: the Windows
   profile plus both CD-ROMs) through vmtest's :class:`Machine`, pressing Enter over QMP during the
   first minute to get past "Press any key to boot from CD or DVD" (windows11-vm.md §2.2);
3. follows Setup and provisioning through the markers the guest prints on COM2 (see
   ``images/windows11/README.md``) and a screenshot every minute (and at each marker), within one
   overall deadline;
4. after ``VMTEST-PROVISION-DONE`` waits for the guest to power off, commits the install into the
   disk, keeps the UEFI variable store (it holds Windows' boot entry) and writes ``image.json``: what
   was configured (never the password), the SSH host key, the build time, sha256 of the disk, the
   evaluation licence's start and expiry.

An image lives in ``<cache_root>/windows11/<name>/`` (``current`` points at the newest) unless
``--output`` names its folder. The work happens in ``.build-<name>`` next to it, renamed into place
at the end, so a half-built image is never taken for one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from vmtest.config.models import Accelerator, MachineConfig, Timeouts
from vmtest.config.windows import (
    DEFAULT_OVMF_CODE,
    DEFAULT_OVMF_VARS,
    check_cpu_flag,
    check_windows_user_name,
)
from vmtest.errors import (
    EXIT_CONFIG,
    EXIT_INFRA,
    AcceleratorError,
    ConfigError,
    ConfigProblem,
    DeadlineExceeded,
    GuestCrashed,
    ImageError,
    InfraError,
    MachineExited,
)
from vmtest.images.keys import CLIENT_KEY_PATH, CLIENT_PUBLIC_KEY_PATH, make_client_key
from vmtest.images.linux import default_cache_root
from vmtest.machine.accel import probe_kvm
from vmtest.machine.bugcheck import bugcheck_from_qmp_event
from vmtest.machine.machine import Machine
from vmtest.machine.process import find_qemu
from vmtest.machine.profiles.windows11 import (
    KD_BAUD_RATE,
    KD_DEBUG_PORT,
    READY_MARKER,
    TPM_STATE,
    TpmSettings,
    Windows11InstallerProfile,
    WindowsHardware,
)
from vmtest.machine.rundir import RunDirectory
from vmtest.progress import Progress, make_progress

__all__ = [
    "MANIFEST_NAME",
    "MARKERS",
    "AnswerSettings",
    "Deadlines",
    "IsoEntry",
    "Markers",
    "ProvisionLog",
    "WindowsImage",
    "WindowsImageOptions",
    "WindowsImagePlan",
    "build_answer_iso",
    "build_windows_image",
    "encode_password",
    "find_iso_tool",
    "find_windows_image",
    "guest_settings",
    "image_build_windows11_command",
    "plan_windows_image",
    "render_answer_file",
    "windows_files_dir",
]

logger = logging.getLogger(__name__)

BUILD_COMMAND = "vmtest image build windows11"
MANIFEST_NAME = "image.json"
MANIFEST_FORMAT = 1
IMAGE_KIND = "windows11"
DEFAULT_USER = "vmtest"
DEFAULT_PASSWORD_ENV = "VMTEST_WINDOWS_PASSWORD"
DEFAULT_COMPUTER_NAME = "VMTEST-WIN11"
EVALUATION_DAYS = 90  # windows11-vm.md §6.1
EXPIRY_WARNING_DAYS = 7

# The answer ISO.
ANSWER_FILE = "Autounattend.xml"  # found at the root of removable media (§2.1)
ISO_FOLDER = "vmtest"
ISO_LABEL = "VMTEST_ANSWER"
ANSWER_ISO = "answer.iso"
OPENSSH_ZIP = f"{ISO_FOLDER}/OpenSSH-Win64.zip"
SETTINGS_FILE = f"{ISO_FOLDER}/settings.json"
SCRIPTS = ("common.ps1", "provision.ps1", "ready.ps1")
TEMPLATE = "autounattend.xml.in"

# What the provisioning sets up in the guest.
GUEST_FOLDER = r"C:\vmtest"
READY_TASK = "vmtest-ready"
READY_WAIT = 300
DEBUG_PRINT_FILTER = 0xF  # every DbgPrint level of component DEFAULT (§2.8, §4.1)
CRASH_DUMPS: Mapping[str, tuple[int, bool]] = {  # CrashDumpEnabled, FilterPages
    "complete": (1, False),
    "kernel": (2, False),
    "small": (3, False),
    "automatic": (7, False),
    "active": (1, True),
}
CrashDump = Literal["complete", "kernel", "small", "automatic", "active"]
# The first logon finds the provisioning script on whichever drive holds it (rgl/windows-vagrant's way).
PROVISION_COMMAND = (
    'powershell.exe -NoLogo -NoProfile -ExecutionPolicy Bypass -Command "Get-PSDrive -PSProvider FileSystem'
    " | ForEach-Object { $p = Join-Path $_.Root 'vmtest\\provision.ps1'; if (Test-Path -LiteralPath $p)"
    " { & $p -Source (Join-Path $_.Root 'vmtest'); exit $LASTEXITCODE } }\""
)

# Layout of a built image, relative to its folder.
DISK_PATH = "disk.qcow2"
EFIVARS_PATH = "efivars.fd"
TPM_PATH = "tpm"
HOST_PUBLIC_KEY_PATH = "keys/ssh_host_ed25519_key.pub"

# The answer file's XML namespaces.
UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
WCM_NS = "http://schemas.microsoft.com/WMIConfig/2002/State"
TEMPLATE_NS = "urn:vmtest:template"

QUICK = 60.0
SLOW = 1800.0  # committing a ~20 GB install, hashing a 7 GB ISO
KVM_PROBE_TIMEOUT = 8.0
RUN_STATE_POLL = 5.0
CONSOLE_DRAIN = 5.0
FAILED_BUILD_SHUTDOWN = 10.0  # a failed install is discarded: no long wait for a graceful power-off
DEAD_RUN_STATES = frozenset({"internal-error", "io-error"})
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_COMPUTER_NAME = re.compile(r"^(?![0-9]+$)[A-Za-z0-9-]{1,15}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_INPUT_LOCALE = re.compile(r"^([0-9A-Fa-f]{4}:[0-9A-Fa-f]{8}|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
_PRODUCT_KEY = re.compile(r"^([A-Z0-9]{5}-){4}[A-Z0-9]{5}$")
_HOST_KEY = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]+=*$")


# --------------------------------------------------------------------------------------------------
# The markers the guest prints on COM2
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Markers:
    """The first word of each line the guest prints for vmtest on COM2 (see images/windows11/README.md)."""

    setup: str = "VMTEST-SETUP"  # + the answer-file pass: windowsPE, specialize, firstlogon
    step: str = "VMTEST-PROVISION-STEP"  # + "i/n: what"
    warning: str = "VMTEST-WARN"  # + text: something optional failed
    failed: str = "VMTEST-PROVISION-FAILED"  # + "what: why": provisioning stopped
    host_key: str = "VMTEST-HOSTKEY"  # + "ssh-ed25519 AAAA..."
    os_info: str = "VMTEST-OSINFO"  # + JSON
    licence: str = "VMTEST-LICENSE"  # + JSON
    done: str = "VMTEST-PROVISION-DONE"  # a shutdown is scheduled
    ready: str = READY_MARKER  # at every boot, once SSH/SMB listen


MARKERS = Markers()


@dataclass
class ProvisionLog:
    """What the guest reported on COM2 during the build; :meth:`feed` takes one line at a time."""

    passes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failure: str | None = None
    done: bool = False
    host_key: str | None = None
    os_info: dict[str, Any] | None = None
    licence: dict[str, Any] | None = None

    @property
    def last(self) -> str:
        """The latest progress, for error messages."""
        if self.steps:
            return f"provisioning step {self.steps[-1]}"
        if self.passes:
            return f"Setup pass {self.passes[-1]}"
        return "no marker yet (Setup never read the answer file, or is still copying files)"

    def feed(self, line: str) -> str | None:
        """Take one console line; return a note for people when it carried a marker, else None."""
        at = line.find("VMTEST-")
        if at < 0:
            return None
        word, _, rest = line[at:].strip().partition(" ")
        rest = rest.strip()
        if word == MARKERS.setup:
            self.passes.append(rest)
            return f"Setup: {rest} pass"
        if word == MARKERS.step:
            self.steps.append(rest)
            return f"provisioning {rest}"
        if word == MARKERS.warning:
            self.warnings.append(rest)
            return f"guest warning: {rest}"
        if word == MARKERS.failed:
            self.failure = rest or "(no reason given)"
            return f"provisioning FAILED: {self.failure}"
        if word == MARKERS.done:
            self.done = True
            return "provisioning done; the guest shuts down"
        if word == MARKERS.host_key:
            return self._host_key(rest)
        if word in (MARKERS.os_info, MARKERS.licence):
            return self._json(word, rest)
        return None

    def _host_key(self, text: str) -> str:
        if not _HOST_KEY.match(text):
            self.warnings.append(f"unreadable SSH host key line: {text[:200]}")
            return "guest printed an unreadable SSH host key"
        self.host_key = text
        return f"SSH host key: {text[:40]}..."

    def _json(self, word: str, text: str) -> str:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self.warnings.append(f"unreadable {word} line: {text[:200]}")
            return f"guest printed an unreadable {word} line"
        if word == MARKERS.os_info:
            self.os_info = value
            return f"Windows: {value.get('caption')} {value.get('version')}"
        self.licence = value
        return f"licence: {value.get('description')}, {value.get('grace_minutes')} minutes left"


# --------------------------------------------------------------------------------------------------
# The built image
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowsImage:
    """A sealed Windows 11 golden image: its disk and UEFI variables, and what it was built with."""

    root: Path
    disk: Path
    efivars: Path
    tpm_state: Path | None
    client_key: Path | None
    host_key: str | None
    user: str
    ready_marker: str
    kernel_debug: bool
    tpm: bool
    openssh: bool
    ovmf_code: Path
    licence_expires: datetime.date | None

    @classmethod
    def load(cls, path: Path) -> WindowsImage:
        """Read the image in folder ``path`` (or whose disk ``path`` is); ImageError if it is not one."""
        root = path.parent if path.is_file() else path
        manifest = read_manifest(root)
        try:
            paths = manifest["paths"]
            configured = manifest["configured"]
            expires = manifest["licence"].get("expires")
            image = cls(
                root=root,
                disk=root / paths["disk"],
                efivars=root / paths["efivars"],
                tpm_state=root / paths["tpm_state"] if paths.get("tpm_state") else None,
                client_key=root / paths["client_key"] if paths.get("client_key") else None,
                host_key=manifest.get("host_key"),
                user=str(manifest["user"]),
                ready_marker=str(manifest["ready_marker"]),
                kernel_debug=bool(configured["kernel_debugging"]["enabled"]),
                tpm=bool(configured["tpm"]["enabled"]),
                openssh=configured["openssh"] is not None,
                ovmf_code=Path(manifest["firmware"]["ovmf_code"]),
                licence_expires=datetime.date.fromisoformat(expires) if expires else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ImageError(
                f"{root / MANIFEST_NAME} is incomplete ({exc}); rebuild with `{BUILD_COMMAND}`"
            ) from exc
        for needed in (image.disk, image.efivars):
            if not needed.is_file():
                raise ImageError(
                    f"the Windows image {root} lacks {needed.name}; rebuild with `{BUILD_COMMAND}`"
                )
        image.warn_if_expiring(datetime.date.today())
        return image

    def warn_if_expiring(self, today: datetime.date) -> None:
        """Log a warning when the evaluation licence has expired or expires within a week."""
        if self.licence_expires is None:
            return
        days = (self.licence_expires - today).days
        if days < 0:
            logger.warning(
                "the Windows image %s: its licence expired on %s; rebuild it", self.root, self.licence_expires
            )
        elif days <= EXPIRY_WARNING_DAYS:
            logger.warning(
                "the Windows image %s: its licence expires in %d days (%s)",
                self.root,
                days,
                self.licence_expires,
            )


def read_manifest(root: Path) -> dict[str, Any]:
    """The parsed ``image.json`` of the Windows image in ``root``; ImageError if absent or not one."""
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageError(
            f"{root} is not a built Windows image (no {MANIFEST_NAME}); run `{BUILD_COMMAND}`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {path}: {exc}; rebuild with `{BUILD_COMMAND}`") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or data.get("kind") != IMAGE_KIND:
        raise ImageError(f"{path} is not a Windows 11 image manifest of format {MANIFEST_FORMAT}")
    return data


def _windows_dir(cache_root: Path | None) -> Path:
    return ((cache_root if cache_root is not None else default_cache_root()) / IMAGE_KIND).resolve()


def find_windows_image(cache_root: Path | None = None) -> WindowsImage:
    """The newest Windows image built into the cache; ImageError telling how to build one if none."""
    current = _windows_dir(cache_root) / "current"
    if not (current / MANIFEST_NAME).is_file():
        raise ImageError(
            f"no Windows 11 image is built in {current.parent}; run `{BUILD_COMMAND} --iso WINDOWS.iso "
            "--openssh-zip OpenSSH-Win64.zip` or set guest.image"
        )
    return WindowsImage.load(current.resolve())


def windows_files_dir() -> Path:
    """The answer-file template and scripts: ``images/windows11`` of the source tree.

    ``$VMTEST_WINDOWS_IMAGE_FILES`` overrides it (for installs that do not ship the source tree).
    """
    override = os.environ.get("VMTEST_WINDOWS_IMAGE_FILES")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "images" / "windows11"
    missing = [name for name in (TEMPLATE, *SCRIPTS) if not (path / name).is_file()]
    if missing:
        raise ImageError(
            f"the Windows image files are not at {path} (missing {', '.join(missing)}); set "
            "VMTEST_WINDOWS_IMAGE_FILES to the images/windows11 directory of the vmtest source tree"
        )
    return path


# --------------------------------------------------------------------------------------------------
# The answer file
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerSettings:
    """Everything the answer file says apart from the password. Validated on creation (ConfigError)."""

    user: str = DEFAULT_USER
    computer_name: str = DEFAULT_COMPUTER_NAME
    image_name: str | None = None
    image_index: int | None = None
    product_key: str | None = None
    tpm: bool = False
    language: str = "en-US"
    input_locale: str = "0409:00000409"
    time_zone: str = "UTC"  # with -rtc base=utc, the guest clock is right (windows11-vm.md §1.13)

    def __post_init__(self) -> None:
        problems = []
        try:
            check_windows_user_name(self.user)
        except ValueError as error:
            problems.append(f"user {self.user!r}: {error}")
        if not _COMPUTER_NAME.match(self.computer_name):
            problems.append(
                f"computer name {self.computer_name!r}: 1-15 letters, digits or '-', not only digits"
            )
        if self.image_name is not None and self.image_index is not None:
            problems.append("choose the Windows edition by name or by index, not both")
        if self.image_name is not None and not self.image_name.strip():
            problems.append("the image name is empty")
        if self.image_index is not None and self.image_index < 1:
            problems.append("the image index counts from 1")
        if self.product_key is not None and not _PRODUCT_KEY.match(self.product_key):
            problems.append(
                "a product key looks like XXXXX-XXXXX-XXXXX-XXXXX-XXXXX (evaluation media need none)"
            )
        if not _LANGUAGE.match(self.language):
            problems.append(f"language {self.language!r}: expected a tag like en-US")
        if not _INPUT_LOCALE.match(self.input_locale):
            problems.append(f"input locale {self.input_locale!r}: expected 0409:00000409 or a tag like en-US")
        for name, value in (("image name", self.image_name), ("time zone", self.time_zone)):
            if value is not None and _XML_INVALID.search(value):
                problems.append(f"the {name} holds a character XML cannot carry")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def image_selection(self) -> tuple[str, str]:
        """The ``InstallFrom/MetaData`` key and value: by name, else by index (default 1)."""
        if self.image_name is not None:
            return "/IMAGE/NAME", self.image_name
        return "/IMAGE/INDEX", str(self.image_index or 1)

    @property
    def labconfig(self) -> tuple[str, ...]:
        """The LabConfig checks bypassed: TPM only without a TPM; Secure Boot and RAM always (§1.3)."""
        tpm = () if self.tpm else ("BypassTPMCheck",)
        return (*tpm, "BypassSecureBootCheck", "BypassRAMCheck")


def encode_password(password: str, suffix: str) -> str:
    """The answer file's ``PlainText=false`` form: base64 of UTF-16LE(password + suffix) (§2.6)."""
    return base64.b64encode((password + suffix).encode("utf-16-le")).decode("ascii")


def _check_password(password: str, source: str) -> str:
    if not password:
        raise ConfigError(f"the Windows password ({source}) is empty")
    if not password.isprintable():
        raise ConfigError(f"the Windows password ({source}) holds control characters (a stray newline?)")
    return password


def render_answer_file(settings: AnswerSettings, password: str, *, template: Path | None = None) -> bytes:
    """The answer file for ``settings`` and ``password``, from the template (UTF-8 XML bytes).

    The template is parsed, conditional elements are kept or dropped, ``{{name}}`` placeholders in
    element text are replaced and the tree is serialized, so every value is escaped by the serializer.
    """
    _check_password(password, "given")
    key, value = settings.image_selection
    values = {
        "language": settings.language,
        "input_locale": settings.input_locale,
        "time_zone": settings.time_zone,
        "image_key": key,
        "image_value": value,
        "product_key": settings.product_key or "",
        "user": settings.user,
        "computer_name": settings.computer_name,
        "local_password": encode_password(password, "Password"),
        "autologon_password": encode_password(password, "Password"),
        "setup_marker": MARKERS.setup,
        "provision_command": PROVISION_COMMAND,
    }
    conditions = {"tpm": settings.tpm, "product_key": settings.product_key is not None}
    path = template if template is not None else windows_files_dir() / TEMPLATE
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        raise ImageError(f"cannot read the answer-file template {path}: {error}") from None
    _apply_conditions(root, conditions)
    _substitute(root, values)
    _renumber_orders(root)
    ET.indent(root, space="  ")
    ET.register_namespace("", UNATTEND_NS)
    ET.register_namespace("wcm", WCM_NS)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _apply_conditions(root: ET.Element, conditions: Mapping[str, bool]) -> None:
    attribute = f"{{{TEMPLATE_NS}}}if"
    pairs = [(parent, child) for parent in root.iter() for child in parent]
    for parent, child in pairs:
        condition = child.attrib.pop(attribute, None)
        if condition is None:
            continue
        name = condition.lstrip("!")
        if name not in conditions:
            raise ImageError(f"the answer-file template uses an unknown condition {condition!r}")
        if conditions[name] == condition.startswith("!"):
            parent.remove(child)


def _substitute(root: ET.Element, values: Mapping[str, str]) -> None:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ImageError(f"the answer-file template uses an unknown placeholder {{{{{name}}}}}")
        return values[name]

    for element in root.iter():
        if element.text and "{{" in element.text:
            element.text = _PLACEHOLDER.sub(replace, element.text)
        for name, value in element.attrib.items():
            if "{{" in value:
                element.set(name, _PLACEHOLDER.sub(replace, value))
        for text in (element.text, element.tail, *element.attrib.values()):
            if text and _XML_INVALID.search(text):
                raise ConfigError("a value for the answer file holds a character XML cannot carry")


def _renumber_orders(root: ET.Element) -> None:
    """Number the ``Order`` of same-named siblings 1..n, so dropped conditional entries leave no gap."""
    order = f"{{{UNATTEND_NS}}}Order"
    for parent in root.iter():
        groups: dict[str, list[ET.Element]] = {}
        for child in parent:
            if child.find(order) is not None:
                groups.setdefault(str(child.tag), []).append(child)
        for members in groups.values():
            for number, member in enumerate(members, start=1):
                element = member.find(order)
                assert element is not None
                element.text = str(number)


# --------------------------------------------------------------------------------------------------
# Options and the plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowsImageOptions:
    """What the user asked for (the CLI's options); :func:`plan_windows_image` validates them."""

    iso: Path
    openssh_zip: Path | None = None
    output: Path | None = None
    artifacts: Path = Path("vmtest-artifacts")
    image_name: str | None = None
    image_index: int | None = None
    product_key: str | None = None
    user: str = DEFAULT_USER
    password_env: str = DEFAULT_PASSWORD_ENV
    computer_name: str = DEFAULT_COMPUTER_NAME
    language: str = "en-US"
    input_locale: str = "0409:00000409"
    disk_size_gib: int = 64
    memory_mib: int = 4096
    cpus: int = 4
    tpm: bool = False
    tpm_model: Literal["tpm-crb", "tpm-tis"] = "tpm-crb"
    kernel_debug: bool = True
    accel: Accelerator = "auto"
    allow_tcg: bool = False
    qemu: str = "qemu-system-x86_64"
    qemu_extra_args: tuple[str, ...] = ()
    ovmf_code: Path = DEFAULT_OVMF_CODE
    ovmf_vars: Path = DEFAULT_OVMF_VARS
    hyperv_flags: tuple[str, ...] | None = None
    sshd_start: Literal["auto", "delayed-auto"] = "auto"
    crash_dump: CrashDump = "kernel"
    tools: tuple[Path, ...] = ()
    timeout: float = 7200.0
    key_press_window: float = 60.0
    key_press_interval: float = 1.0
    screenshot_interval: float = 60.0
    poweroff_timeout: float = 600.0
    force: bool = False


@dataclass(frozen=True)
class Deadlines:
    """Every time limit of the build, in seconds."""

    overall: float  # QEMU start until the guest has powered off after provisioning
    key_window: float  # Enter is pressed during this first part of the boot...
    key_interval: float  # ...this often, until Setup reports its first pass
    screenshot_interval: float
    poweroff: float  # after VMTEST-PROVISION-DONE


@dataclass(frozen=True)
class IsoEntry:
    """One file on the answer ISO: copied from ``source``, or generated by the build when None."""

    path: str
    source: Path | None
    description: str


@dataclass(frozen=True)
class WindowsImagePlan:
    """Everything the build will do, decided before anything runs (printed by ``--dry-run``)."""

    options: WindowsImageOptions
    answer: AnswerSettings
    run_dir: RunDirectory
    output: Path
    work_dir: Path
    default_location: bool
    answer_iso: Path
    answer_files: tuple[IsoEntry, ...]
    iso_tool: tuple[str, ...] | None
    hardware: WindowsHardware
    machine: MachineConfig
    timeouts: Timeouts
    qemu_command: tuple[str, ...]
    accel: str
    deadlines: Deadlines
    host_hyperv: bool | None
    host_problems: tuple[str, ...]
    password_set: bool

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the build could not start now: missing host tools or firmware, an unset password."""
        password = (
            ()
            if self.password_set
            else (f"${self.options.password_env} is not set (the Windows user's password)",)
        )
        return (*self.host_problems, *password)

    @property
    def disk(self) -> Path:
        """The blank qcow2 the install goes into (in the work directory)."""
        return self.work_dir / DISK_PATH

    def describe(self) -> list[str]:
        """The plan as lines for people."""
        options = self.options
        key, value = self.answer.image_selection
        password = "set" if self.password_set else "NOT SET"
        deadlines = self.deadlines
        shown = repr(value) if key == "/IMAGE/NAME" else value
        accel = {
            "auto": "KVM if a probe guest runs under it" + (", else TCG" if options.allow_tcg else ""),
            "kvm": "KVM (required)",
            "tcg": "TCG (software emulation, hours)",
        }[options.accel]
        tool = " ".join(self.iso_tool) if self.iso_tool else "NOTHING (install xorriso)"
        tpm = f"swtpm TPM 2.0 ({options.tpm_model})" if options.tpm else "none"
        hyperv = {True: "yes", False: "NO: hv-* flags left out, bugchecks only via KD", None: "unknown"}
        lines = [
            f"Windows 11 golden image build plan ({'ready' if not self.problems else 'NOT ready'})",
            f"  installation ISO  {options.iso}",
            f"  edition           {key} = {shown}" + (", product key given" if options.product_key else ""),
            f"  image folder      {self.output}" + (" (becomes `current`)" if self.default_location else ""),
            f"  work folder       {self.work_dir} (renamed to the image folder when sealed)",
            f"  run directory     {self.run_dir.path} (logs, serial output, screenshots)",
            f"  user              {self.answer.user}, password from ${options.password_env} ({password}; "
            "never printed or stored in the metadata)",
            f"  computer name     {self.answer.computer_name}",
            f"  TPM               {tpm}; LabConfig bypasses: {', '.join(self.answer.labconfig)}",
            "  test signing      on (Secure Boot off: OVMF without Secure Boot)",
            "  kernel debugging  "
            + (
                f"on, COM1 (debugport:{KD_DEBUG_PORT}, baudrate:{KD_BAUD_RATE})"
                if options.kernel_debug
                else "off"
            ),
            f"  OpenSSH server    {options.openssh_zip or 'none (SMB/PsExec only)'}"
            + (f", sshd start={options.sshd_start}" if options.openssh_zip else ""),
            f"  crash dumps       {options.crash_dump}, AutoReboot off",
            f"  accelerator       {accel}",
            f"  hardware          {self.machine.cpus} vCPUs, {self.machine.memory_mib} MiB, "
            f"{options.disk_size_gib} GiB disk; host KVM Hyper-V support: {hyperv[self.host_hyperv]}",
            f"  deadlines         overall {deadlines.overall:.0f}s; Enter every {deadlines.key_interval:g}s "
            f"for the first {deadlines.key_window:.0f}s; a screenshot every "
            f"{deadlines.screenshot_interval:.0f}s; "
            f"power-off {deadlines.poweroff:.0f}s after provisioning",
            f"answer ISO ({self.answer_iso}, built with {tool}):",
        ]
        width = max(len(entry.path) for entry in self.answer_files)
        for entry in self.answer_files:
            origin = f" <- {entry.source}" if entry.source else ""
            lines.append(f"  {entry.path:<{width}}  {entry.description}{origin}")
        lines.append(
            f"QEMU command (with -accel {self.accel}; socket-pair descriptors are assigned at the start):"
        )
        lines.append(_format_command(self.qemu_command))
        if self.problems:
            lines.append("problems (the build would stop):")
            lines.extend(f"  - {problem}" for problem in self.problems)
        return lines

    def to_json(self) -> dict[str, Any]:
        """The plan as data (no secret), written to ``plan.json`` in the run directory."""
        key, value = self.answer.image_selection
        return {
            "iso": str(self.options.iso),
            "image_selection": {"key": key, "value": value},
            "output": str(self.output),
            "work_dir": str(self.work_dir),
            "run_dir": str(self.run_dir.path),
            "answer_iso": str(self.answer_iso),
            "answer_files": [
                {"path": e.path, "source": str(e.source) if e.source else None, "description": e.description}
                for e in self.answer_files
            ],
            "iso_tool": list(self.iso_tool) if self.iso_tool else None,
            "user": self.answer.user,
            "password_env": self.options.password_env,
            "tpm": self.options.tpm,
            "labconfig": list(self.answer.labconfig),
            "kernel_debug": self.options.kernel_debug,
            "accel": self.options.accel,
            "qemu_command": list(self.qemu_command),
            "deadlines": dataclasses.asdict(self.deadlines),
            "host_hyperv": self.host_hyperv,
            "problems": list(self.problems),
        }


def _format_command(args: Sequence[str]) -> str:
    """A command line for people: one option and its value per line, shell-quoted."""
    lines: list[str] = []
    for arg in args:
        if lines and not arg.startswith("-") and lines[-1].startswith("-") and " " not in lines[-1]:
            lines[-1] += f" {shlex.quote(arg)}"
        else:
            lines.append(shlex.quote(arg))
    return "  " + " \\\n    ".join(lines)


def find_iso_tool() -> tuple[str, ...] | None:
    """The ISO 9660 writer to use: ``xorriso -as mkisofs``, else genisoimage or mkisofs; None if none."""
    if shutil.which("xorriso"):
        return ("xorriso", "-as", "mkisofs")
    for name in ("genisoimage", "mkisofs"):
        if shutil.which(name):
            return (name,)
    return None


def _check_options(options: WindowsImageOptions) -> list[str]:
    problems = []
    if not options.iso.is_file():
        what = "does not exist" if not options.iso.exists() else "is not a file"
        problems.append(f"the Windows ISO {options.iso} {what}")
    if options.openssh_zip is not None and not options.openssh_zip.is_file():
        problems.append(
            f"the OpenSSH zip {options.openssh_zip} does not exist (a Win32-OpenSSH release zip, "
            "e.g. OpenSSH-Win64.zip)"
        )
    names = [tool.name for tool in options.tools]
    for tool in options.tools:
        if not tool.is_file():
            problems.append(f"the tool {tool} does not exist")
    if len(set(n.lower() for n in names)) != len(names):
        problems.append("two tools have the same file name")
    for name, number, low in (
        ("disk size (GiB)", options.disk_size_gib, 32),
        ("memory (MiB)", options.memory_mib, 2048),
        ("CPUs", options.cpus, 1),
    ):
        if number < low:
            problems.append(f"{name} must be at least {low}")
    for name, seconds in (
        ("timeout", options.timeout),
        ("screenshot interval", options.screenshot_interval),
        ("key-press interval", options.key_press_interval),
        ("power-off timeout", options.poweroff_timeout),
    ):
        if seconds <= 0:
            problems.append(f"the {name} must be positive")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", options.password_env):
        problems.append(f"{options.password_env!r} is not an environment variable name")
    for flag in options.hyperv_flags or ():
        try:
            check_cpu_flag(flag)
        except ValueError as error:
            problems.append(str(error))
    if options.accel == "tcg" and not options.allow_tcg:
        problems.append("accelerator tcg: Windows under TCG takes hours; add --allow-tcg to mean it")
    if options.crash_dump not in CRASH_DUMPS:
        problems.append(f"crash dump type {options.crash_dump!r}: one of {', '.join(CRASH_DUMPS)}")
    return problems


def _iso_entries(options: WindowsImageOptions, files: Path) -> tuple[IsoEntry, ...]:
    entries = [
        IsoEntry(ANSWER_FILE, None, "the rendered answer file (password encoded, never printed)"),
        IsoEntry(SETTINGS_FILE, None, "settings for the scripts: markers, switches, the client's public key"),
        IsoEntry(
            f"{ISO_FOLDER}/common.ps1", files / "common.ps1", "COM2 output and settings, for both scripts"
        ),
        IsoEntry(f"{ISO_FOLDER}/provision.ps1", files / "provision.ps1", "provisioning, at the first logon"),
        IsoEntry(f"{ISO_FOLDER}/ready.ps1", files / "ready.ps1", "the ready marker on COM2, at every boot"),
    ]
    if options.openssh_zip is not None:
        entries.append(IsoEntry(OPENSSH_ZIP, options.openssh_zip, "Win32-OpenSSH release, installed offline"))
    for tool in options.tools:
        entries.append(IsoEntry(f"{ISO_FOLDER}/tools/{tool.name}", tool, rf"copied to {GUEST_FOLDER}\tools"))
    return tuple(entries)


def _preflight(options: WindowsImageOptions, iso_tool: tuple[str, ...] | None) -> list[str]:
    """What is missing on this host for a real build (KVM is probed when the build starts)."""
    problems = []
    if shutil.which(options.qemu) is None:
        problems.append(f"QEMU ({options.qemu}) is not installed: apt-get install qemu-system-x86")
    if shutil.which("qemu-img") is None:
        problems.append("qemu-img is not installed: apt-get install qemu-utils")
    if iso_tool is None:
        problems.append("no ISO writer: apt-get install xorriso (or genisoimage)")
    for what, path in (("OVMF code", options.ovmf_code), ("OVMF variables", options.ovmf_vars)):
        if not path.is_file():
            problems.append(f"{what} {path} does not exist: apt-get install ovmf")
    if options.tpm and shutil.which("swtpm") is None:
        problems.append("swtpm is not installed: apt-get install swtpm swtpm-tools")
    return problems


def plan_windows_image(options: WindowsImageOptions) -> WindowsImagePlan:
    """Decide the whole build and create its run directory; ConfigError for bad or missing inputs."""
    problems = _check_options(options)
    try:
        answer = AnswerSettings(
            user=options.user,
            computer_name=options.computer_name,
            image_name=options.image_name,
            image_index=options.image_index,
            product_key=options.product_key,
            tpm=options.tpm,
            language=options.language,
            input_locale=options.input_locale,
        )
    except ConfigError as error:
        problems.extend(p.message for p in error.problems)
        answer = AnswerSettings()
    if problems:
        raise ConfigError([ConfigProblem("<command line>", None, None, "", problem) for problem in problems])
    default_location = options.output is None
    if options.output is None:
        output = _windows_dir(None) / f"win11-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        output = options.output.expanduser().resolve()
    if (output / MANIFEST_NAME).exists() and not options.force:
        raise ConfigError(f"{output} already holds a Windows image; pass --force to replace it")
    if output.exists() and not (output / MANIFEST_NAME).exists() and any(output.iterdir()):
        raise ConfigError(f"{output} exists and is not a Windows image; choose an empty or new folder")
    files = windows_files_dir()
    run_dir = RunDirectory.create(options.artifacts.expanduser().resolve(), "win11-build")
    work_dir = output.parent / f".build-{output.name}"
    answer_iso = run_dir.path / ANSWER_ISO
    hardware = WindowsHardware(
        disk=work_dir / DISK_PATH,
        efivars=options.ovmf_vars,
        ovmf_code=options.ovmf_code,
        hyperv_flags=options.hyperv_flags,
        tpm=TpmSettings(options.tpm_model) if options.tpm else None,
        allow_tcg=options.allow_tcg,
    )
    machine = MachineConfig(
        qemu=options.qemu,
        cpus=options.cpus,
        memory_mib=options.memory_mib,
        extra_args=options.qemu_extra_args,
    )
    deadlines = Deadlines(
        overall=options.timeout,
        key_window=options.key_press_window,
        key_interval=options.key_press_interval,
        screenshot_interval=options.screenshot_interval,
        poweroff=options.poweroff_timeout,
    )
    timeouts = Timeouts(boot=options.timeout, shutdown=FAILED_BUILD_SHUTDOWN, accel_probe=KVM_PROBE_TIMEOUT)
    profile = Windows11InstallerProfile(hardware, windows_iso=options.iso.resolve(), answer_iso=answer_iso)
    qemu = shutil.which(options.qemu) or options.qemu
    accel = "tcg" if options.accel == "tcg" else "kvm"
    planned = Machine(profile, machine, timeouts, run_dir, accel=accel)
    overlays = (run_dir.overlay(0), run_dir.overlay(1))
    command = planned.command_line(
        qemu, overlays, 3, {role: 4 + i for i, role in enumerate(planned.raw_serial_roles)}
    )
    iso_tool = find_iso_tool()
    plan = WindowsImagePlan(
        options=options,
        answer=answer,
        run_dir=run_dir,
        output=output,
        work_dir=work_dir,
        default_location=default_location,
        answer_iso=answer_iso,
        answer_files=_iso_entries(options, files),
        iso_tool=iso_tool,
        hardware=hardware,
        machine=machine,
        timeouts=timeouts,
        qemu_command=tuple(command),
        accel=accel,
        deadlines=deadlines,
        host_hyperv=profile.host_hyperv(),
        host_problems=tuple(_preflight(options, iso_tool)),
        password_set=bool(os.environ.get(options.password_env)),
    )
    (run_dir.path / "plan.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n", encoding="utf-8")
    run_dir.command_file.write_text("\n".join(command) + "\n", encoding="utf-8")
    return plan


# --------------------------------------------------------------------------------------------------
# External commands and files
# --------------------------------------------------------------------------------------------------


def _run(argv: Sequence[str | Path], *, timeout: float = QUICK, fix: str | None = None) -> str:
    """Run a command in the C locale; its stdout, or ImageError naming the command and its output."""
    args = [str(a) for a in argv]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}
    advice = f"; {fix}" if fix else ""
    logger.debug("running %s", " ".join(args))
    try:
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ImageError(f"`{args[0]}` is not installed{advice}") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"`{' '.join(args)}` timed out after {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ImageError(f"`{' '.join(args)}` failed (exit {result.returncode}){advice}\n{tail}")
    return result.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def guest_settings(options: WindowsImageOptions, authorized_key: str | None) -> dict[str, Any]:
    """``settings.json`` for the provisioning scripts: markers, switches, the client's key; no secret."""
    dump_type, filter_pages = CRASH_DUMPS[options.crash_dump]
    return {
        "format": MANIFEST_FORMAT,
        "target": GUEST_FOLDER,
        "markers": dataclasses.asdict(MARKERS),
        "kernel_debug": {
            "enabled": options.kernel_debug,
            "debugport": KD_DEBUG_PORT,
            "baudrate": KD_BAUD_RATE,
        },
        "debug_print_filter": DEBUG_PRINT_FILTER,
        "crash_dump": {"type": dump_type, "filter_pages": filter_pages, "auto_reboot": 0},
        "openssh": {
            "enabled": options.openssh_zip is not None,
            "zip": Path(OPENSSH_ZIP).name if options.openssh_zip is not None else None,
            "start_type": options.sshd_start,
            "authorized_key": authorized_key,
        },
        "ready_task": READY_TASK,
        "ready_wait_seconds": READY_WAIT,
    }


def build_answer_iso(plan: WindowsImagePlan, password: str, authorized_key: str | None) -> None:
    """Write the answer ISO (0600): generated files, scripts, the OpenSSH zip and the tools.

    ``authorized_key`` is the client's public key line for ``administrators_authorized_keys``. The
    files are staged in the run directory and removed again (the answer file holds the password).
    """
    if plan.iso_tool is None:
        raise ImageError("no ISO writer is installed; apt-get install xorriso (or genisoimage)")
    generated = {
        ANSWER_FILE: render_answer_file(plan.answer, password),
        SETTINGS_FILE: (json.dumps(guest_settings(plan.options, authorized_key), indent=2) + "\n").encode(),
    }
    staging = plan.run_dir.path / "answer-iso"
    staging.mkdir(mode=0o700)
    try:
        for entry in plan.answer_files:
            destination = staging / entry.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            if entry.source is not None:
                shutil.copyfile(entry.source, destination)
            else:
                destination.write_bytes(generated[entry.path])
        fd = os.open(plan.answer_iso, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        _run(
            [
                *plan.iso_tool,
                "-quiet",
                "-input-charset",
                "utf-8",
                "-J",
                "-joliet-long",
                "-r",
                "-V",
                ISO_LABEL,
                "-o",
                plan.answer_iso,
                staging,
            ],
            timeout=SLOW,
            fix="apt-get install xorriso",
        )
        os.chmod(plan.answer_iso, 0o600)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the answer file holds the password


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    with (folder / ".windows-build.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImageError(f"another Windows image build is running in {folder}") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_password(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"set ${variable} to the Windows user's password (it is never printed or stored)")
    return _check_password(value, f"${variable}")


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def build_windows_image(plan: WindowsImagePlan, progress: Progress) -> WindowsImage:
    """Carry out ``plan`` (from synchronous code: runs its own event loop); the sealed image.

    Raises ConfigError for a missing password, ImageError (with the run directory and a screenshot)
    when a step fails, AcceleratorError when KVM cannot run the installer and TCG was not allowed.
    """
    return asyncio.run(_build(plan, progress))


async def _build(plan: WindowsImagePlan, progress: Progress) -> WindowsImage:
    started = time.monotonic()
    built_at = datetime.datetime.now(datetime.timezone.utc)
    password = _read_password(plan.options.password_env)
    missing = _preflight(plan.options, plan.iso_tool)
    if missing:
        raise ImageError("; ".join(missing), phase="prepare", artifacts=plan.run_dir.path)
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(plan.output.parent):
        shutil.rmtree(plan.work_dir, ignore_errors=True)  # left over by a killed build
        plan.work_dir.mkdir()
        try:
            with progress.phase("prepare", "answer ISO, keys and a blank disk"):
                client = make_client_key(plan.work_dir) if plan.options.openssh_zip is not None else None
                build_answer_iso(plan, password, client)
                _run(["qemu-img", "create", "-q", "-f", "qcow2", plan.disk, f"{plan.options.disk_size_gib}G"])
            try:
                report, accel = await _install(plan, progress)
            finally:
                plan.answer_iso.unlink(missing_ok=True)  # it holds the password
            with progress.phase("seal", "committing the disk and writing image.json"):
                image = _seal(plan, report, accel, built_at, time.monotonic() - started)
        except BaseException as error:
            plan.answer_iso.unlink(missing_ok=True)  # it holds the password
            shutil.rmtree(plan.work_dir, ignore_errors=True)
            for index in (0, 1):
                plan.run_dir.overlay(index).unlink(missing_ok=True)
            if isinstance(error, InfraError):
                error.located(phase="build", artifacts=plan.run_dir.path)
            raise
    return image


async def _choose_accelerator(plan: WindowsImagePlan, profile: Windows11InstallerProfile) -> str:
    if plan.options.accel == "tcg":
        return "tcg"  # allowed: checked when planning
    qemu = find_qemu(plan.options.qemu)
    probe = await probe_kvm(qemu, profile.cpu_model("kvm"), KVM_PROBE_TIMEOUT, cache_dir=default_cache_root())
    if probe.usable:
        return "kvm"
    if plan.options.allow_tcg and plan.options.accel == "auto":
        logger.warning(
            "KVM cannot run a guest here (%s): installing under TCG, which takes many hours", probe.reason
        )
        return "tcg"
    raise AcceleratorError(
        f"KVM cannot run a guest here: {probe.reason}. Installing Windows under TCG takes many hours; pass "
        "--accel auto --allow-tcg to try anyway",
        phase="accel",
        artifacts=plan.run_dir.path,
    )


async def _install(plan: WindowsImagePlan, progress: Progress) -> tuple[ProvisionLog, str]:
    """Boot the installer and wait until the provisioned guest has powered off."""
    profile = Windows11InstallerProfile(
        plan.hardware, windows_iso=plan.options.iso.resolve(), answer_iso=plan.answer_iso
    )
    with progress.phase("accel", "checking that KVM can run the installer"):
        accel = await _choose_accelerator(plan, profile)
    machine = Machine(profile, plan.machine, plan.timeouts, plan.run_dir, accel=accel)
    report = ProvisionLog()
    finished = asyncio.Event()
    setup_started = asyncio.Event()
    shots: asyncio.Queue[str] = asyncio.Queue()
    stopped: list[str] = []  # a run state in which the guest can never go on

    def on_line(line: str) -> None:
        note = report.feed(line)
        if note is None:
            return
        progress.note(note)
        if not report.done:  # the guest is powering off then: nothing left to see
            shots.put_nowait(re.sub(r"[^A-Za-z0-9]+", "-", note)[:30])
        if report.passes:
            setup_started.set()
        if report.done or report.failure is not None:
            finished.set()

    async def prelaunch(booting: Machine) -> None:
        booting.consoles["console"].add_line_listener(on_line)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.deadlines.overall
    tasks: list[asyncio.Task[None]] = []
    try:
        await profile.start_helpers(plan.run_dir.path)
        with progress.phase("boot", f"starting QEMU ({profile.describe()}, {accel})"):
            await machine.start(prelaunch=prelaunch)
        tasks = [
            asyncio.create_task(_watch_run_state(machine, stopped, finished), name="run-state"),
            asyncio.create_task(_press_enter(machine, plan.deadlines, setup_started), name="send-key"),
            asyncio.create_task(
                _screenshots(machine, plan.deadlines.screenshot_interval, shots), name="screens"
            ),
            asyncio.create_task(_drain(machine.serial_sockets.get("kd")), name="drain-com1"),
        ]
        with progress.phase("install", "Windows Setup, then provisioning (markers on COM2)"):
            try:
                await machine.wait(
                    finished.wait(), deadline - loop.time(), "installing and provisioning Windows"
                )
            except MachineExited:
                await _console_drained(machine)  # its last lines may still be on their way
                if not report.done:
                    raise
        if stopped:
            shot = await machine.screenshot("vm-stopped")
            raise ImageError(
                f"QEMU stopped the VM ({stopped[0]}) with {report.last}: see qemu.log"
                + (" (KVM cannot run this guest here)" if stopped[0] == "internal-error" else ""),
                phase="install",
                screenshot=shot,
            )
        if report.failure is not None:
            shot = await machine.screenshot("provisioning-failed")
            raise ImageError(
                f"provisioning failed in the guest: {report.failure}", phase="install", screenshot=shot
            )
        with progress.phase("power-off", "waiting for the guest to shut down"):
            await _wait_for_poweroff(machine, min(plan.deadlines.poweroff, max(deadline - loop.time(), 1.0)))
    except GuestCrashed as error:
        event = machine.crash
        bugcheck = bugcheck_from_qmp_event(event) if event is not None else None
        shot = await machine.screenshot("bugcheck")
        summary = bugcheck.summary if bugcheck is not None else str(error)
        raise ImageError(
            f"the guest crashed during the install ({summary}); last progress: {report.last}",
            phase="install",
            screenshot=shot,
        ) from error
    except (DeadlineExceeded, MachineExited) as error:
        shot = await machine.screenshot("install-stopped") if machine.running else None
        raise ImageError(
            f"{error.message}; last progress: {report.last} (see the screenshots)",
            phase="install",
            screenshot=shot,
        ) from error
    except InfraError as error:
        error.located(phase="install", artifacts=plan.run_dir.path)
        raise
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await machine.shutdown()
        machine.kill_now()
        await profile.stop_helpers()
    return report, accel


async def _watch_run_state(machine: Machine, stopped: list[str], finished: asyncio.Event) -> None:
    """Poll QEMU's run state; record a dead end (``internal-error``, ``io-error``) and end the wait."""
    while machine.running:
        await asyncio.sleep(RUN_STATE_POLL)
        try:
            status = await machine.monitor.execute("query-status")
        except InfraError:
            return
        if status.get("status") in DEAD_RUN_STATES:
            stopped.append(str(status["status"]))
            finished.set()
            return


async def _press_enter(machine: Machine, deadlines: Deadlines, stop: asyncio.Event) -> None:
    """Press Enter over QMP during the first seconds, past "Press any key to boot from CD or DVD"."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadlines.key_window
    presses = 0
    while loop.time() < end and not stop.is_set():
        try:
            await machine.monitor.execute("send-key", {"keys": [{"type": "qcode", "data": "ret"}]})
        except InfraError as error:
            logger.info("send-key stopped: %s", error)
            return
        presses += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), deadlines.key_interval)
    logger.info("pressed Enter %d times", presses)


async def _screenshots(machine: Machine, interval: float, requests: asyncio.Queue[str]) -> None:
    """A screenshot every ``interval`` seconds, and one when labels arrive (the latest of a burst)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            label = await asyncio.wait_for(requests.get(), interval)
            while not requests.empty():
                label = requests.get_nowait()
        except asyncio.TimeoutError:
            label = f"install-{int(loop.time() - started):05d}s"
        if not (machine.running and machine.monitor.connected):
            return
        await machine.screenshot(label)


async def _drain(sock: socket.socket | None) -> None:
    """Read and drop COM1 (the firmware's console, later the KD link; QEMU logs it) so it never stalls."""
    if sock is None:
        return
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        while await loop.sock_recv(sock, 65536):
            pass


async def _console_drained(machine: Machine) -> None:
    """Wait (briefly) until the console has read everything QEMU wrote before it exited."""
    console = machine.consoles.get("console")
    if console is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(console.closed.wait(), CONSOLE_DRAIN)


async def _wait_for_poweroff(machine: Machine, timeout: float) -> None:
    assert machine.process is not None
    with contextlib.suppress(MachineExited):  # QEMU exits when the guest powers off: that is the point
        await machine.wait(machine.process.wait(), timeout, "waiting for the guest to power off")
    returncode = await asyncio.wait_for(machine.process.wait(), 10)
    if returncode != 0:
        raise ImageError(
            f"QEMU exited with status {returncode} after provisioning (see qemu.log)", phase="power-off"
        )
    if not any(e.name == "SHUTDOWN" and e.data.get("guest") is True for e in machine.monitor.history):
        logger.warning("QEMU exited without reporting a guest-initiated shutdown")


# --------------------------------------------------------------------------------------------------
# Sealing
# --------------------------------------------------------------------------------------------------


def _seal(
    plan: WindowsImagePlan, report: ProvisionLog, accel: str, built_at: datetime.datetime, seconds: float
) -> WindowsImage:
    work = plan.work_dir
    disk_overlay, vars_overlay = plan.run_dir.overlay(0), plan.run_dir.overlay(1)
    _run(["qemu-img", "commit", "-q", disk_overlay], timeout=SLOW)
    _run(
        ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", vars_overlay, work / EFIVARS_PATH],
        timeout=SLOW,
    )
    disk_overlay.unlink()
    vars_overlay.unlink()
    info = json.loads(_run(["qemu-img", "info", "--output=json", work / DISK_PATH]))
    if info.get("backing-filename") or info.get("format") != "qcow2":
        raise ImageError(f"{work / DISK_PATH} is not a standalone qcow2 after the commit: {info}")
    tpm_state = plan.run_dir.path / TPM_STATE
    if plan.options.tpm and tpm_state.is_dir():
        shutil.copytree(tpm_state, work / TPM_PATH)
    if report.host_key is not None:
        (work / HOST_PUBLIC_KEY_PATH).parent.mkdir(parents=True, exist_ok=True)
        (work / HOST_PUBLIC_KEY_PATH).write_text(report.host_key + "\n", encoding="utf-8")
    elif plan.options.openssh_zip is not None:
        raise ImageError("the guest never printed its SSH host key (VMTEST-HOSTKEY); see serial-console.log")
    manifest = _manifest(plan, report, accel, built_at, seconds, int(info["virtual-size"]))
    (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in (DISK_PATH, EFIVARS_PATH):
        (work / name).chmod(0o444)  # runs only ever use overlays of them
    if plan.output.exists():
        old = plan.output.with_name(f".old-{plan.output.name}-{os.getpid()}")
        os.rename(plan.output, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(work, plan.output)
    if plan.default_location:
        link = plan.output.parent / f".current.{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(plan.output.name)
        os.replace(link, plan.output.parent / "current")
    return WindowsImage.load(plan.output)


def _licence(report: ProvisionLog, built_at: datetime.datetime) -> dict[str, Any]:
    """The evaluation licence's start and expiry: from the guest's grace period, else 90 days (§6.1)."""
    info = report.licence or {}
    started = built_at.date()
    installed = (report.os_info or {}).get("install_date")
    if isinstance(installed, str):
        with contextlib.suppress(ValueError):
            started = datetime.date.fromisoformat(installed[:10])
    minutes = info.get("grace_minutes")
    description = info.get("description")
    if isinstance(minutes, int) and not isinstance(minutes, bool) and minutes > 0:
        expires = (built_at + datetime.timedelta(minutes=minutes)).date()
        source = "the guest (SoftwareLicensingProduct.GracePeriodRemaining)"
    else:
        minutes = None
        expires = started + datetime.timedelta(days=EVALUATION_DAYS)
        source = f"assumed: a {EVALUATION_DAYS}-day evaluation from the install date (windows11-vm.md §6.1)"
    return {
        "evaluation": ("EVAL" in description.upper()) if isinstance(description, str) else None,
        "description": description if isinstance(description, str) else None,
        "started": started.isoformat(),
        "expires": expires.isoformat(),
        "grace_minutes": minutes,
        "source": source,
    }


def _manifest(
    plan: WindowsImagePlan,
    report: ProvisionLog,
    accel: str,
    built_at: datetime.datetime,
    seconds: float,
    virtual_size: int,
) -> dict[str, Any]:
    options = plan.options
    key, value = plan.answer.image_selection
    work = plan.work_dir
    openssh = options.openssh_zip
    return {
        "format": MANIFEST_FORMAT,
        "kind": IMAGE_KIND,
        "built_at": built_at.isoformat(timespec="seconds"),
        "build_seconds": round(seconds),
        "paths": {
            "disk": DISK_PATH,
            "efivars": EFIVARS_PATH,
            "tpm_state": TPM_PATH if (work / TPM_PATH).is_dir() else None,
            "client_key": CLIENT_KEY_PATH if openssh else None,
            "client_public_key": CLIENT_PUBLIC_KEY_PATH if openssh else None,
            "host_public_key": HOST_PUBLIC_KEY_PATH if report.host_key else None,
        },
        "sha256": {DISK_PATH: _sha256(work / DISK_PATH), EFIVARS_PATH: _sha256(work / EFIVARS_PATH)},
        "disk_virtual_size": virtual_size,
        "source_iso": {
            "name": options.iso.name,
            "size": options.iso.stat().st_size,
            "sha256": _sha256(options.iso),
        },
        "image_selection": {"key": key, "value": value},
        "windows": report.os_info,
        "licence": _licence(report, built_at),
        "user": plan.answer.user,
        "computer_name": plan.answer.computer_name,
        "host_key": report.host_key,
        "ready_marker": MARKERS.ready,
        "configured": {
            "test_signing": True,
            "secure_boot": False,
            "kernel_debugging": {
                "enabled": options.kernel_debug,
                "port": f"COM{KD_DEBUG_PORT}",
                "debugport": KD_DEBUG_PORT,
                "baudrate": KD_BAUD_RATE,
            },
            "debug_print_filter": {"DEFAULT": DEBUG_PRINT_FILTER},
            "openssh": None
            if openssh is None
            else {
                "zip": openssh.name,
                "sha256": _sha256(openssh),
                "start": options.sshd_start,
                "shell": "cmd.exe",
            },
            "smb": {"firewall": "TCP 445 inbound, every profile", "LocalAccountTokenFilterPolicy": 1},
            "windows_update": "off",
            "defender_realtime": "off",
            "sleep": "off",
            "hibernation": "off",
            "crash_dump": {"type": options.crash_dump, "auto_reboot": False},
            "network_category": "private",
            "tpm": {"enabled": options.tpm, "model": options.tpm_model if options.tpm else None},
            "labconfig": list(plan.answer.labconfig),
            "product_key": options.product_key is not None,
            "ready_task": f"{READY_TASK}: at startup, as SYSTEM, prints {MARKERS.ready} on COM2",
            "tools": [tool.name for tool in options.tools],
            "guest_folder": GUEST_FOLDER,
        },
        "firmware": {"ovmf_code": str(options.ovmf_code), "ovmf_vars_template": str(options.ovmf_vars)},
        "hardware": {
            "machine": "q35",
            "disk": "AHCI (ide-hd)",
            "nic": "e1000e",
            "serial": {"COM1": "kd", "COM2": "console"},
            "built_with_accelerator": accel,
        },
        "warnings": report.warnings,
    }


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


def image_build_windows11_command(
    iso: Path,
    *,
    openssh_zip: Path | None,
    output: Path | None,
    dry_run: bool,
    image_name: str | None = None,
    image_index: int | None = None,
    product_key: str | None = None,
    user: str = DEFAULT_USER,
    password_env: str = DEFAULT_PASSWORD_ENV,
    computer_name: str = DEFAULT_COMPUTER_NAME,
    language: str = "en-US",
    tpm: bool = False,
    kernel_debug: bool = True,
    sshd_start: Literal["auto", "delayed-auto"] = "auto",
    crash_dump: CrashDump = "kernel",
    accel: Accelerator = "auto",
    allow_tcg: bool = False,
    memory_mib: int = 4096,
    cpus: int = 4,
    disk_size_gib: int = 64,
    timeout: float = 7200.0,
    tools: Sequence[Path] = (),
    artifacts: Path = Path("vmtest-artifacts"),
    qemu: str = "qemu-system-x86_64",
    force: bool = False,
    stdout: TextIO | None = None,
) -> int:
    """``vmtest image build windows11``: plan, then print the plan (``dry_run``) or build; the exit code.

    Bad input raises ConfigError (exit 2) and a failed build an InfraError (exit 3), as everywhere in
    vmtest. A dry run starts nothing and writes only its run directory; it returns 0 when the build
    could start, 2 when the password variable is unset, 3 when something is missing on this host.
    """
    out = stdout if stdout is not None else sys.stdout
    options = WindowsImageOptions(
        iso=iso,
        openssh_zip=openssh_zip,
        output=output,
        artifacts=artifacts,
        image_name=image_name,
        image_index=image_index,
        product_key=product_key,
        user=user,
        password_env=password_env,
        computer_name=computer_name,
        language=language,
        input_locale=language,
        sshd_start=sshd_start,
        crash_dump=crash_dump,
        disk_size_gib=disk_size_gib,
        memory_mib=memory_mib,
        cpus=cpus,
        tpm=tpm,
        kernel_debug=kernel_debug,
        accel=accel,
        allow_tcg=allow_tcg,
        qemu=qemu,
        tools=tuple(tools),
        timeout=timeout,
        force=force,
    )
    plan = plan_windows_image(options)
    if dry_run:
        print("\n".join(plan.describe()), file=out)
        print(f"dry run: nothing was started; the plan is in {plan.run_dir.path}", file=out)
        if plan.host_problems:
            return EXIT_INFRA
        return 0 if plan.password_set else EXIT_CONFIG
    progress = make_progress()
    try:
        progress.note(f"run directory: {plan.run_dir.path}")
        image = build_windows_image(plan, progress)
        progress.note(f"image: {image.root}")
        if image.licence_expires is not None:
            progress.note(f"licence expires on {image.licence_expires}")
    finally:
        progress.close()
    return 0
