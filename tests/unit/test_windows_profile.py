"""The windows11 profile's QEMU command line, flag by flag against windows11-vm.md (§ per flag).

"python-apis §2.3" is python-apis.md (QMP panic reporting); "kd §7" is kd-protocol.md.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from vmtest.config.loader import load_yaml_file, validate
from vmtest.config.models import MachineConfig, Timeouts, VmtestConfig
from vmtest.config.windows import Windows11GuestConfig
from vmtest.errors import AcceleratorError, ImageError
from vmtest.images.windows11 import WindowsImage
from vmtest.machine.kvm_caps import kvm_has_hyperv
from vmtest.machine.machine import Machine
from vmtest.machine.profiles.windows11 import (
    DEFAULT_HYPERV_FLAGS,
    READY_MARKER,
    TpmSettings,
    Windows11InstallerProfile,
    Windows11Profile,
    WindowsHardware,
    tpm_socket,
)
from vmtest.machine.rundir import RunDirectory

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "windows11.yaml"


@pytest.fixture(autouse=True)
def host_with_hyperv(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the host KVM has Hyper-V support; tests that need otherwise patch it again."""
    monkeypatch.setattr("vmtest.machine.profiles.windows11.kvm_has_hyperv", lambda: True)


def hardware(tmp_path: Path, **changes: object) -> WindowsHardware:
    values: dict[str, object] = {
        "disk": tmp_path / "disk.qcow2",
        "efivars": tmp_path / "efivars.fd",
        "ovmf_code": Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    }
    values.update(changes)
    return WindowsHardware(**values)  # type: ignore[arg-type]


def build(profile: Windows11Profile, tmp_path: Path, accel: str = "kvm") -> tuple[list[str], Machine]:
    run_dir = RunDirectory.create(tmp_path / "artifacts")
    machine = Machine(profile, MachineConfig(memory_mib=4096), Timeouts(), run_dir, accel=accel)
    overlays = (run_dir.overlay(0), run_dir.overlay(1))
    return machine.command_line("qemu-system-x86_64", overlays, 3, {"kd": 4}), machine


def values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == option]


def options_of(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) if "=" in part else (part, "") for part in value.split(","))


# ------------------------------------------------------------------------------------------ flags


def test_q35(tmp_path: Path) -> None:
    args, _ = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    assert values(args, "-machine") == ["q35,vmport=off"]  # §1.1; no VMware backdoor port (SECURITY.md)


def test_cpu_host_with_hyperv_enlightenments_and_hv_crash(tmp_path: Path) -> None:
    args, _ = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    (cpu,) = values(args, "-cpu")
    model, *flags = cpu.split(",")
    assert model == "host"  # §1.4: SSE4.2/POPCNT for 24H2
    assert flags == list(DEFAULT_HYPERV_FLAGS)
    assert {"hv-relaxed", "hv-vapic", "hv-spinlocks=0x1fff", "hv-time"} <= set(flags)  # §1.4 (AutoHCK)
    assert "hv-crash" in flags  # python-apis §2.3: the stop code reaches GUEST_PANICKED


def test_without_kvm_hyperv_the_enlightenments_are_left_out_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # python-apis §2.3 caveat 1: without KVM_CAP_HYPERV hv-crash cannot work (and some hv-* abort QEMU).
    monkeypatch.setattr("vmtest.machine.profiles.windows11.kvm_has_hyperv", lambda: False)
    with caplog.at_level(logging.WARNING):
        args, _ = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    assert values(args, "-cpu") == ["host"]
    assert "KVM_CAP_HYPERV" in caplog.text and "KD host" in caplog.text


def test_configured_hyperv_flags_replace_the_default(tmp_path: Path) -> None:
    flags = ("hv-passthrough", "-vmx")
    args, _ = build(Windows11Profile(hardware(tmp_path, hyperv_flags=flags)), tmp_path)
    assert values(args, "-cpu") == ["host,hv-passthrough,-vmx"]


def test_the_machine_pauses_on_a_panic_and_the_profile_keeps_it(tmp_path: Path) -> None:
    args, _ = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    # python-apis §2.3: panic=pause keeps the blue screen for a screenshot, and QEMU reports the crash.
    assert [a for a in values(args, "-action") if a.startswith("panic=")] == ["panic=pause"]
    assert values(args, "-action")[-1] == "reboot=shutdown"  # the installer alone overrides this


