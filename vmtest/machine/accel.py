"""Choosing the accelerator: KVM only when it can really run a guest, else TCG.

``/dev/kvm`` can exist and still be unable to run a guest: on a nested hypervisor a Linux kernel under
KVM can hang in its decompressor while a simple long-mode program runs fine. So ``auto`` boots a real
kernel under KVM (the Linux self-test guest's, when built) and calls KVM usable only when that kernel
prints its banner before the deadline. Without a kernel it falls back to a 512-byte boot sector that
enters long mode and writes to QEMU's ``isa-debug-exit`` port (source: ``kvm_probe.S``).

The probe runs confined exactly like the guests will (seccomp, QEMU's user, files passed as
descriptors), so "KVM usable" means usable by that user: a ``/dev/kvm`` only root may open is not.

Results are cached per host boot, QEMU binary, CPU model, probe kernel and user, so a hanging KVM costs
its deadline once, not on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vmtest.config.models import Accelerator
from vmtest.errors import AcceleratorError, QemuStartError
from vmtest.machine.confine import KVM_DEVICE, Confinement, can_open
from vmtest.machine.hostfiles import HostFiles
from vmtest.machine.process import spawn_bound_to_parent

__all__ = ["KvmProbe", "probe_kvm", "resolve_accelerator"]

log = logging.getLogger(__name__)

_EXIT_STATUS = (0x2A << 1) | 1  # isa-debug-exit turns the byte 0x2a written by the probe into this status
# Assembled from kvm_probe.S (as --32; ld -Ttext 0x7c00 --oformat binary), zero-padded to 510 bytes.
_LONG_MODE_PROBE = bytes.fromhex(
    "fa31c08ed88ec08ed0660f0116b07c0f20c06683c8010f22c066ea217c0000080066b810008ed88ec08ed0bf0010000031"
    "c0b9000c0000f3abc7050010000003200000c7050020000003300000c70500300000830000000f20e083c8200f22e0b800"
    "1000000f22d8b9800000c00f320d000100000f300f20c00d000000800f22c0ea887c00001800b02ae6f4f4ebfd9000000000"
    "00000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f00907c"
)
_KERNEL_BANNER = b"Linux version"
_KVM_DEVICE = str(KVM_DEVICE)  # a module constant, so that a test can point the probe at its own device


@dataclass(frozen=True)
class KvmProbe:
    """The outcome of running a probe guest under KVM."""

    usable: bool
    reason: str


def boot_sector() -> bytes:
    """The long-mode probe as a bootable 512-byte sector."""
    return _LONG_MODE_PROBE + bytes(510 - len(_LONG_MODE_PROBE)) + b"\x55\xaa"


async def probe_kvm(
    qemu: str,
    cpu_model: str,
    timeout: float,
    *,
    kernel: Path | None = None,
    cache_dir: Path | None = None,
    confinement: Confinement | None = None,
) -> KvmProbe:
    """Run a probe guest under KVM, confined as guests are; usable only if it ran before ``timeout``."""
    confinement = confinement if confinement is not None else Confinement.default()
    device = Path(_KVM_DEVICE)
    if not device.exists():
        return KvmProbe(False, f"{_KVM_DEVICE} does not exist (KVM module not loaded, or virtualisation off)")
    if not can_open(device, confinement.run_as, write=True):
        who = f"QEMU's user {confinement.run_as.name}" if confinement.run_as else "this user"
        return KvmProbe(
            False,
            f"{_KVM_DEVICE} is not readable and writable by {who} (give it to the kvm group, mode 0660)",
        )
    cache = _ProbeCache(cache_dir, qemu, cpu_model, kernel, confinement)
    cached = cache.load()
    if cached is not None:
        return cached
    try:
        if kernel is not None:
            result = await _probe_with_kernel(qemu, cpu_model, kernel, timeout, confinement)
        else:
            result = await _probe_with_boot_sector(qemu, cpu_model, timeout, confinement)
    except (OSError, QemuStartError) as error:
        return KvmProbe(False, f"cannot run {qemu}: {error}")  # not cached: installing QEMU fixes it
    cache.store(result)
    return result


def _base_args(qemu: str, cpu_model: str, confinement: Confinement | None = None) -> list[str]:
    sandbox = confinement.qemu_args() if confinement is not None else []
    return [
        qemu, *sandbox, "-accel", "kvm", "-cpu", cpu_model, "-machine", "pc", "-m", "256",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    ]  # fmt: skip


async def _spawn(args: list[str], files: HostFiles, confinement: Confinement) -> asyncio.subprocess.Process:
    try:
        return await spawn_bound_to_parent(
            [args[0], *files.add_fd_args(), *args[1:]], pass_fds=files.fds, confinement=confinement
        )
    finally:
        files.close()


async def _probe_with_boot_sector(
    qemu: str, cpu_model: str, timeout: float, confinement: Confinement
) -> KvmProbe:
    with tempfile.TemporaryDirectory(prefix="vmtest-kvm-probe-") as folder:
        disk = Path(folder) / "boot.img"
        disk.write_bytes(boot_sector())
        files = HostFiles(pass_descriptors=True)
        args = [
            *_base_args(qemu, cpu_model, confinement), "-serial", "none",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={files.image(disk, writable=True)},format=raw,if=ide,index=0",  # ide-hd: rw
        ]  # fmt: skip
        process = await _spawn(args, files, confinement)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except asyncio.TimeoutError:
            await _kill(process)
            return KvmProbe(False, f"a long-mode probe under KVM (-cpu {cpu_model}) hung for {timeout:.0f}s")
    if process.returncode == _EXIT_STATUS:
        return KvmProbe(True, f"a long-mode probe ran under KVM (-cpu {cpu_model})")
    return KvmProbe(False, f"a long-mode probe under KVM (-cpu {cpu_model}) failed: {_last_line(output)}")


async def _probe_with_kernel(
    qemu: str, cpu_model: str, kernel: Path, timeout: float, confinement: Confinement
) -> KvmProbe:
    files = HostFiles(pass_descriptors=True)
    args = [
        *_base_args(qemu, cpu_model, confinement), "-serial", "stdio", "-kernel", files.readable(kernel),
        "-append", "console=ttyS0 panic=-1 rdinit=/vmtest-kvm-probe",
    ]  # fmt: skip
    process = await _spawn(args, files, confinement)
    assert process.stdout is not None
    stdout = process.stdout

    async def read_until_banner() -> bytes:
        seen = b""
        while _KERNEL_BANNER not in seen:
            chunk = await stdout.read(4096)
            if not chunk:
                break
            seen = seen[-4096:] + chunk
        return seen

    try:
        seen = await asyncio.wait_for(read_until_banner(), timeout)
    except asyncio.TimeoutError:
        await _kill(process)
        return KvmProbe(False, f"a Linux kernel under KVM (-cpu {cpu_model}) hung for {timeout:.0f}s")
    await _kill(process)
    if _KERNEL_BANNER in seen:
        return KvmProbe(True, f"a Linux kernel booted under KVM (-cpu {cpu_model})")
    return KvmProbe(False, f"a Linux kernel under KVM (-cpu {cpu_model}) failed: {_last_line(seen)}")


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


def _last_line(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


class _ProbeCache:
    """One probe result per host boot, QEMU binary, CPU model and probe kernel."""

    def __init__(
        self,
        folder: Path | None,
        qemu: str,
        cpu_model: str,
        kernel: Path | None,
        confinement: Confinement | None = None,
    ) -> None:
        self.file = folder / "kvm-probe.json" if folder is not None else None
        confinement = confinement if confinement is not None else Confinement.default()
        user = confinement.run_as.uid if confinement.run_as is not None else os.geteuid()
        stamp = [_boot_id(), qemu, _mtime(qemu), cpu_model, str(kernel), _mtime(kernel)]
        self.key = json.dumps([*stamp, user, confinement.sandbox])

    def load(self) -> KvmProbe | None:
        if self.file is None:
            return None
        try:
            entry = json.loads(self.file.read_text())
            if entry.get("key") == self.key:
                return KvmProbe(bool(entry["usable"]), str(entry["reason"]) + " (cached)")
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def store(self, result: KvmProbe) -> None:
        if self.file is None:
            return
        with contextlib.suppress(OSError):
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.write_text(json.dumps({"key": self.key, **asdict(result)}))


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _mtime(path: str | Path | None) -> float:
    if path is None:
        return 0.0
    with contextlib.suppress(OSError):
        return os.stat(path).st_mtime
    return 0.0


async def resolve_accelerator(
    wanted: Accelerator,
    *,
    qemu: str,
    kvm_cpu_model: str,
    timeout: float,
    probe_kernel: Path | None = None,
    cache_dir: Path | None = None,
    confinement: Confinement | None = None,
) -> str:
    """Turn ``auto|kvm|tcg`` into the accelerator to use, probing KVM (confined) when it matters."""
    if wanted == "tcg":
        return "tcg"
    probe = await probe_kvm(
        qemu, kvm_cpu_model, timeout, kernel=probe_kernel, cache_dir=cache_dir, confinement=confinement
    )
    if probe.usable:
        log.info("accelerator: KVM (%s)", probe.reason)
        return "kvm"
    if wanted == "kvm":
        raise AcceleratorError(
            f"KVM was requested but cannot run a guest here: {probe.reason}. "
            "Set machine.accel to auto or tcg to use software emulation.",
            phase="boot",
        )
    log.warning("KVM cannot run a guest here (%s); falling back to TCG software emulation", probe.reason)
    return "tcg"
