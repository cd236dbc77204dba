"""The answer ISO built for real, and the whole image build driven by a fake Windows installer.

The ISO is written by xorriso and read back twice: through xorriso (Rock Ridge names) and through a
small Joliet reader (the names Windows sees). The build tests (marked e2e) replace Windows Setup with a
512-byte UEFI application, booted by OVMF from a QEMU vvfat disk: it prints the lines Setup and the
provisioning scripts would print on COM2, then powers the VM off through the UEFI runtime services.
Everything around it is real: QEMU under TCG, QMP key presses and screenshots, the answer ISO, the
deadline, the commit into the golden disk, image.json, and booting the sealed image again.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from vmtest.config.models import MachineConfig, Timeouts
from vmtest.config.windows import Windows11GuestConfig
from vmtest.errors import ImageError
from vmtest.images.digest import sha256_file
from vmtest.images.windows11 import (
    MARKERS,
    WindowsImage,
    WindowsImageOptions,
    WindowsImagePlan,
    build_answer_iso,
    build_windows_image,
    encode_password,
    find_iso_tool,
    find_windows_image,
    plan_windows_image,
)
from vmtest.images.windows11 import host as windows_host
from vmtest.images.windows11.answer import UNATTEND_NS
from vmtest.machine.confine import Confinement
from vmtest.machine.machine import Machine
from vmtest.machine.profiles.windows11 import Windows11Profile
from vmtest.machine.rundir import RunDirectory
from vmtest.machine.snapshots import load_snapshot, save_snapshot
from vmtest.progress import PlainProgress

PASSWORD = "Pa$$ & <word> 42"
AUTHORIZED_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyForTheTest vmtest-client"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0d3Rlc3RrZXlmb3J2bXRlc3R3aW5kb3dzMTFidWlsZA"
OVMF = (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))
SECTOR = 2048

needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")
needs_qemu = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "xorriso"))
    or not all(path.is_file() for path in OVMF),
    reason="needs qemu-system-x86_64, qemu-img, xorriso and Debian's ovmf",
)


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMTEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VMTEST_WINDOWS_PASSWORD", PASSWORD)


def openssh_zip(folder: Path) -> Path:
    path = folder / "OpenSSH-Win64-v9.8.1.0.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("OpenSSH-Win64/sshd.exe", b"MZ not really sshd")
        archive.writestr("OpenSSH-Win64/install-sshd.ps1", b"# not really")
    return path


def options(tmp_path: Path, **changes: object) -> WindowsImageOptions:
    iso = tmp_path / "Win11_Eval.iso"
    if not iso.exists():
        iso.write_bytes(b"\0" * 65536)  # never read: the fake installer boots from elsewhere
    values: dict[str, object] = {
        "iso": iso,
        "artifacts": tmp_path / "artifacts",
        "output": tmp_path / "image",
    }
    values.update(changes)
    return WindowsImageOptions(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ ISO readers


def xorriso_files(iso: Path) -> set[str]:
    result = subprocess.run(
        ["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        line.strip().strip("'").lstrip("/") for line in result.stdout.splitlines() if line.startswith("'")
    }


def xorriso_extract(iso: Path, inside: str, destination: Path) -> bytes:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", f"/{inside}", str(destination)],
        capture_output=True,
        check=True,
    )
    return destination.read_bytes()


def joliet_files(iso: Path) -> set[str]:
    """The file names in the Joliet tree (UCS-2 names, what Windows reads), by ECMA-119 + Joliet."""
    data = iso.read_bytes()
    sector = 16
    while data[sector * SECTOR] != 255:  # the volume descriptor set terminator
        descriptor = data[sector * SECTOR : (sector + 1) * SECTOR]
        if descriptor[0] == 2 and descriptor[88:91] in (b"%/@", b"%/C", b"%/E"):
            root = descriptor[156 : 156 + 34]
            return set(
                _joliet_walk(data, *struct.unpack_from("<I", root, 2), struct.unpack_from("<I", root, 10)[0])
            )
        sector += 1
    raise AssertionError("no Joliet volume descriptor")


def _joliet_walk(data: bytes, extent: int, size: int, prefix: str = "") -> list[str]:
    found: list[str] = []
    offset, end = extent * SECTOR, extent * SECTOR + size
    while offset < end:
        length = data[offset]
        if length == 0:  # records never cross a sector boundary
            offset = (offset // SECTOR + 1) * SECTOR
            continue
        record = data[offset : offset + length]
        name_bytes = record[33 : 33 + record[32]]
        if name_bytes not in (b"\0", b"\1"):
            name = name_bytes.decode("utf-16-be").split(";")[0]
            child_extent, child_size = (
                struct.unpack_from("<I", record, 2)[0],
                struct.unpack_from("<I", record, 10)[0],
            )
            if record[25] & 2:
                found += _joliet_walk(data, child_extent, child_size, f"{prefix}{name}/")
            else:
                found.append(prefix + name)
        offset += length
    return found


# ------------------------------------------------------------------------------------------ the ISO


@needs_xorriso
def test_the_answer_iso_holds_exactly_the_planned_files(tmp_path: Path) -> None:
    tool = tmp_path / "dbgviewcli.exe"
    tool.write_bytes(b"MZ tool")
    plan = plan_windows_image(options(tmp_path, openssh_zip=openssh_zip(tmp_path), tools=(tool,)))
    build_answer_iso(plan, PASSWORD, AUTHORIZED_KEY)
    expected = {entry.path for entry in plan.answer_files}
    assert expected == {
        "Autounattend.xml",
        "vmtest/settings.json",
        "vmtest/common.ps1",
        "vmtest/provision.ps1",
        "vmtest/ready.ps1",
        "vmtest/OpenSSH-Win64.zip",
        "vmtest/tools/dbgviewcli.exe",
    }
    assert xorriso_files(plan.answer_iso) == expected
    assert joliet_files(plan.answer_iso) == expected  # Windows reads Joliet: case and length intact
    assert stat.S_IMODE(plan.answer_iso.stat().st_mode) == 0o600  # it holds the password
    assert not (plan.run_dir.path / "answer-iso").exists()  # the staging folder is gone


@needs_xorriso
def test_the_answer_iso_carries_the_rendered_answer_file_and_settings(tmp_path: Path) -> None:
    source_zip = openssh_zip(tmp_path)
    plan = plan_windows_image(options(tmp_path, openssh_zip=source_zip, user="o'brien&co", tpm=True))
    build_answer_iso(plan, PASSWORD, AUTHORIZED_KEY)
    out = tmp_path / "out"
    out.mkdir()
    root = ET.fromstring(xorriso_extract(plan.answer_iso, "Autounattend.xml", out / "a.xml"))
    ns = {"u": UNATTEND_NS}
    shell = root.find("u:settings[@pass='oobeSystem']/u:component[@name='Microsoft-Windows-Shell-Setup']", ns)
    assert shell is not None
    assert shell.findtext("u:AutoLogon/u:Username", None, ns) == "o'brien&co"
    value = shell.findtext("u:AutoLogon/u:Password/u:Value", "", ns)
    assert base64.b64decode(value).decode("utf-16-le") == PASSWORD + "Password"
    settings = json.loads(xorriso_extract(plan.answer_iso, "vmtest/settings.json", out / "s.json"))
    assert settings["markers"]["done"] == MARKERS.done
    assert settings["openssh"] == {
        "enabled": True,
        "zip": "OpenSSH-Win64.zip",
        "start_type": "auto",
        "authorized_key": AUTHORIZED_KEY,
    }
    assert PASSWORD not in json.dumps(settings)
    assert (
        xorriso_extract(plan.answer_iso, "vmtest/OpenSSH-Win64.zip", out / "o.zip") == source_zip.read_bytes()
    )


def test_xorriso_is_preferred_and_genisoimage_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: set[str] = set()
    monkeypatch.setattr(
        windows_host.shutil, "which", lambda name: f"/usr/bin/{name}" if name in installed else None
    )
    assert find_iso_tool() is None
    installed.add("genisoimage")
    assert find_iso_tool() == ("genisoimage",)
    installed.add("xorriso")
    assert find_iso_tool() == ("xorriso", "-as", "mkisofs")


# ------------------------------------------------------------------------------------------ fake Windows


def fake_installer(lines: list[str], *, power_off: bool = True) -> bytes:
    """A UEFI application (PE32+, x86-64) that writes ``lines`` to COM2 and powers the VM off.

    push rbx; sub rsp,0x30; mov rbx,rdx (SystemTable); lea rsi,[rip+msg]; mov ecx,len; mov dx,0x2f8;
    1: add dx,5; 2: in al,dx; test al,0x20; jz 2b (wait until the UART's holding register is empty, as
    a real serial driver does: QEMU drops bytes otherwise); sub dx,5; lodsb; out dx,al; dec ecx; jnz 1b;
    [mov rax,[rbx+0x58] (RuntimeServices); mov ecx,2 (EfiResetShutdown); xor edx,edx; xor r8d,r8d;
    xor r9d,r9d; call [rax+0x68] (ResetSystem)]; 3: hlt; jmp 3b. Position-independent: no relocations.
    """
    message = ("\r\n".join(lines) + "\r\n").encode()
    code = bytearray(b"\x53\x48\x83\xec\x30\x48\x89\xd3")
    lea = len(code)
    code += b"\x48\x8d\x35\0\0\0\0" + b"\xb9" + struct.pack("<I", len(message)) + b"\x66\xba\xf8\x02"
    code += b"\x66\x83\xc2\x05\xec\xa8\x20\x74\xfb\x66\x83\xea\x05\xac\xee\xff\xc9\x75\xed"
    if power_off:
        code += b"\x48\x8b\x43\x58\xb9\x02\0\0\0\x31\xd2\x45\x31\xc0\x45\x31\xc9\xff\x50\x68"
    code += b"\xf4\xeb\xfd"
    struct.pack_into("<i", code, lea + 3, len(code) - (lea + 7))
    code += message
    raw = bytes(code) + bytes(-len(code) % 0x200)
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0xF0, 0x0022)  # x86-64, executable, not stripped
    optional = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B, 0, 0, len(raw), 0, 0, 0x1000, 0x1000, 0x10000000, 0x1000, 0x200,
        0, 0, 0, 0, 0, 0, 0, 0x1000 + len(raw), 0x200, 0, 10, 0,  # subsystem 10: EFI application
        0x10000, 0x1000, 0x10000, 0x1000, 0, 16,
    ) + bytes(16 * 8)  # fmt: skip
    section = struct.pack(
        "<8sIIIIIIHHI", b".text", len(code), 0x1000, len(raw), 0x200, 0, 0, 0, 0, 0x60000020
    )
    header = bytes(dos) + b"PE\0\0" + coff + optional + section
    return header + bytes(0x200 - len(header)) + raw


def with_fake_installer(tmp_path: Path, lines: list[str], *, power_off: bool = True) -> tuple[str, ...]:
    """QEMU arguments adding a disk OVMF boots after the (blank) disk and the (fake) Windows CD.

    The stand-in is a host folder QEMU reads itself (vvfat), so it lives where QEMU's unprivileged user
    can reach it (pytest's folders are root's, 0700), owned by that user, and is removed at exit.
    """
    esp = Path(tempfile.mkdtemp(prefix="vmtest-fake-esp-"))
    atexit.register(shutil.rmtree, esp, True)
    boot = esp / "EFI" / "BOOT"
    boot.mkdir(parents=True)
    (boot / "BOOTX64.EFI").write_bytes(fake_installer(lines, power_off=power_off))
    run_as = Confinement.default().run_as
    if run_as is not None:
        for path in (esp, esp / "EFI", boot, boot / "BOOTX64.EFI"):
            os.chown(path, run_as.uid, run_as.gid)
    return (
        "-drive", f"file=fat:rw:{esp},format=vvfat,if=none,id=fake",
        "-device", "ide-hd,drive=fake,bus=ide.3,bootindex=3",
    )  # fmt: skip


def fake_build(
    tmp_path: Path, lines: list[str], *, power_off: bool = True, **changes: object
) -> WindowsImagePlan:
    values: dict[str, object] = {
        "accel": "tcg",
        "allow_tcg": True,
        "memory_mib": 2048,
        "cpus": 1,
        "timeout": 120.0,
        "screenshot_interval": 3.0,
        "qemu_extra_args": with_fake_installer(tmp_path, lines, power_off=power_off),
    }
    values.update(changes)
    return plan_windows_image(options(tmp_path, **values))


def windows_lines(*, host_key: bool) -> list[str]:
    lines = [f"{MARKERS.setup} windowsPE", f"{MARKERS.setup} specialize", f"{MARKERS.setup} firstlogon"]
    lines += [f"{MARKERS.step} 1/2: enable test signing", f"{MARKERS.step} 2/2: OpenSSH server"]
    if host_key:
        lines.append(f"{MARKERS.host_key} {HOST_KEY}")
    lines += [
        f"{MARKERS.warning} Defender real-time scanning off: Tamper Protection",
        f'{MARKERS.os_info} {{"caption":"Microsoft Windows 11 Enterprise Evaluation","version":"10.0.26100",'
        '"build":"26100","install_date":"2026-03-04T05:06:07.1234567Z"}',
        f'{MARKERS.licence} {{"name":"Windows(R), EnterpriseEval edition","description":"Windows(R) '
        'Operating System, TIMEBASED_EVAL channel","license_status":1,"grace_minutes":129600}',
        MARKERS.done,
    ]
    return lines


def child_processes() -> set[int]:
    """Live children of this process (other tests' session-wide servers included: compare sets)."""
    me = str(os.getpid())
    children = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me and fields[0] != "Z":
            children.add(int(stat_file.parent.name))
    return children


def files_containing(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def boot_sealed(image: WindowsImage, tmp_path: Path, **config: object) -> list[str]:
    """Boot the sealed image with the windows11 profile under TCG, snapshot it; the run's files."""
    guest = Windows11GuestConfig.model_validate(
        {"password": PASSWORD, "allow_tcg": True, "transport": "smb", **config}
    )
    profile = Windows11Profile.for_image(image, guest)
    run_dir = RunDirectory.create(tmp_path / "runs")

    async def run() -> None:
        machine = Machine(
            profile, MachineConfig(memory_mib=1024, cpus=1), Timeouts(shutdown=4), run_dir, accel="tcg"
        )
        try:
            await profile.start_helpers(run_dir.path)
            await machine.start()
            status = await machine.monitor.execute("query-status")
            assert status["status"] == "running"
            assert set(machine.forwards) == set(profile.forwards)
            await asyncio.sleep(1)
            assert await machine.screenshot("sealed") is not None
            # RAM snapshots need every writable node in qcow2 (the variable store included, §7).
            await save_snapshot(machine, "sealed", timeout=60)
            await load_snapshot(machine, "sealed", timeout=60)
            assert (await machine.monitor.execute("query-status"))["status"] == "running"
        finally:
            await machine.shutdown()
            machine.kill_now()
            await profile.stop_helpers()

    asyncio.run(run())
    return sorted(str(p.relative_to(run_dir.path)) for p in run_dir.path.rglob("*") if p.is_file())


@pytest.mark.e2e
@needs_qemu
def test_a_build_seals_an_image_with_its_metadata(tmp_path: Path) -> None:
    before = child_processes()
    plan = fake_build(tmp_path, windows_lines(host_key=True), openssh_zip=openssh_zip(tmp_path), output=None)
    image = build_windows_image(plan, PlainProgress())

    assert image.root.parent == tmp_path / "cache" / "windows11"
    assert find_windows_image().root == image.root  # the default location becomes `current`
    assert image.host_key == HOST_KEY and image.openssh and image.kernel_debug and not image.tpm
    assert image.client_key is not None and stat.S_IMODE(image.client_key.stat().st_mode) == 0o600
    manifest = json.loads((image.root / "image.json").read_text())
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image.disk)],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert manifest["disk_virtual_size"] == 64 * 1024**3
    assert manifest["sha256"]["disk.qcow2"] == sha256_file(image.disk)
    assert image.efivars.stat().st_size == OVMF[1].stat().st_size  # the store after the install, raw
    assert manifest["licence"] == {
        "evaluation": True,
        "description": "Windows(R) Operating System, TIMEBASED_EVAL channel",
        "started": "2026-03-04",
        "expires": manifest["licence"]["expires"],
        "grace_minutes": 129600,
        "source": "the guest (SoftwareLicensingProduct.GracePeriodRemaining)",
    }
    assert manifest["configured"]["kernel_debugging"]["port"] == "COM1"
    assert manifest["configured"]["debug_print_filter"] == {"DEFAULT": 15, "IHVDRIVER": 15}
    assert manifest["warnings"] == ["Defender real-time scanning off: Tamper Protection"]
    assert manifest["windows"]["build"] == "26100" and manifest["user"] == "vmtest"
    for secret in (PASSWORD.encode(), encode_password(PASSWORD, "Password").encode()):
        assert (
            files_containing(image.root, secret) == [] and files_containing(plan.run_dir.path, secret) == []
        )
    assert not plan.answer_iso.exists() and not plan.work_dir.exists()
    assert list((plan.run_dir.path / "screenshots").glob("*.png"))
    assert child_processes() <= before

    run_files = boot_sealed(image, tmp_path)
    assert "disk0.qcow2" in run_files and "disk1.qcow2" in run_files  # overlays of disk and variables
    assert child_processes() <= before


