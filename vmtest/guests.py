"""Which transport and driver lifecycle the configured guest kind uses: the pipeline's one switch on it.

It sits beside the pipeline (not in ``guest/``, whose modules are the transports themselves): this is
the one place that knows which guest kind uses which implementations; the pipeline only sees a
:class:`Guest`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vmtest.config.models import LinuxGuestConfig, SshConfig, VmtestConfig
from vmtest.config.windows import Windows11GuestConfig
from vmtest.drivers.lifecycle import DriverLifecycle
from vmtest.drivers.linux import LinuxDriverLifecycle
from vmtest.drivers.windows import WindowsDriverLifecycle
from vmtest.guest.ssh import SshTransport
from vmtest.guest.transport import Transport
from vmtest.machine.ports import LOOPBACK
from vmtest.machine.profiles.base import Profile
from vmtest.machine.profiles.linux import LinuxProfile
from vmtest.machine.profiles.windows11 import Windows11Profile

__all__ = ["Guest", "GuestAccess", "access_for", "guest_for"]

GUEST_ACCESS_FILE = "guest.json"
KNOWN_HOSTS_FILE = "known_hosts"


@dataclass
class Guest:
    """The booted guest as the pipeline sees it: a way in, and a way to load drivers."""

    transport: Transport
    drivers: DriverLifecycle
    shell: Literal["posix", "cmd"] = "posix"
    """The guest's command shell, for commands the pipeline builds itself (the smoke exerciser)."""

    def close(self) -> None:
        """Drop the connection."""
        self.transport.close()


def guest_for(config: VmtestConfig, profile: Profile, forwards: Mapping[str, int], run_id: str) -> Guest:
    """The transport and driver lifecycle for ``config``'s guest kind (not yet connected)."""
    guest = config.guest
    if isinstance(guest, LinuxGuestConfig):
        linux = profile.image if isinstance(profile, LinuxProfile) else None
        transport: Transport = SshTransport.for_guest(guest.ssh, forwards["ssh"], linux)
        return Guest(transport, LinuxDriverLifecycle(transport, run_id))
    if guest.transport == "smb":
        from vmtest.guest.smb import SmbPsexecTransport  # here: smbprotocol takes ~60 ms to import

        password = guest.password.get_secret_value()
        transport = SmbPsexecTransport(LOOPBACK, guest.user, password, run_id=run_id, port=forwards["smb"])
    else:
        transport = SshTransport.for_guest(_windows_ssh(guest, profile), forwards["ssh"], None, shell="cmd")
    lifecycle = WindowsDriverLifecycle(
        transport, run_id, code_page=guest.oem_code_page, require_signature=guest.require_signature
    )
    return Guest(transport, lifecycle, shell="cmd")


def _windows_ssh(guest: Windows11GuestConfig, profile: Profile) -> SshConfig:
    image = profile.image if isinstance(profile, Windows11Profile) else None
    return guest.ssh_config(
        image_host_key=image.host_key if image else None, image_client_key=image.client_key if image else None
    )


@dataclass(frozen=True)
class GuestAccess:
    """How a person (or ``vmtest exec --vm``) reaches a running guest; holds no secret."""

    host: str
    port: int
    user: str
    key: str | None
    host_key: str | None
    shell: str = "posix"

    def write(self, run_dir: Path) -> None:
        """Write ``guest.json`` and an OpenSSH ``known_hosts`` for the pinned key into ``run_dir``."""
        (run_dir / GUEST_ACCESS_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")
        if self.host_key:
            (run_dir / KNOWN_HOSTS_FILE).write_text(f"[{self.host}]:{self.port} {self.host_key}\n")

    @classmethod
    def read(cls, run_dir: Path) -> GuestAccess:
        """Read what :meth:`write` wrote."""
        data: dict[str, Any] = json.loads((run_dir / GUEST_ACCESS_FILE).read_text())
        return cls(**data)

    def transport(self) -> SshTransport:
        """An SSH transport to this guest."""
        return SshTransport(
            host=self.host,
            port=self.port,
            user=self.user,
            key=Path(self.key) if self.key else None,
            password=None,
            host_key=self.host_key,
            accept_any_host_key=self.host_key is None,
            shell="cmd" if self.shell == "cmd" else "posix",
        )

    def ssh_command(self, run_dir: Path) -> str:
        """An ``ssh`` command line a person can paste."""
        parts = ["ssh", "-p", str(self.port)]
        if self.key:
            parts += ["-i", self.key]
        if self.host_key:
            parts += ["-o", f"UserKnownHostsFile={run_dir / KNOWN_HOSTS_FILE}"]
        return " ".join([*parts, f"{self.user}@{self.host}"])


def access_for(config: VmtestConfig, profile: Profile, forwards: Mapping[str, int]) -> GuestAccess | None:
    """How to reach the guest ``config`` describes over SSH, booted with ``forwards``; None without SSH."""
    guest = config.guest
    if "ssh" not in forwards or (isinstance(guest, Windows11GuestConfig) and guest.transport != "ssh"):
        return None
    if isinstance(guest, Windows11GuestConfig):
        ssh, shell = _windows_ssh(guest, profile), "cmd"
    else:
        ssh, shell = guest.ssh, "posix"
        linux = profile.image if isinstance(profile, LinuxProfile) else None
        if linux is not None:
            host_key = None if ssh.insecure_accept_any_host_key else (ssh.host_key or linux.host_key)
            ssh = ssh.model_copy(update={"key": ssh.key or linux.client_key, "host_key": host_key})
    key = str(ssh.key) if ssh.key else None
    return GuestAccess(LOOPBACK, forwards["ssh"], ssh.user, key, ssh.host_key, shell)