def test_ovmf_code_read_only_and_a_qcow2_variable_store_per_run(tmp_path: Path) -> None:
    profile = Windows11Profile(hardware(tmp_path))
    args, machine = build(profile, tmp_path)
    code, variables = (options_of(v) for v in values(args, "-drive") if v.startswith("if=pflash"))
    # §1.2, §1.14: OVMF_CODE_4M.fd is the build without Secure Boot.
    assert code == {"if": "pflash", "format": "raw", "unit": "0", "readonly": "on",
                    "file": "/usr/share/OVMF/OVMF_CODE_4M.fd"}  # fmt: skip
    # §1.11, §7: a raw VARS pflash refuses savevm; the run's qcow2 overlay of the store does not.
    assert variables["format"] == "qcow2" and variables["unit"] == "1"
    assert variables["file"] == str(machine.run_dir.overlay(1))
    assert profile.base_disks == (tmp_path / "disk.qcow2", tmp_path / "efivars.fd")
    assert variables["node-name"] == "efivars" and profile.snapshot_nodes == ("disk0", "efivars")


def test_ahci_disk_first_in_the_boot_order(tmp_path: Path) -> None:
    args, machine = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    (disk,) = (options_of(v) for v in values(args, "-drive") if v.startswith("file="))
    assert disk["file"] == str(machine.run_dir.overlay(0)) and disk["format"] == "qcow2"
    assert disk["if"] == "none" and disk["id"] == "hd0" and disk["node-name"] == "disk0"
    assert "ide-hd,drive=hd0,bus=ide.0,bootindex=1" in values(args, "-device")  # §1.5: in-box AHCI


def test_e1000e_on_the_machines_restricted_user_network(tmp_path: Path) -> None:
    args, _ = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    assert "e1000e,netdev=net0" in values(args, "-device")  # §1.6: in-box driver
    assert values(args, "-netdev") == ["user,id=net0,restrict=on"]  # §1.7, forwards come over QMP
    assert "hostfwd" not in " ".join(args)


def test_com1_is_the_kd_link_and_com2_the_console(tmp_path: Path) -> None:
    profile = Windows11Profile(hardware(tmp_path))
    args, machine = build(profile, tmp_path)
    assert profile.serial_roles == ("kd", "console")
    # §1.8: the first -serial is COM1; kd §7.1: bcdedit debugport:1 is COM1.
    assert values(args, "-serial") == ["chardev:serial0", "chardev:serial1"]
    chardevs = values(args, "-chardev")
    assert f"socket,id=serial0,fd=4,logfile={machine.run_dir.serial_log('kd')},logappend=on" in chardevs
    assert f"file,id=serial1,path={machine.run_dir.serial_log('console')},append=on" in chardevs
    assert machine.raw_serial_roles == ("kd",)  # two-way: the KD host answers the target
    assert profile.ready_marker == READY_MARKER


def test_screen_clock_sleep_states_and_tablet(tmp_path: Path) -> None:
    args, _ = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    assert values(args, "-vga") == ["std"]  # §1.12: screendump needs a display device
    assert values(args, "-rtc") == ["base=utc,driftfix=slew"]  # §1.13; the guest's time zone is UTC
    assert {"ICH9-LPC.disable_s3=1", "ICH9-LPC.disable_s4=1"} <= set(values(args, "-global"))  # §1.13
    assert "kvm-pit.lost_tick_policy=discard" in values(args, "-global")  # §1.4 (AutoHCK), KVM only
    usb = [device for device in values(args, "-device") if device in ("qemu-xhci", "usb-tablet")]
    assert usb == ["qemu-xhci", "usb-tablet"]  # §1.13: an absolute pointer


def test_no_tpm_unless_asked(tmp_path: Path) -> None:
    args, _ = build(Windows11Profile(hardware(tmp_path)), tmp_path)
    assert "-tpmdev" not in args


@pytest.mark.parametrize("model", ["tpm-crb", "tpm-tis"])
def test_a_swtpm_tpm_through_the_runs_socket(tmp_path: Path, model: str) -> None:
    args, machine = build(Windows11Profile(hardware(tmp_path, tpm=TpmSettings(model))), tmp_path)
    socket = tpm_socket(machine.run_dir.path)  # sun_path is short: not in the (deep) run directory
    assert len(str(socket)) < 108 and socket.name == "swtpm.sock"
    assert f"socket,id=chrtpm,path={socket}" in values(args, "-chardev")  # §1.3
    assert values(args, "-tpmdev") == ["emulator,id=tpm0,chardev=chrtpm"]
    assert f"{model},tpmdev=tpm0" in values(args, "-device")


