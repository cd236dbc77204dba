"""The accelerator probe: its boot sector really runs, and auto follows what the probe finds."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from vmtest.errors import AcceleratorError
from vmtest.machine import accel

QEMU = shutil.which("qemu-system-x86_64")
SOURCE = Path(accel.__file__).with_name("kvm_probe.S")


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
