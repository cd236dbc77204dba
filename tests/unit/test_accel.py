"""The accelerator probe: its boot sector really runs, auto follows what the probe finds, and the probe
tells a guest that runs under KVM from one that hangs or fails (QEMU played by ``qemu_standin.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qemu_standin import KVM_FAILURE

from vmtest.errors import AcceleratorError
from vmtest.machine import accel
from vmtest.machine.confine import Confinement

QEMU = shutil.which("qemu-system-x86_64")
SOURCE = Path(accel.__file__).with_name("kvm_probe.S")
STANDIN = Path(__file__).with_name("qemu_standin.py")


def test_boot_sector_shape() -> None:
    sector = accel.boot_sector()
    assert len(sector) == 512
    assert sector[-2:] == b"\x55\xaa"


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None, reason="binutils not installed")
def test_boot_sector_matches_its_assembly_source(tmp_path: Path) -> None:
    subprocess.run(["as", "--32", "-o", tmp_path / "p.o", SOURCE], check=True, timeout=60)
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_i386",
            "-Ttext",
            "0x7c00",
            "--oformat",
            "binary",
            "-o",
            tmp_path / "p.bin",
            tmp_path / "p.o",
        ],
        check=True,
        timeout=60,
    )
    assert (tmp_path / "p.bin").read_bytes() == accel.boot_sector()


@pytest.mark.skipif(QEMU is None, reason="QEMU not installed")
def test_boot_sector_reaches_long_mode_and_exits_under_tcg(tmp_path: Path) -> None:
    disk = tmp_path / "boot.img"
    disk.write_bytes(accel.boot_sector())
    args = [str(QEMU), *accel._base_args(str(QEMU), "max")[1:]]
    args[args.index("kvm")] = "tcg"
    result = subprocess.run(
        [*args, "-serial", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
         "-drive", f"file={disk},format=raw,if=ide,index=0"],
        timeout=60,
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == accel._EXIT_STATUS


def test_tcg_is_chosen_without_probing() -> None:
    chosen = asyncio.run(
        accel.resolve_accelerator("tcg", qemu="/nonexistent/qemu", kvm_cpu_model="host", timeout=1)
    )
    assert chosen == "tcg"


@pytest.mark.skipif(QEMU is None, reason="QEMU not installed")
def test_auto_follows_the_probe(tmp_path: Path) -> None:
    probe = asyncio.run(accel.probe_kvm(str(QEMU), "host", 8, cache_dir=tmp_path))
    chosen = asyncio.run(
        accel.resolve_accelerator("auto", qemu=str(QEMU), kvm_cpu_model="host", timeout=8, cache_dir=tmp_path)
    )
    assert chosen == ("kvm" if probe.usable else "tcg")
    if not probe.usable:
        with pytest.raises(AcceleratorError, match="KVM was requested but cannot run a guest here"):
            asyncio.run(
                accel.resolve_accelerator(
                    "kvm", qemu=str(QEMU), kvm_cpu_model="host", timeout=8, cache_dir=tmp_path
                )
            )


def test_probe_result_is_cached_per_host_boot(tmp_path: Path) -> None:
    cache = accel._ProbeCache(tmp_path, "qemu", "host", None)
    assert cache.load() is None
    cache.store(accel.KvmProbe(False, "hung"))
    again = accel._ProbeCache(tmp_path, "qemu", "host", None).load()
    assert again == accel.KvmProbe(False, "hung (cached)")
    assert accel._ProbeCache(tmp_path, "qemu", "max", None).load() is None


UNCONFINED = dataclasses.replace(Confinement.default(), run_as=None)
"""The probe's confinement without the change of user: the stand-in and its files are this test's."""


class StandIn:
    """``qemu_standin.py`` behind an executable named like QEMU, playing one guest; what it was run with."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guest: str) -> None:
        self.qemu = tmp_path / "qemu-system-x86_64"
        self.qemu.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
        self.qemu.chmod(0o755)
        self.record = tmp_path / "standin.json"
        self.kernel = tmp_path / "vmlinuz"
        self.kernel.write_bytes(b"MZ stand-in kernel")
        device = tmp_path / "kvm"
        device.write_bytes(b"")  # a /dev/kvm this user can open: the probe then really runs "QEMU"
        monkeypatch.setattr(accel, "_KVM_DEVICE", str(device))
        monkeypatch.setenv("QEMU_STANDIN_RECORD", str(self.record))
        monkeypatch.setenv("QEMU_STANDIN_GUEST", guest)

    def probe(self, *, kernel: bool, timeout: float = 30) -> accel.KvmProbe:
        """Run the real probe against the stand-in."""
        return asyncio.run(
            accel.probe_kvm(
                str(self.qemu),
                "host",
                timeout,
                kernel=self.kernel if kernel else None,
                confinement=UNCONFINED,
            )
        )

    def host_file(self, role: str) -> str:
        """The host file the stand-in was handed as ``role`` (``kernel``, ``disk``), by path or descriptor."""
        return str(json.loads(self.record.read_text())[role])

    def ran(self) -> tuple[int, list[str]]:
        """The stand-in's pid and arguments."""
        seen = json.loads(self.record.read_text())
        return int(seen["pid"]), list(seen["args"])


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (and been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_kernel_that_boots_under_kvm_makes_kvm_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin = StandIn(tmp_path, monkeypatch, "boots")
    probe = standin.probe(kernel=True)
    pid, args = standin.ran()
    assert probe == accel.KvmProbe(True, "a Linux kernel booted under KVM (-cpu host)")
    assert standin.host_file("kernel") == str(standin.kernel) and "console=ttyS0" in " ".join(args)
    assert gone(pid), "the probe leaves the booted guest running"
    chosen = asyncio.run(
        accel.resolve_accelerator(
            "kvm",
            qemu=str(standin.qemu),
            kvm_cpu_model="host",
            timeout=30,
            probe_kernel=standin.kernel,
            confinement=UNCONFINED,
        )
    )
    assert chosen == "kvm"


def test_a_boot_sector_that_reaches_long_mode_makes_kvm_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin = StandIn(tmp_path, monkeypatch, "long-mode")
    assert standin.probe(kernel=False) == accel.KvmProbe(True, "a long-mode probe ran under KVM (-cpu host)")


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "boot-sector"])
def test_a_guest_that_hangs_under_kvm_is_killed_and_kvm_refused(
    kernel: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin = StandIn(tmp_path, monkeypatch, "hangs")
    probe = standin.probe(kernel=kernel, timeout=2)
    pid, _ = standin.ran()
    assert not probe.usable
    assert probe.reason.endswith("under KVM (-cpu host) hung for 2s")
    assert gone(pid), "the hung guest outlives the probe"
    chosen = asyncio.run(
        accel.resolve_accelerator(
            "auto",
            qemu=str(standin.qemu),
            kvm_cpu_model="host",
            timeout=2,
            probe_kernel=standin.kernel if kernel else None,
            confinement=UNCONFINED,
        )
    )
    assert chosen == "tcg"


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "boot-sector"])
def test_qemu_failing_under_kvm_is_named(
    kernel: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin = StandIn(tmp_path, monkeypatch, "qemu-fails")
    probe = standin.probe(kernel=kernel)
    assert not probe.usable
    assert probe.reason.endswith("failed: " + KVM_FAILURE.strip())
