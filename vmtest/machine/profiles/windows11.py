"""The ``windows11`` profile: a golden Windows 11 image on q35 + OVMF under KVM, and its installer.

Every flag comes from ``windows11-vm.md`` (section named in :meth:`Windows11Profile.qemu_args`):

* q35, OVMF without Secure Boot (test signing needs it off); the variable store is a per-run qcow2
  overlay of the image's own store, so RAM snapshots work (a raw VARS pflash refuses them, §7);
* an AHCI disk and an e1000e NIC (in-box drivers), a VGA screen for screenshots, a USB tablet;
* ``-cpu host`` with Hyper-V enlightenments and ``hv-crash``: with the machine's ``-action
  panic=pause`` a bugcheck reaches QMP as ``GUEST_PANICKED`` with the stop code while the blue screen
  stays up for a screenshot (python-apis.md §2.3);
* COM1 is the kernel-debugger link (serial role ``kd``), COM2 a text console (role ``console``) where
  the image's start-up task prints :data:`READY_MARKER` once SSH/SMB listen;
* optionally a swtpm TPM 2.0, started per run by :meth:`Windows11Profile.start_helpers`.

KVM is required: under TCG a Windows boot takes very long and ``hv-crash`` does nothing, so the
profile refuses TCG unless ``allow_tcg`` is set. When the host KVM lacks ``KVM_CAP_HYPERV`` the default
enlightenments are left out (QEMU ignores them, or aborts on some) with a warning: then only the KD
host reports bugchecks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from vmtest.errors import AcceleratorError, ImageError, InfraError, QemuStartError
from vmtest.machine.confine import Confinement
from vmtest.machine.hostfiles import HostFiles, qemu_path
from vmtest.machine.kvm_caps import kvm_has_hyperv
from vmtest.machine.process import spawn_bound_to_parent
from vmtest.machine.profiles.base import LaunchContext, Profile

if TYPE_CHECKING:
    from vmtest.config.windows import Windows11GuestConfig
    from vmtest.images.windows11 import WindowsImage

__all__ = [
    "DEFAULT_HYPERV_FLAGS",
    "KD_BAUD_RATE",
    "KD_DEBUG_PORT",
    "READY_MARKER",
    "SMB_PORT",
    "SSH_PORT",
    "TPM_STATE",
    "TpmSettings",
    "Windows11InstallerProfile",
    "Windows11Profile",
    "WindowsHardware",
    "tpm_socket",
]

log = logging.getLogger(__name__)

DEFAULT_HYPERV_FLAGS = ("hv-relaxed", "hv-vapic", "hv-spinlocks=0x1fff", "hv-time", "hv-crash")
"""AutoHCK's enlightenments (windows11-vm.md §1.4) plus ``hv-crash`` (python-apis.md §2.3)."""
READY_MARKER = "VMTEST-GUEST-READY"
"""What the image's ``vmtest-ready`` task prints on COM2 at every boot once SSH (and SMB) listen."""
KD_DEBUG_PORT = 1
"""``bcdedit /dbgsettings serial debugport:1``: COM1, the first ``-serial``, is the KD link."""
KD_BAUD_RATE = 115200
SSH_PORT = 22
SMB_PORT = 445
TPM_STATE = "tpm/state"
"""The TPM's state for this run, relative to the run directory (a copy of the image's)."""
_SWTPM_START = 10.0
_SWTPM_STOP = 5.0


@dataclass(frozen=True)
class TpmSettings:
    """A swtpm TPM 2.0: its front end, and the state directory each run starts from (None: a new TPM)."""

    model: str = "tpm-crb"
    state: Path | None = None


@dataclass(frozen=True)
class WindowsHardware:
    """What the QEMU command line is made of: the disks, the firmware and the CPU/TPM options."""

    disk: Path
    efivars: Path
    ovmf_code: Path
    hyperv_flags: tuple[str, ...] | None = None
    tpm: TpmSettings | None = None
    allow_tcg: bool = False


def tpm_socket(run_dir: Path) -> Path:
    """The swtpm control socket of the run in ``run_dir``.

    A Unix socket path must fit in 108 bytes, which a run directory may not, so the socket lives in a
    private folder of the temporary directory named after the run directory.
    """
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"vmtest-swtpm-{digest}" / "swtpm.sock"


def _private_folder(folder: Path, owner: int) -> None:
    """Create ``folder`` 0700 for ``owner``, or accept it only if it already is exactly that."""
    try:
        folder.mkdir(mode=0o700)
        if owner != os.getuid():
            os.chown(folder, owner, -1)
    except FileExistsError:
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or stat.S_IMODE(info.st_mode) != 0o700:
            raise InfraError(
                f"{folder} exists and is not a private folder of uid {owner}", phase="boot"
            ) from None


