"""The QEMU command line built from the configuration and the linux profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtest.config.models import MachineConfig, Timeouts
from vmtest.images.linux import LinuxImage
from vmtest.machine.machine import Machine
from vmtest.machine.profiles.linux import LinuxProfile
from vmtest.machine.rundir import RunDirectory


def fake_image(root: Path) -> LinuxImage:
    return LinuxImage(
        root=root,
        kernel=root / "vmlinuz",
        initrd=root / "initramfs.cpio.gz",
        disk=root / "disk.qcow2",
        client_key=root / "id_ed25519",
        host_key="ssh-ed25519 AAAA",
        kernel_release="6.1.0-1-amd64",
        headers=root / "headers",
        ready_marker="VMTEST-GUEST-READY",
    )


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == option]


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    profile = LinuxProfile(fake_image(tmp_path), append="vmtest.selftest=panic quiet")
    config = MachineConfig(cpus=3, memory_mib=768, extra_args=("-d", "guest_errors"))
    run_dir = RunDirectory.create(tmp_path / "artifacts")
    return Machine(profile, config, Timeouts(), run_dir, accel="tcg")


def build(machine: Machine) -> list[str]:
    overlay = machine.run_dir.overlay(0)
    return machine.command_line("qemu-system-x86_64", (overlay,), 7, {})


def test_cpu_starts_stopped_and_qmp_uses_the_socket_pair(machine: Machine) -> None:
    args = build(machine)
    assert "-S" in args
    assert option_values(args, "-chardev")[0] == "socket,id=qmp,fd=7"
    assert option_values(args, "-mon") == ["chardev=qmp,mode=control"]


def test_no_defaults_and_no_user_config(machine: Machine) -> None:
    args = build(machine)
    assert "-nodefaults" in args and "-no-user-config" in args
    assert option_values(args, "-display") == ["none"]


def test_resources_and_accelerator(machine: Machine) -> None:
    args = build(machine)
    assert option_values(args, "-accel") == ["tcg"]
    assert option_values(args, "-smp") == ["3"]
    assert option_values(args, "-m") == ["768"]
    assert option_values(args, "-cpu") == ["max"]


def test_network_is_restricted_and_has_no_forward_on_the_command_line(machine: Machine) -> None:
    args = build(machine)
    (netdev,) = option_values(args, "-netdev")
    assert netdev == "user,id=net0,restrict=on"
    assert "hostfwd" not in " ".join(args)  # forwards are added over QMP, on 127.0.0.1 only
    assert option_values(args, "-device")[0] == "e1000,netdev=net0,autonegotiation=off"


def test_serial_console_is_written_by_qemu_into_the_run_directory(machine: Machine) -> None:
    args = build(machine)
    log_path = machine.run_dir.serial_log("console")
    assert machine.text_serial_roles == ("console",) and machine.raw_serial_roles == ()
    assert f"file,id=serial0,path={log_path},append=on" in option_values(args, "-chardev")
    assert option_values(args, "-serial") == ["chardev:serial0"]


def test_panic_pauses_for_a_screenshot_and_reboot_ends_qemu(machine: Machine) -> None:
    args = build(machine)
    assert option_values(args, "-action") == ["panic=pause", "reboot=shutdown"]
    assert "pvpanic" in option_values(args, "-device")


def test_disk_is_the_overlay_never_the_base_image(machine: Machine, tmp_path: Path) -> None:
    args = build(machine)
    (drive,) = option_values(args, "-drive")
    assert drive.startswith(f"file={machine.run_dir.overlay(0)},")
    assert str(tmp_path / "disk.qcow2") not in " ".join(args)
    assert "node-name=disk0" in drive


def test_kernel_command_line_puts_user_arguments_last(machine: Machine) -> None:
    (append,) = option_values(build(machine), "-append")
    assert append.startswith("console=tty0 console=ttyS0,115200 loglevel=8")
    assert append.endswith("vmtest.selftest=panic quiet")


def test_user_extra_arguments_come_last(machine: Machine) -> None:
    assert build(machine)[-2:] == ["-d", "guest_errors"]


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    profile = LinuxProfile(fake_image(tmp_path))
    assert profile.cpu_model("kvm") == "host"
    assert profile.cpu_model("tcg") == "max"


def test_run_directory_is_private(tmp_path: Path) -> None:
    run_dir = RunDirectory.create(tmp_path / "a")
    assert run_dir.path.stat().st_mode & 0o777 == 0o700