def test_commas_in_paths_are_doubled(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    args, _ = build(Windows11Profile(hardware(odd, ovmf_code=odd / "code.fd")), tmp_path)
    assert any(v.endswith(f"file={tmp_path}/a,,b/code.fd") for v in values(args, "-drive"))


# ------------------------------------------------------------------------------------------ accelerator


def test_tcg_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    profile = Windows11Profile(hardware(tmp_path))
    assert profile.requires_kvm
    with pytest.raises(AcceleratorError, match=r"needs KVM.*allow_tcg"):
        build(profile, tmp_path, accel="tcg")


def test_tcg_when_allowed_uses_an_emulated_cpu_without_kvm_only_flags(tmp_path: Path) -> None:
    args, _ = build(Windows11Profile(hardware(tmp_path, allow_tcg=True)), tmp_path, accel="tcg")
    assert values(args, "-cpu") == ["max"]  # SSE4.2/POPCNT; hv-crash has no effect under TCG
    assert "kvm-pit.lost_tick_policy=discard" not in values(args, "-global")


# ------------------------------------------------------------------------------------------ installer


def test_the_installer_adds_both_cds_and_survives_setups_reboots(tmp_path: Path) -> None:
    installer = Windows11InstallerProfile(
        hardware(tmp_path), windows_iso=tmp_path / "win.iso", answer_iso=tmp_path / "answer.iso"
    )
    args, _ = build(installer, tmp_path)
    cds = [options_of(v) for v in values(args, "-drive") if "media=cdrom" in v]
    assert [(cd["file"], cd["id"], cd["readonly"]) for cd in cds] == [
        (str(tmp_path / "win.iso"), "cd0", "on"),
        (str(tmp_path / "answer.iso"), "cd1", "on"),
    ]
    devices = values(args, "-device")
    assert "ide-cd,drive=cd0,bus=ide.1,bootindex=2" in devices  # §1.15: the blank disk falls through
    assert "ide-cd,drive=cd1,bus=ide.2" in devices  # §2.1: Autounattend.xml on a second CD
    # The machine says reboot=shutdown; the installer's later -action wins (checked on QEMU 7.2).
    assert values(args, "-action")[-2:] == ["reboot=shutdown", "reboot=reset"]
    assert installer.forwards == {} and installer.ready_marker is None and installer.snapshot_nodes == ()


# ------------------------------------------------------------------------------------------ from the image


def fake_image(tmp_path: Path, **changes: object) -> WindowsImage:
    fields: dict[str, object] = {
        "root": tmp_path,
        "disk": tmp_path / "disk.qcow2",
        "efivars": tmp_path / "efivars.fd",
        "tpm_state": None,
        "client_key": tmp_path / "keys" / "client_ed25519",
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",
        "user": "vmtest",
        "ready_marker": READY_MARKER,
        "kernel_debug": True,
        "tpm": False,
        "openssh": True,
        "ovmf_code": Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        "licence_expires": datetime.date(2030, 1, 1),
    }
    fields.update(changes)
    return WindowsImage(**fields)  # type: ignore[arg-type]


def guest(**changes: object) -> Windows11GuestConfig:
    return Windows11GuestConfig.model_validate({"password": "pw", **changes})


def test_forwards_ssh_and_smb_only_when_the_transport_is_smb(tmp_path: Path) -> None:
    assert Windows11Profile.for_image(fake_image(tmp_path), guest()).forwards == {"ssh": 22}
    smb = Windows11Profile.for_image(fake_image(tmp_path), guest(transport="smb"))
    assert smb.forwards == {"ssh": 22, "smb": 445}
    no_ssh = Windows11Profile.for_image(fake_image(tmp_path, openssh=False), guest(transport="smb"))
    assert no_ssh.forwards == {"smb": 445}


def test_an_image_without_openssh_needs_the_smb_transport(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="transport: smb"):
        Windows11Profile.for_image(fake_image(tmp_path, openssh=False), guest())


def test_kernel_debugging_must_be_in_the_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ImageError, match="without kernel debugging"):
        Windows11Profile.for_image(fake_image(tmp_path, kernel_debug=False), guest(kd=True))
    with caplog.at_level(logging.WARNING):
        Windows11Profile.for_image(fake_image(tmp_path), guest(kd=False))
    assert "stops at a breakpoint" in caplog.text