@pytest.mark.e2e
@needs_qemu
@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed")
def test_a_build_with_a_tpm_keeps_its_state_and_runs_use_a_copy(tmp_path: Path) -> None:
    before = child_processes()
    plan = fake_build(tmp_path, windows_lines(host_key=False), tpm=True, kernel_debug=False)
    image = build_windows_image(plan, PlainProgress())
    assert image.tpm and image.tpm_state is not None and any(image.tpm_state.iterdir())
    assert not image.openssh and image.host_key is None and not image.kernel_debug
    assert json.loads((image.root / "image.json").read_text())["configured"]["labconfig"] == [
        "BypassSecureBootCheck",
        "BypassRAMCheck",
    ]
    assert child_processes() <= before  # swtpm exited with QEMU
    run_files = boot_sealed(image, tmp_path, kd=False)
    assert any(name.startswith("tpm/state/") for name in run_files)
    assert child_processes() <= before


@pytest.mark.e2e
@needs_qemu
def test_a_provisioning_failure_ends_the_build_with_its_reason(tmp_path: Path) -> None:
    before = child_processes()
    lines = [
        f"{MARKERS.setup} windowsPE",
        f"{MARKERS.failed} enable test signing: protected by Secure Boot policy",
    ]
    plan = fake_build(tmp_path, lines, power_off=False)
    with pytest.raises(ImageError, match="protected by Secure Boot policy") as caught:
        build_windows_image(plan, PlainProgress())
    assert caught.value.screenshot is not None and caught.value.screenshot.is_file()
    assert caught.value.artifacts == plan.run_dir.path
    assert not plan.answer_iso.exists() and not plan.work_dir.exists() and not plan.output.exists()
    assert child_processes() <= before


@pytest.mark.e2e
@needs_qemu
def test_a_silent_installer_runs_into_the_deadline_with_screenshots(tmp_path: Path) -> None:
    before = child_processes()
    plan = fake_build(tmp_path, ["not a marker"], power_off=False, timeout=10.0)
    with pytest.raises(ImageError, match=r"not done within 10s.*no marker yet"):
        build_windows_image(plan, PlainProgress())
    assert len(list((plan.run_dir.path / "screenshots").glob("*.png"))) >= 2
    assert not plan.answer_iso.exists() and not plan.work_dir.exists()
    assert child_processes() <= before
