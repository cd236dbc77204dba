"""How QEMU and swtpm are confined: a seccomp filter, an unprivileged user and resource bounds.

Modelled on libvirt (an unprivileged ``qemu`` user, ``-sandbox on``) and Firecracker's jailer (a
process that can reach nothing it was not handed). docs/SECURITY.md has the threat model.

* **seccomp**: every QEMU runs under ``-sandbox`` with :data:`SANDBOX` (spawning a process, changing
  privileges, obsolete system calls and resource control all denied: QEMU is killed by SIGSYS if it
  tries). ``machine.sandbox: false`` turns it off, and the run's reports say so.
* **user**: when vmtest runs as root, QEMU and swtpm are started as ``machine.user`` (default ``vmtest``,
  a dedicated system user that ``setup.sh`` creates; ``nobody`` when it does not exist). They are
  started as that user rather than with QEMU's ``-runas``: ``-runas`` changes user after start-up,
  which ``elevateprivileges=deny`` forbids and which clears the parent-death signal that ties QEMU's
  life to vmtest's. The only supplementary group kept is the group of ``/dev/kvm`` when it grants
  read and write (usually ``kvm``).
* **files**: QEMU opens nothing of vmtest's by path: every disk, firmware, kernel and log is opened by
  vmtest and handed over as a descriptor (:mod:`vmtest.machine.hostfiles`), so the run directory, the
  golden image and the warm store stay private to vmtest's user and the base image is only ever
  reachable read-only.
* **bounds** (``machine.limits``): the address space (guest memory plus an overhead), CPU time and the
  size of every file QEMU writes. A disk write past the file bound fails with EFBIG, which the drives'
  ``werror=stop`` turns into a paused guest and a ``BLOCK_IO_ERROR`` event that ends the run naming the
  bound; CPU time past its bound kills QEMU with SIGXCPU, named the same way. No core dumps: one would
  hold the guest's memory.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import resource
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

from vmtest.config.models import MachineConfig, MachineLimits
from vmtest.errors import ConfigError

__all__ = [
    "DEFAULT_USER",
    "FALLBACK_USER",
    "KVM_DEVICE",
    "SANDBOX",
    "Bounds",
    "Confinement",
    "RunAs",
    "bound_for_signal",
    "can_open",
    "confinement_warnings",
]

log = logging.getLogger(__name__)

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
"""The ``-sandbox`` value: QEMU's seccomp filter with every optional group of system calls denied."""
DEFAULT_USER = "vmtest"
FALLBACK_USER = "nobody"
KVM_DEVICE = Path("/dev/kvm")
_MIB = 1 << 20
_CPU_GRACE = 5


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user (and groups) QEMU and swtpm run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Bounds:
    """Resource limits applied to QEMU and swtpm (bytes and seconds; None: no bound)."""

    address_space: int | None
    cpu_seconds: int | None
    file_size: int | None

    @classmethod
    def for_machine(cls, memory_mib: int, limits: MachineLimits) -> Bounds:
        """The bounds of a machine with ``memory_mib`` of guest memory."""
        return cls(
            address_space=(memory_mib + limits.memory_overhead_mib) * _MIB,
            cpu_seconds=limits.cpu_seconds,
            file_size=limits.disk_mib * _MIB,
        )

    def apply(self) -> None:
        """Set the limits on the calling process (a child about to exec)."""
        for which, value in (
            (resource.RLIMIT_AS, self.address_space),
            (resource.RLIMIT_FSIZE, self.file_size),
        ):
            if value is not None:
                resource.setrlimit(which, (value, value))
        if self.cpu_seconds is not None:
            # SIGXCPU at the bound (QEMU ends, and the exit names the bound); SIGKILL a little later if it
            # survived that. Equal soft and hard limits would make the kernel send SIGKILL first.
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + _CPU_GRACE))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold the guest's memory
        # A write past RLIMIT_FSIZE then fails with EFBIG (reported by QEMU as an I/O error) instead of
        # killing QEMU with SIGXFSZ; an ignored signal stays ignored across exec.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def describe(self) -> str:
        """``address space 5120 MiB, CPU time 7200 s, files 8192 MiB``."""
        parts = []
        if self.address_space is not None:
            parts.append(f"address space {self.address_space // _MIB} MiB")
        if self.cpu_seconds is not None:
            parts.append(f"CPU time {self.cpu_seconds} s")
        if self.file_size is not None:
            parts.append(f"files {self.file_size // _MIB} MiB")
        return ", ".join(parts) or "none"