def test_tpm_and_firmware_default_to_the_images(tmp_path: Path) -> None:
    image = fake_image(tmp_path, tpm=True, tpm_state=tmp_path / "tpm")
    profile = Windows11Profile.for_image(image, guest())
    assert profile.hardware.tpm == TpmSettings("tpm-crb", tmp_path / "tpm")
    assert profile.hardware.efivars == tmp_path / "efivars.fd"
    assert Windows11Profile.for_image(image, guest(tpm=False)).hardware.tpm is None
    custom = Windows11Profile.for_image(
        image, guest(ovmf={"vars": str(tmp_path / "v.fd")}, tpm_model="tpm-tis")
    )
    assert custom.hardware.efivars == tmp_path / "v.fd"
    assert custom.hardware.tpm == TpmSettings("tpm-tis", tmp_path / "tpm")


def test_allow_tcg_and_hyperv_flags_come_from_the_config(tmp_path: Path) -> None:
    profile = Windows11Profile.for_image(
        fake_image(tmp_path), guest(allow_tcg=True, hyperv_flags=["hv-time"])
    )
    assert profile.hardware.allow_tcg and profile.cpu_model("kvm") == "host,hv-time"


# ------------------------------------------------------------------------------------------ the config


def test_the_config_model_is_strict_and_validates_what_reaches_qemu() -> None:
    with pytest.raises(ValidationError, match="extra"):
        guest(colour="blue")
    with pytest.raises(ValidationError, match="password"):
        Windows11GuestConfig.model_validate({})
    with pytest.raises(ValidationError, match="one CPU property"):
        guest(hyperv_flags=["hv-time,hv-crash"])  # a comma would smuggle in another property
    with pytest.raises(ValidationError, match="user name"):
        guest(user="a<b")
    with pytest.raises(ValidationError, match="public key line"):
        guest(host_key="not a key")


def test_the_password_is_secret_and_ssh_settings_default_to_the_image(tmp_path: Path) -> None:
    config = guest(password="s3cret")
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.model_dump())
    ssh = config.ssh_config(image_host_key="ssh-ed25519 AAAA", image_client_key=tmp_path / "k")
    assert (ssh.user, ssh.key, ssh.host_key, ssh.guest_port) == (
        "vmtest",
        tmp_path / "k",
        "ssh-ed25519 AAAA",
        22,
    )
    assert ssh.password is not None and ssh.password.get_secret_value() == "s3cret"
    insecure = guest(insecure_accept_any_host_key=True).ssh_config(
        image_host_key="ssh-ed25519 AAAA", image_client_key=None
    )
    assert insecure.host_key is None and insecure.insecure_accept_any_host_key


def test_debugview_runs_exactly_when_kernel_debugging_is_off_unless_configured() -> None:
    assert not guest().debugview_enabled
    assert guest(kd=False).debugview_enabled
    assert guest(debugview={"enabled": True}).debugview_enabled


def test_the_example_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMTEST_WINDOWS_PASSWORD", "from-the-environment")
    data, document = load_yaml_file(EXAMPLE)
    windows = validate(
        Windows11GuestConfig, data.pop("guest"), document, str(EXAMPLE), base_dir=EXAMPLE.parent
    )
    assert windows.kind == "windows11" and windows.kd and windows.transport == "ssh"
    assert windows.password.get_secret_value() == "from-the-environment"
    assert windows.ovmf.code == Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    rest = validate(VmtestConfig, data, document, str(EXAMPLE), base_dir=EXAMPLE.parent)
    assert rest.machine.accel == "kvm" and rest.machine.memory_mib == 4096


# ------------------------------------------------------------------------------------------ KVM caps


def test_kvm_has_hyperv_cannot_tell_without_a_kvm_device(tmp_path: Path) -> None:
    assert kvm_has_hyperv(tmp_path / "no-such-device") is None
    assert kvm_has_hyperv(Path("/dev/null")) is None  # not a KVM device: the ioctl fails (ENOTTY)


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")
def test_kvm_has_hyperv_answers_on_a_real_kvm() -> None:
    assert kvm_has_hyperv() in (True, False)
