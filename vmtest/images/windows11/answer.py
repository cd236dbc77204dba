"""The answer file: :class:`AnswerSettings`, validated, rendered from the template into ``Autounattend.xml``.

The template and the provisioning scripts are read from ``images/windows11``, shipped in the package
(:func:`windows_files_dir`). The password is encoded the way Windows Setup expects (base64 UTF-16,
not encryption), and every value is escaped by the XML serializer.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmtest.config.windows import check_windows_user_name
from vmtest.errors import ConfigError, ImageError
from vmtest.images.windows11.markers import MARKERS
from vmtest.resources import WINDOWS_IMAGE_FILES

__all__ = [
    "DEFAULT_COMPUTER_NAME",
    "DEFAULT_USER",
    "PROVISION_COMMAND",
    "UNATTEND_NS",
    "WCM_NS",
    "AnswerSettings",
    "check_password",
    "encode_password",
    "render_answer_file",
    "windows_files_dir",
]

DEFAULT_USER = "vmtest"
DEFAULT_COMPUTER_NAME = "VMTEST-WIN11"
TEMPLATE = "autounattend.xml.in"
SCRIPTS = ("common.ps1", "provision.ps1", "ready.ps1")
# The first logon finds the provisioning script on whichever drive holds it (rgl/windows-vagrant's way).
PROVISION_COMMAND = (
    'powershell.exe -NoLogo -NoProfile -ExecutionPolicy Bypass -Command "Get-PSDrive -PSProvider FileSystem'
    " | ForEach-Object { $p = Join-Path $_.Root 'vmtest\\provision.ps1'; if (Test-Path -LiteralPath $p)"
    " { & $p -Source (Join-Path $_.Root 'vmtest'); exit $LASTEXITCODE } }\""
)

# The answer file's XML namespaces.
UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
WCM_NS = "http://schemas.microsoft.com/WMIConfig/2002/State"
TEMPLATE_NS = "urn:vmtest:template"

_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_COMPUTER_NAME = re.compile(r"^(?![0-9]+$)[A-Za-z0-9-]{1,15}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_INPUT_LOCALE = re.compile(r"^([0-9A-Fa-f]{4}:[0-9A-Fa-f]{8}|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
_PRODUCT_KEY = re.compile(r"^([A-Z0-9]{5}-){4}[A-Z0-9]{5}$")


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
        # Windows keeps users and the computer in one account namespace: OOBE refuses a user named like
        # the computer ("The user name can't be the same as the computer name"; a guess from field
        # reports, no Microsoft page states it), and setup would stop at that screen, unattended.
        if self.user.casefold() == self.computer_name.casefold():
            problems.append(
                f"user {self.user!r} is the computer's name too: Windows refuses a user named like the "
                "computer; choose another user or computer name"
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


def check_password(password: str, source: str) -> str:
    """``password`` if Windows can take it; ConfigError naming ``source`` (where it came from) if not."""
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
    check_password(password, "given")
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


def windows_files_dir() -> Path:
    """The answer-file template and scripts: ``images/windows11``.

    Found by :data:`vmtest.resources.WINDOWS_IMAGE_FILES` (shipped in the package, or the source
    tree's; ``$VMTEST_WINDOWS_IMAGE_FILES`` overrides it).
    """
    path = WINDOWS_IMAGE_FILES.path()
    missing = [name for name in (TEMPLATE, *SCRIPTS) if not (path / name).is_file()]
    if missing:
        raise ImageError(
            f"the Windows image files are not at {path} (missing {', '.join(missing)}); reinstall "
            f"vmtest, or set {WINDOWS_IMAGE_FILES.override} to the images/windows11 directory of the "
            "vmtest source tree"
        )
    return path