def bound_for_signal(signum: int) -> str | None:
    """What a QEMU killed by ``signum`` ran into, when it is one of the confinement's bounds."""
    if signum == signal.SIGSYS:
        return "the seccomp filter (machine.sandbox) stopping a forbidden system call (a process spawn?)"
    if signum == signal.SIGXCPU:
        return "the CPU-time bound (machine.limits.cpu_seconds, RLIMIT_CPU)"
    if signum == signal.SIGXFSZ:
        return "the file-size bound (machine.limits.disk_mib, RLIMIT_FSIZE)"
    return None


def confinement_warnings(machine: MachineConfig) -> list[str]:
    """What the run's reports must say about confinement that ``machine`` turned off."""
    found = []
    if not machine.sandbox:
        found.append(
            "QEMU ran without its seccomp filter (machine.sandbox: false): a driver that escapes the "
            "guest into QEMU may spawn processes on the host"
        )
    return found


def can_open(path: Path, run_as: RunAs | None, *, write: bool = False) -> bool:
    """Whether ``run_as`` (None: this process) may open ``path`` for reading (and writing) by its mode."""
    if run_as is None:
        return os.access(path, os.R_OK | (os.W_OK if write else 0))
    try:
        info = path.stat()
    except OSError:
        return False
    if info.st_uid == run_as.uid:
        wanted = stat.S_IRUSR | (stat.S_IWUSR if write else 0)
    elif info.st_gid == run_as.gid or info.st_gid in run_as.groups:
        wanted = stat.S_IRGRP | (stat.S_IWGRP if write else 0)
    else:
        wanted = stat.S_IROTH | (stat.S_IWOTH if write else 0)
    return info.st_mode & wanted == wanted


def _kvm_groups() -> tuple[int, ...]:
    """The group of /dev/kvm when it grants that group read and write (``crw-rw---- root kvm``)."""
    try:
        info = KVM_DEVICE.stat()
    except OSError:
        return ()
    wanted = stat.S_IRGRP | stat.S_IWGRP
    return (info.st_gid,) if info.st_mode & wanted == wanted and info.st_gid != 0 else ()


def _resolve_user(name: str) -> RunAs:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_USER:
            raise ConfigError(
                f"machine.user {name!r} does not exist on this host; create it (useradd --system "
                f"--no-create-home --shell /usr/sbin/nologin {name}) or choose another"
            ) from None
        log.info("no %r user on this host (setup.sh creates it): QEMU runs as %s", name, FALLBACK_USER)
        entry = pwd.getpwnam(FALLBACK_USER)
    if entry.pw_uid == 0:
        raise ConfigError(f"machine.user {entry.pw_name!r} is root: QEMU must run as an unprivileged user")
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, _kvm_groups())


@dataclass(frozen=True)
class Confinement:
    """How the processes of one machine are confined: seccomp, user, bounds."""

    sandbox: bool
    run_as: RunAs | None
    bounds: Bounds

    @classmethod
    def from_config(cls, machine: MachineConfig) -> Confinement:
        """The confinement ``machine`` asks for; a user is chosen only when vmtest runs as root."""
        run_as = _resolve_user(machine.user) if os.geteuid() == 0 else None
        bounds = Bounds.for_machine(machine.memory_mib, machine.limits)
        return cls(sandbox=machine.sandbox, run_as=run_as, bounds=bounds)

    @classmethod
    def default(cls) -> Confinement:
        """The confinement of a machine with the default configuration (the KVM probe's)."""
        return cls.from_config(MachineConfig())

    def qemu_args(self) -> list[str]:
        """The ``-sandbox`` option, unless the sandbox is turned off."""
        return ["-sandbox", SANDBOX] if self.sandbox else []

    def prepare_child(self) -> None:
        """In the child, after it took on :attr:`run_as` and before exec: apply the bounds."""
        self.bounds.apply()

    def describe(self) -> str:
        """One line for the log: ``seccomp on, user vmtest, bounds: ...``."""
        user = self.run_as.name if self.run_as is not None else f"uid {os.geteuid()} (vmtest's own)"
        return f"seccomp {'on' if self.sandbox else 'OFF'}, user {user}, bounds: {self.bounds.describe()}"

    def warnings(self) -> list[str]:
        """What the reports must say about confinement that is missing."""
        return confinement_warnings(MachineConfig(sandbox=self.sandbox))

    def group_names(self) -> str:
        """The supplementary groups kept, by name, for the log and the doctor."""
        if self.run_as is None:
            return ""
        names = []
        for gid in self.run_as.groups:
            try:
                names.append(grp.getgrgid(gid).gr_name)
            except KeyError:
                names.append(str(gid))
        return ",".join(names)