def _give(tree: Path, owner: int) -> None:
    """Make ``tree`` (a folder vmtest just made) belong to ``owner``: swtpm writes its state there."""
    for folder, _, names in os.walk(tree):
        os.chown(folder, owner, -1)
        for name in names:
            os.chown(os.path.join(folder, name), owner, -1)


def _cdrom(files: HostFiles, path: Path, drive: str) -> str:
    """The ``-drive`` value of a read-only ISO for an ``ide-cd`` device (§1.5)."""
    return f"file={files.image(path, writable=False)},if=none,id={drive},media=cdrom,readonly=on,format=raw"


class Windows11Profile(Profile):
    """Windows 11 on q35 + OVMF (Secure Boot off) under KVM: AHCI disk, e1000e, COM1 KD, COM2 console."""

    name: ClassVar[str] = "windows11"
    serial_roles: ClassVar[tuple[str, ...]] = ("kd", "console")
    requires_kvm: ClassVar[bool] = True

    def __init__(
        self,
        hardware: WindowsHardware,
        *,
        forwards: Mapping[str, int] | None = None,
        ready_marker: str | None = READY_MARKER,
    ) -> None:
        self.hardware = hardware
        self.image: WindowsImage | None = None
        """The sealed image booted, when known: its pinned host key and client key."""
        self._forwards = dict({"ssh": SSH_PORT} if forwards is None else forwards)
        self._ready_marker = ready_marker
        self._hyperv: bool | None = None
        self._hyperv_checked = False
        self._swtpm: asyncio.subprocess.Process | None = None
        self._socket: Path | None = None

    @classmethod
    def for_image(cls, image: WindowsImage, guest: Windows11GuestConfig) -> Windows11Profile:
        """The profile for ``guest`` booting ``image``; raises ImageError when they do not fit together."""
        if guest.kd and not image.kernel_debug:
            raise ImageError(
                f"the image {image.root} was built without kernel debugging; set guest.kd: false (DbgPrint "
                "then comes through DebugView) or rebuild it with kernel debugging"
            )
        if not guest.kd and image.kernel_debug:
            log.warning(
                "the image has kernel debugging on but guest.kd is false: nothing answers on COM1, so the "
                "guest boots slower and stops at a breakpoint or bugcheck until a debugger attaches"
            )
        if guest.transport == "ssh" and not image.openssh:
            raise ImageError(
                f"the image {image.root} has no OpenSSH server; set guest.transport: smb, or rebuild it with "
                "--openssh-zip"
            )
        if guest.ovmf.code.resolve() != image.ovmf_code.resolve():
            log.warning(
                "OVMF code %s differs from the one the image was installed with (%s); firmware code and "
                "variable store must come from the same build",
                guest.ovmf.code,
                image.ovmf_code,
            )
        tpm_wanted = image.tpm if guest.tpm is None else guest.tpm
        tpm = TpmSettings(guest.tpm_model, image.tpm_state) if tpm_wanted else None
        hardware = WindowsHardware(
            disk=image.disk,
            efivars=guest.ovmf.vars or image.efivars,
            ovmf_code=guest.ovmf.code,
            hyperv_flags=guest.hyperv_flags,
            tpm=tpm,
            allow_tcg=guest.allow_tcg,
        )
        forwards = {"ssh": SSH_PORT} if image.openssh else {}
        if guest.transport == "smb":
            forwards["smb"] = SMB_PORT
        profile = cls(hardware, forwards=forwards, ready_marker=image.ready_marker)
        profile.image = image
        return profile

    # ------------------------------------------------------------------------------------ the interface

    @property
    def base_disks(self) -> tuple[Path, ...]:
        """The system disk, then the UEFI variable store (both get a per-run qcow2 overlay)."""
        return (self.hardware.disk, self.hardware.efivars)

    @property
    def forwards(self) -> Mapping[str, int]:
        """SSH (22) when the image has OpenSSH; SMB (445) when the SMB/PsExec transport is chosen."""
        return dict(self._forwards)

    @property
    def ready_marker(self) -> str | None:
        """The line the image's start-up task prints on COM2 once SSH/SMB listen."""
        return self._ready_marker

    @property
    def powerdown_timeout(self) -> float:
        """Windows takes far longer than Linux to shut down on the ACPI power button."""
        return 90.0

    @property
    def snapshot_nodes(self) -> tuple[str, ...]:
        """The disk's overlay (which receives the RAM state) and the variable store's (§1.11, §7).

        Both are qcow2 overlays, so ``snapshot-save`` works; a TPM's state travels in the RAM state.
        """
        return ("disk0", "efivars")

    def hyperv_flags(self) -> tuple[str, ...]:
        """The ``hv-*`` properties for ``-cpu host``: as configured, else the defaults if KVM has them."""
        if self.hardware.hyperv_flags is not None:
            return self.hardware.hyperv_flags
        if self.host_hyperv() is False:
            return ()
        return DEFAULT_HYPERV_FLAGS

    def host_hyperv(self) -> bool | None:
        """Whether the host KVM offers Hyper-V enlightenments (asked once; None: cannot tell)."""
        if not self._hyperv_checked:
            self._hyperv = kvm_has_hyperv()
            self._hyperv_checked = True
        return self._hyperv

    def cpu_model(self, accel: str) -> str:
        """``host`` plus the enlightenments under KVM; ``max`` (SSE4.2, POPCNT) under TCG."""
        if accel != "kvm":
            return "max"
        return ",".join(["host", *self.hyperv_flags()])

    def check_accelerator(self, accel: str) -> None:
        """Raise AcceleratorError unless ``accel`` is KVM or TCG was explicitly allowed."""
        if accel == "kvm" or self.hardware.allow_tcg:
            return
        raise AcceleratorError(
            f"a Windows 11 guest needs KVM, but the accelerator is {accel}: KVM is missing or cannot run a "
            "guest on this host (see the warning above). Under TCG Windows takes hours to boot and hv-crash "
            "does nothing; set guest.allow_tcg: true (or --allow-tcg) to run it anyway",
            phase="boot",
        )

    def qemu_args(self, context: LaunchContext) -> list[str]:
        """The Windows machine; each flag's source is the windows11-vm.md section named beside it."""
        self.check_accelerator(context.accel)
        self._warn_about_hyperv(context.accel)
        files = context.files
        args = [
            "-machine", "q35,vmport=off",                                   # §1.1; no VMware port
            "-cpu", self.cpu_model(context.accel),                          # §1.4; python-apis §2.3
            "-global", "ICH9-LPC.disable_s3=1",                             # §1.13: no S3/S4 sleep
            "-global", "ICH9-LPC.disable_s4=1",
            "-drive", "if=pflash,format=raw,unit=0,readonly=on,"            # §1.2: no Secure Boot
                      f"file={files.image(self.hardware.ovmf_code, writable=False)}",
            "-drive", "if=pflash,format=qcow2,unit=1,node-name=efivars,"    # §1.11, §7: qcow2 VARS
                      f"{self.overlay_file(context, 1)}",  # pflash takes no werror (QEMU refuses it)
            "-drive", f"{self.overlay_file(context, 0)},if=none,id=hd0,format=qcow2,node-name=disk0,"
                      "discard=unmap,werror=stop",
            "-device", "ide-hd,drive=hd0,bus=ide.0,bootindex=1",           # §1.5: AHCI
            "-device", "e1000e,netdev=net0",                                # §1.6
            "-device", "qemu-xhci",                                         # §1.13, §1.15
            "-device", "usb-tablet",
            "-vga", "std",                                                  # §1.12: screendump
            "-rtc", "base=utc,driftfix=slew",                               # §1.13 (guest time zone: UTC)
        ]  # fmt: skip
        if context.accel == "kvm":
            args += ["-global", "kvm-pit.lost_tick_policy=discard"]  # §1.4 (AutoHCK)
        if self.hardware.tpm is not None:
            socket = tpm_socket(context.run_dir)
            args += [
                "-chardev", f"socket,id=chrtpm,path={qemu_path(socket)}",  # §1.3
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                "-device", f"{self.hardware.tpm.model},tpmdev=tpm0",
            ]  # fmt: skip
        return args

    def _warn_about_hyperv(self, accel: str) -> None:
        if accel != "kvm":
            log.warning(
                "Windows under %s: hv-crash has no effect, only the KD host will see bugchecks", accel
            )
        elif self.host_hyperv() is False:
            what = (
                "the configured hv-* flags may be ignored or rejected"
                if self.hardware.hyperv_flags
                else "the hv-* enlightenments are left out"
            )
            log.warning(
                "the host KVM lacks Hyper-V support (KVM_CAP_HYPERV): %s, and a bugcheck reaches vmtest "
                "only through the KD host, not as GUEST_PANICKED with its stop code",
                what,
            )
        elif "hv-crash" not in self.hyperv_flags():
            log.warning(
                "hv-crash is not among the CPU flags: bugchecks will not reach QMP with their stop code"
            )

    def describe(self) -> str:
        """``windows11 (q35, OVMF, COM1 KD, COM2 console[, TPM])``."""
        tpm = ", TPM" if self.hardware.tpm is not None else ""
        return f"{self.name} (q35, OVMF, COM1 KD, COM2 console{tpm})"

    # ------------------------------------------------------------------------------------ helpers

    async def start_helpers(self, run_dir: Path) -> None:
        """Start what QEMU connects to, before it starts: the swtpm TPM when one is configured.

        swtpm runs with ``--terminate`` (it exits when QEMU closes the control channel, §1.3, §7.7), so
        a new one is needed for every QEMU launch. Its state starts as a copy of the template's.
        """
        tpm = self.hardware.tpm
        if tpm is None or self._swtpm is not None:
            return
        swtpm = shutil.which("swtpm")
        if swtpm is None:
            raise QemuStartError("swtpm is not installed; `apt-get install swtpm swtpm-tools`", phase="boot")
        confinement = self.confinement or Confinement.default()
        owner = confinement.run_as.uid if confinement.run_as is not None else os.getuid()
        socket = tpm_socket(run_dir)
        _private_folder(socket.parent, owner)
        socket.unlink(missing_ok=True)  # left over by a killed run
        self._socket = socket
        state = run_dir / TPM_STATE
        if tpm.state is not None and tpm.state.is_dir():
            shutil.copytree(tpm.state, state)
        state.mkdir(parents=True, exist_ok=True)
        if owner != os.getuid():
            _give(state, owner)
        # swtpm runs as QEMU's user, which cannot reach the run directory: it starts in its state
        # folder (entered before the change of user) and logs to its standard output (swtpm.log).
        args = [
            swtpm, "socket", "--tpm2", "--terminate",
            "--tpmstate", "dir=.",
            "--ctrl", f"type=unixio,path={socket}",
            "--log", "fd=1,level=20",
        ]  # fmt: skip
        log.info("starting swtpm in %s: %s", state, " ".join(args))
        self._swtpm = await spawn_bound_to_parent(
            args, log=run_dir / "swtpm.log", confinement=confinement, cwd=state
        )
        await self._wait_for_socket(socket)

    async def _wait_for_socket(self, socket: Path) -> None:
        assert self._swtpm is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SWTPM_START
        while not socket.exists():
            if self._swtpm.returncode is not None or loop.time() > deadline:
                await self.stop_helpers()
                raise QemuStartError(
                    f"swtpm did not create its socket {socket} within {_SWTPM_START:.0f}s (see swtpm.log)",
                    phase="boot",
                )
            await asyncio.sleep(0.05)

    async def stop_helpers(self) -> None:
        """Stop swtpm if it is still running (it normally exits with QEMU) and remove its socket."""
        process, self._swtpm = self._swtpm, None
        socket, self._socket = self._socket, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _SWTPM_STOP)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if socket is not None:
            shutil.rmtree(socket.parent, ignore_errors=True)


