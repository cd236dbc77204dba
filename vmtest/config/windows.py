r"""The ``guest:`` section for a Windows 11 guest booted from a golden image built by vmtest.

The image (``vmtest image build windows11``) records what it was built with in its ``image.json``:
the SSH host key to pin, the client key, whether kernel debugging and a TPM were configured. Settings
left unset here default to those. Reference: ``windows11-vm.md``; what it marks unconfirmed is a
setting here (``hyperv_flags``, ``tpm_model``, DebugView's start command).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from vmtest.config.models import ConfigPath, SshConfig, _Strict

__all__ = [
    "DEFAULT_OVMF_CODE",
    "DEFAULT_OVMF_VARS",
    "OvmfConfig",
    "Windows11GuestConfig",
    "WindowsDebugViewConfig",
    "check_cpu_flag",
    "check_windows_user_name",
    "secure_boot_keys_enrolled",
]

DEFAULT_OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
"""Debian ``ovmf``: UEFI firmware code without SMM (windows11-vm.md §1.2, §1.14). Whether Secure Boot is
on is not the code's choice but the variable store's (see :func:`secure_boot_keys_enrolled`)."""
DEFAULT_OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
"""Its empty variable store: no Secure Boot keys enrolled, so Secure Boot is off; the template every new
guest starts from."""

# Secure Boot is on when the variable store holds a Platform Key: Debian's README.Debian for ovmf pairs
# OVMF_CODE_4M.ms.fd with OVMF_VARS_4M.ms.fd, "a variable store with the Microsoft keys enrolled and
# Secure Boot enabled" (and .snakeoil.fd with test keys), while the plain OVMF_VARS_4M.fd is empty; the
# .ms CODE file is only a symlink to the secboot build. So the VARS file decides. An edk2 variable store
# keeps each variable as an AUTHENTICATED_VARIABLE_HEADER (edk2 MdeModulePkg/Include/Guid/VariableFormat.h:
# StartId 0x55AA, State, Reserved, Attributes, MonotonicCount, TimeStamp, PubKeyIndex, NameSize, DataSize,
# VendorGuid) followed by its UTF-16 name; PK is "PK" under EFI_GLOBAL_VARIABLE
# {8BE4DF61-93CA-11D2-AA0D-00E098032B8C} (UEFI spec, "Globally Defined Variables").
_EFI_GLOBAL_VARIABLE = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
_PK_NAME = "PK\0".encode("utf-16-le")
_VARIABLE_ADDED = 0x3F
_GUID_OFFSET = 44  # StartId(2) State(1) Reserved(1) Attributes(4) Count(8) TimeStamp(16) Index(4) Sizes(8)
_ENROLLED_NAMES = (".ms.", ".snakeoil.", ".secboot.")  # Debian's names of stores with keys (a hint only)

# Characters Windows refuses in a local account name; at most 20 characters, not only dots/spaces. The
# unattend reference for LocalAccount/Name lists "/[]:|<>+=;,?*%@ and the restricted name NONE
# (https://learn.microsoft.com/windows-hardware/customize/desktop/unattend/
# microsoft-windows-shell-setup-useraccounts-localaccounts-localaccount-name).
_BAD_USER_CHARACTERS = frozenset('"/\\[]:;|=,+*?<>@%')
_RESTRICTED_USER_NAMES = frozenset({"none"})
_MAX_USER_LENGTH = 20
# One QEMU CPU property: a name and an optional value, never a comma (it would add another property).
_CPU_FLAG = re.compile(r"^[+-]?[A-Za-z0-9_.-]+(=[A-Za-z0-9_.:-]+)?$")
_HOST_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+=*( .*)?$")


def check_windows_user_name(name: str) -> str:
    """``name`` if Windows accepts it as a local account name; ValueError saying why not."""
    if not 1 <= len(name) <= _MAX_USER_LENGTH:
        raise ValueError(f"a Windows user name has 1 to {_MAX_USER_LENGTH} characters")
    bad = sorted(set(name) & _BAD_USER_CHARACTERS)
    if bad:
        raise ValueError(f"a Windows user name cannot contain {' '.join(bad)}")
    if not name.isprintable():
        raise ValueError("a Windows user name cannot contain control characters")
    if not name.strip(". "):
        raise ValueError("a Windows user name cannot consist of dots and spaces only")
    if name.lower() in _RESTRICTED_USER_NAMES:
        raise ValueError(f"{name!r} is a restricted Windows user name")
    return name


def secure_boot_keys_enrolled(vars_file: Path) -> bool | None:
    """Whether an OVMF variable store has a Platform Key (Secure Boot on); None if it cannot tell.

    A raw store is read for a live ``PK`` variable; a qcow2 copy (vmtest's per-run stores) is judged by
    its name only (Debian's ``.ms.``/``.snakeoil.`` files), so None unless the name says so.
    """
    try:
        data = vars_file.read_bytes()
    except OSError:
        return None
    if data.startswith(b"QFI\xfb"):
        return True if any(mark in vars_file.name for mark in _ENROLLED_NAMES) else None
    start = 0
    while (found := data.find(_EFI_GLOBAL_VARIABLE + _PK_NAME, start)) >= 0:
        header = found - _GUID_OFFSET
        start = found + 1
        if header < 0 or data[header : header + 2] != b"\xaa\x55":
            continue
        name_size = int.from_bytes(data[found - 8 : found - 4], "little")
        if data[header + 2] == _VARIABLE_ADDED and name_size == len(_PK_NAME):
            return True
    return False


def check_cpu_flag(flag: str) -> str:
    """``flag`` if it is one QEMU CPU property (``hv-time``, ``hv-spinlocks=0x1fff``, ``-vmx``)."""
    if not _CPU_FLAG.match(flag):
        raise ValueError(f"{flag!r} is not one CPU property like hv-time or hv-spinlocks=0x1fff")
    return flag


class OvmfConfig(_Strict):
    """The UEFI firmware: Secure Boot must stay off for test signing (windows11-vm.md §1.14).

    The variable store decides it, not the code file: a store with Secure Boot keys enrolled (Debian's
    ``OVMF_VARS_4M.ms.fd``) turns it on whatever the code file, and is refused here.
    """

    code: ConfigPath = Field(DEFAULT_OVMF_CODE, description="read-only firmware code (pflash unit 0)")
    vars: ConfigPath | None = Field(
        None,
        description="variable store each run starts from (copy-on-write, qcow2); default: the one the "
        "image was installed with, which holds Windows' boot entry. It decides Secure Boot: it must have "
        "no Secure Boot keys enrolled (not an OVMF_VARS_4M.ms.fd copy), or test signing cannot be on",
    )

    @field_validator("vars")
    @classmethod
    def _no_secure_boot(cls, value: Path | None) -> Path | None:
        if value is not None and secure_boot_keys_enrolled(value):
            raise ValueError(
                f"{value} has Secure Boot keys enrolled, so Secure Boot is on and Windows refuses test "
                "signing (bcdedit fails with 4421): use a store without keys, like Debian's OVMF_VARS_4M.fd"
            )
        return value


class WindowsDebugViewConfig(_Strict):
    """DbgPrint through Sysinternals DbgViewCLI in the guest, for runs without kernel debugging."""

    enabled: bool | None = Field(None, description="default: on when kernel debugging (kd) is off")
    program: str = Field(
        r"C:\vmtest\tools\dbgviewcli.exe",
        min_length=1,
        description="DbgViewCLI in the guest (where `vmtest image build windows11 --tool dbgviewcli.exe` "
        "puts it)",
    )
    guest_log: str = Field(r"C:\vmtest\dbgview.csv", min_length=1, description="its log file in the guest")
    start_command: tuple[str, ...] | None = Field(
        None,
        description="default: start it through WMI Win32_Process.Create, outside the SSH session's job "
        "object (which kills `start /b` children: Win32-OpenSSH #1195, #2452, #1642); or a command prefix "
        "known to keep it running on your guest",
    )
    no_win32: bool = Field(
        True,
        description="pass --no-win32 (kernel output only, no user-mode OutputDebugString); one field "
        "report lost kernel lines with it, so it can be turned off",
    )


class Windows11GuestConfig(_Strict):
    """A Windows 11 guest: the golden image, how to log in, and the virtual hardware's options."""

    kind: Literal["windows11"] = "windows11"
    image: ConfigPath | None = Field(
        None,
        description="an image folder made by `vmtest image build windows11`, or its disk.qcow2; "
        "default: the newest one built",
    )
    user: str = Field("vmtest", description="the local administrator the image was built with")
    password: SecretStr = Field(description="its password; write ${VMTEST_WINDOWS_PASSWORD}")
    transport: Literal["ssh", "smb"] = Field(
        "ssh", description="ssh: OpenSSH (paramiko, cmd.exe shell); smb: SMB + PsExec (pypsexec), port 445"
    )
    ssh_key: ConfigPath | None = Field(None, description="SSH private key; default: the image's client key")
    host_key: str | None = Field(
        None, description="pinned SSH host key line ('ssh-ed25519 AAAA...'); default: the image's"
    )
    insecure_accept_any_host_key: bool = Field(
        False, description="trust whatever key the guest presents: only for throwaway VMs"
    )
    kd: bool = Field(
        True,
        description="kernel debugging: COM1 carries the KD protocol to vmtest's KD host (DbgPrint, "
        "bugchecks, module loads); the image must have been built with it",
    )
    debugview: WindowsDebugViewConfig = WindowsDebugViewConfig()
    oem_code_page: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="the code page the guest's console tools print in (850 for a German or French "
        "Windows); default: read once from the guest's registry (Nls\\CodePage OEMCP)",
    )
    require_signature: bool = Field(
        True,
        description="refuse a .sys without an embedded signature before copying it; turn off only when "
        "a kernel debugger is attached (Windows then loads unsigned drivers) or a catalog signs it",
    )
    tpm: bool | None = Field(None, description="attach a swtpm TPM 2.0; default: as the image was built")
    tpm_model: Literal["tpm-crb", "tpm-tis"] = Field(
        "tpm-crb",
        description="TPM front end (both in use by the references; tpm-crb was verified with snapshots)",
    )
    allow_tcg: bool = Field(
        False,
        description="run without KVM (very slow; hv-crash has no effect, so only the KD host reports "
        "bugchecks)",
    )
    ovmf: OvmfConfig = OvmfConfig()
    hyperv_flags: tuple[str, ...] | None = Field(
        None,
        description="CPU properties after '-cpu host,' (default: hv-relaxed, hv-vapic, hv-spinlocks=0x1fff, "
        "hv-time, hv-crash); the best set per host is unconfirmed",
    )

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        return check_windows_user_name(value)

    @field_validator("hyperv_flags")
    @classmethod
    def _flags(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            for flag in value:
                check_cpu_flag(flag)
        return value

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_KEY.match(value.strip()):
            raise ValueError("expected a public key line like 'ssh-ed25519 AAAA...'")
        return value

    @property
    def debugview_enabled(self) -> bool:
        """Whether DbgViewCLI runs in the guest: as configured, else exactly when kd is off."""
        return self.debugview.enabled if self.debugview.enabled is not None else not self.kd

    def ssh_config(self, *, image_host_key: str | None, image_client_key: Path | None) -> SshConfig:
        """The SSH settings for :class:`~vmtest.guest.ssh.SshTransport` (use ``shell="cmd"``).

        The pinned host key and the client key default to the image's; the password is offered too.
        """
        host_key = None if self.insecure_accept_any_host_key else (self.host_key or image_host_key)
        return SshConfig(
            user=self.user,
            key=self.ssh_key if self.ssh_key is not None else image_client_key,
            password=self.password,
            host_key=host_key,
            insecure_accept_any_host_key=self.insecure_accept_any_host_key,
        )