class Windows11InstallerProfile(Windows11Profile):
    """The Windows profile plus the installation ISO and the answer ISO, surviving Setup's reboots.

    The blank disk keeps ``bootindex=1`` and the installation CD comes second (§1.15): the empty disk
    falls through to the CD on the first boot, and later boots start Windows from the disk.
    """

    name: ClassVar[str] = "windows11-installer"

    def __init__(self, hardware: WindowsHardware, *, windows_iso: Path, answer_iso: Path) -> None:
        super().__init__(hardware, forwards={}, ready_marker=None)
        self.windows_iso = windows_iso
        self.answer_iso = answer_iso

    @property
    def snapshot_nodes(self) -> tuple[str, ...]:
        """None: an install is never snapshotted."""
        return ()

    def qemu_args(self, context: LaunchContext) -> list[str]:
        """The Windows machine, two CD-ROMs on the AHCI controller, and reboots that really reboot."""
        return [
            *super().qemu_args(context),
            "-drive", _cdrom(context.files, self.windows_iso, "cd0"),
            "-device", "ide-cd,drive=cd0,bus=ide.1,bootindex=2",             # §1.5, §1.15
            "-drive", _cdrom(context.files, self.answer_iso, "cd1"),
            "-device", "ide-cd,drive=cd1,bus=ide.2",                         # §2.1: Autounattend.xml
            # Setup reboots several times; this overrides the machine's reboot=shutdown (the last
            # -action wins, checked on QEMU 7.2).
            "-action", "reboot=reset",
        ]  # fmt: skip
