"""vmtest doctor on this very host: real QEMU, the real KVM probe, real files for the image checks."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.doctor import (
    Check,
    doctor_command,
    doctor_exit_code,
    qemu_version,
    render,
    run_checks,
)
from vmtest.doctor_host import host_checks as runner_host_checks
from vmtest.doctor_host import memory_mib
from vmtest.doctor_image import image_checks
from vmtest.errors import EXIT_INFRA, ImageError
from vmtest.images.linux import default_cache_root, find_linux_image
from vmtest.images.windows11 import WindowsImage
from vmtest.machine.accel import probe_kvm

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="QEMU not installed")
TODAY = datetime.date.today()


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


@pytest.fixture(scope="module")
def host_checks() -> dict[str, Check]:
    """The default configuration's checks on this host (the KVM probe result is cached per boot)."""
    return by_name(run_checks(VmtestConfig()))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("VMTEST_CACHE", str(folder))
    return folder


def windows_image(
    folder: Path,
    content: bytes = b"golden image",
    *,
    recorded: str | None = None,
    expires: datetime.date | None = None,
    tpm: bool = False,
) -> Path:
    """A Windows image folder as `vmtest image build windows11` leaves it: disk, UEFI vars, image.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "disk.qcow2").write_bytes(content)
    (folder / "efivars.fd").write_bytes(b"vars")
    manifest = {
        "format": 1,
        "kind": "windows11",
        "paths": {"disk": "disk.qcow2", "efivars": "efivars.fd", "tpm_state": None, "client_key": None},
        "sha256": {"disk.qcow2": recorded or sha256(content)},
        "licence": {"expires": expires.isoformat() if expires else None},
        "user": "vmtest",
        "ready_marker": "VMTEST-READY",
        "host_key": None,
        "configured": {"kernel_debugging": {"enabled": False}, "tpm": {"enabled": tpm}, "openssh": None},
        "firmware": {"ovmf_code": "/usr/share/OVMF/OVMF_CODE_4M.fd"},
    }
    (folder / "image.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def windows_config(image: Path) -> VmtestConfig:
    """A configuration with a Windows guest: the real model once it exists, a stand-in until then."""
    try:
        windows = importlib.import_module("vmtest.config.windows")
    except ImportError:
        guest: Any = SimpleNamespace(kind="windows11", image=image)
    else:
        guest = windows.Windows11GuestConfig.model_construct(kind="windows11", image=image)
    return VmtestConfig.model_construct(guest=guest)


# --- the host ---------------------------------------------------------------------------------------


@needs_qemu
def test_qemu_version_is_parsed_and_recent_enough(host_checks: dict[str, Check]) -> None:
    printed = subprocess.run([str(QEMU), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)", printed)
    assert match is not None
    expected = tuple(int(part) for part in match.groups())
    assert qemu_version(str(QEMU)) == expected
    assert expected >= (7, 1)
    check = host_checks["qemu"]
    assert check.ok
    assert ".".join(match.groups()) in check.detail


def test_qemu_missing_is_an_error() -> None:
    config = VmtestConfig.model_validate({"machine": {"qemu": "qemu-system-nonexistent"}})
    check = by_name(run_checks(config))["qemu"]
    assert (check.ok, check.severity) == (False, "error")
    assert "apt-get install qemu-system-x86" in check.fix


@needs_qemu
def test_kvm_check_agrees_with_the_accelerator_probe(host_checks: dict[str, Check]) -> None:
    try:
        kernel: Path | None = find_linux_image().kernel
    except ImageError:
        kernel = None
    timeout = VmtestConfig().timeouts.accel_probe
    probe = asyncio.run(
        probe_kvm("qemu-system-x86_64", "host", timeout, kernel=kernel, cache_dir=default_cache_root())
    )
    check = host_checks["kvm"]
    assert check.ok == probe.usable
    assert probe.reason.removesuffix(" (cached)") in check.detail
    # A Linux guest falls back to TCG: an unusable KVM is only a warning.
    assert check.severity == ("info" if probe.usable else "warning")


def test_hyperv_and_ovmf_do_not_block_a_linux_guest(host_checks: dict[str, Check]) -> None:
    for name in ("kvm-hyperv", "xorriso"):
        assert host_checks[name].severity == "info"


def test_the_default_guest_can_run_here_when_its_image_is_built(host_checks: dict[str, Check]) -> None:
    if not host_checks["image"].ok:
        pytest.skip("the Linux self-test guest is not built on this host")
    assert doctor_exit_code(list(host_checks.values())) == 0


# --- the images -------------------------------------------------------------------------------------


def test_missing_linux_image_is_an_error_with_the_build_command(tmp_path: Path) -> None:
    config = VmtestConfig(guest=LinuxGuestConfig(image=tmp_path / "not-built"))
    checks = run_checks(config)
    image = by_name(checks)["image"]
    assert (image.ok, image.severity) == (False, "error")
    assert image.fix == "vmtest image build linux"
    assert doctor_exit_code(checks) == EXIT_INFRA
    assert "fix: vmtest image build linux" in render(checks)


def test_no_linux_image_built_in_the_cache_is_an_error(cache: Path) -> None:
    checks = by_name(run_checks(VmtestConfig()))
    assert checks["image"].severity == "error"
    assert checks["image"].fix == "vmtest image build linux"
    assert str(cache) in checks["disk-space"].detail


def windows_checks(image: Path, today: datetime.date = TODAY) -> dict[str, Check]:
    return by_name(image_checks(windows_config(image), today=today))


def test_doctor_and_run_resolve_the_same_image(cache: Path, tmp_path: Path) -> None:
    """One function resolves and checks an image; a folder run cannot boot is an error in doctor too."""
    image = windows_image(tmp_path / "img", expires=TODAY + datetime.timedelta(days=60))
    assert WindowsImage.load(image).root == image
    assert windows_checks(image)["image"].ok
    (image / "efivars.fd").unlink()  # what setup.sh --image used to copy: a disk alone
    check = windows_checks(image)["image"]
    assert (check.ok, check.severity) == (False, "error") and "efivars.fd" in check.detail
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "win11.qcow2").write_bytes(b"disk")
    check = by_name(image_checks(windows_config(lone / "win11.qcow2")))["image"]
    assert (check.ok, check.severity) == (False, "error") and "image.json" in check.detail


def test_windows_image_with_matching_hash_and_licence_time_left(cache: Path, tmp_path: Path) -> None:
    expires = TODAY + datetime.timedelta(days=60)
    checks = windows_checks(windows_image(tmp_path / "img", expires=expires))
    assert checks["image-hash"].ok and checks["licence"].ok, checks
    assert str(expires) in checks["licence"].detail


def test_expired_licence_is_an_error(cache: Path, tmp_path: Path) -> None:
    licence = windows_checks(windows_image(tmp_path / "img", expires=TODAY - datetime.timedelta(days=1)))[
        "licence"
    ]
    assert (licence.ok, licence.severity) == (False, "error")
    assert "expired" in licence.detail and "setup.sh --image" in licence.fix


def test_licence_near_expiry_is_a_warning(cache: Path, tmp_path: Path) -> None:
    image = windows_image(tmp_path / "img", expires=TODAY + datetime.timedelta(days=5))
    licence = windows_checks(image)["licence"]
    assert (licence.ok, licence.severity) == (False, "warning")
    assert "5 day(s)" in licence.detail
    assert windows_checks(image, TODAY - datetime.timedelta(days=30))["licence"].ok


def test_hash_mismatch_is_an_error(cache: Path, tmp_path: Path) -> None:
    check = windows_checks(windows_image(tmp_path / "img", recorded=sha256(b"another image")))["image-hash"]
    assert (check.ok, check.severity) == (False, "error")
    assert sha256(b"golden image") in check.detail


def test_hash_is_cached_by_size_and_mtime(cache: Path, tmp_path: Path) -> None:
    image = windows_image(tmp_path / "img", b"golden image")
    disk = image / "disk.qcow2"
    assert windows_checks(image)["image-hash"].ok
    stat = disk.stat()
    disk.write_bytes(b"golden imagf")  # same size; the old mtime is put back below
    os.utime(disk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert windows_checks(image)["image-hash"].ok, "the cached hash was not used"
    os.utime(disk, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not windows_checks(image)["image-hash"].ok, "a changed mtime did not rehash"


def test_swtpm_is_an_error_only_when_the_image_needs_a_tpm(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    assert windows_checks(windows_image(tmp_path / "a"))["swtpm"].severity == "info"
    check = windows_checks(windows_image(tmp_path / "b", tpm=True))["swtpm"]
    assert (check.ok, check.severity) == (False, "error")


def test_ovmf_comes_from_the_configuration(cache: Path, tmp_path: Path) -> None:
    image = windows_image(tmp_path / "img")
    windows = importlib.import_module("vmtest.config.windows")
    ovmf = windows.OvmfConfig.model_construct(code=tmp_path / "absent-code.fd", vars=None)
    guest = windows.Windows11GuestConfig.model_construct(kind="windows11", image=image, ovmf=ovmf)
    check = by_name(image_checks(VmtestConfig.model_construct(guest=guest)))["ovmf"]
    assert (check.ok, check.severity) == (False, "error") and "absent-code.fd" in check.detail


def test_missing_windows_image_is_an_error(cache: Path, tmp_path: Path) -> None:
    check = windows_checks(tmp_path / "absent")["image"]
    assert (check.ok, check.severity) == (False, "error")
    assert "setup.sh --image" in check.fix


def test_memory_is_read_from_meminfo() -> None:
    text = "MemTotal:        8048576 kB\nMemFree:  100 kB\nMemAvailable:    4024288 kB\n"
    assert memory_mib(text) == {"MemTotal": 7859, "MemAvailable": 3929}


def test_too_little_memory_for_the_guest_is_an_error() -> None:
    config = VmtestConfig.model_validate({"machine": {"memory_mib": 1024 * 1024}})
    check = by_name(run_checks(config))["memory"]
    assert (check.ok, check.severity) == (False, "error")


def test_a_missing_or_read_only_cache_folder_is_an_error(cache: Path) -> None:
    check = by_name(runner_host_checks(VmtestConfig()))["cache"]
    assert (check.ok, check.severity) == (False, "error") and str(cache) in check.detail
    cache.mkdir()
    assert by_name(runner_host_checks(VmtestConfig()))["cache"].ok
    if os.geteuid() != 0:  # root writes anywhere
        cache.chmod(0o555)
        assert not by_name(runner_host_checks(VmtestConfig()))["cache"].ok


def test_disk_space_is_checked_where_artifacts_will_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "elsewhere" / "artifacts"
    doctor_command(None, json_output=True, artifacts=target)
    document = json.loads(capsys.readouterr().out)
    assert any(
        str(target) in check["detail"] for check in document["checks"] if check["name"] == "disk-space"
    )


@needs_qemu
def test_a_windows_guest_needs_kvm_and_ovmf(cache: Path, tmp_path: Path) -> None:
    image = windows_image(tmp_path / "img", expires=TODAY - datetime.timedelta(days=3))
    checks = run_checks(windows_config(image))
    named = by_name(checks)
    assert named["kvm"].severity == ("info" if named["kvm"].ok else "error")
    assert named["ovmf"].severity == ("info" if named["ovmf"].ok else "error")
    assert named["licence"].severity == "error"
    assert doctor_exit_code(checks) == EXIT_INFRA


# --- the outcome ------------------------------------------------------------------------------------


def test_exit_code_is_zero_only_without_a_failed_error() -> None:
    passed = Check("qemu", True, "info", "QEMU 9.0")
    warning = Check("kvm", False, "warning", "TCG", "fix kvm")
    info = Check("ovmf", False, "info", "missing", "apt-get install ovmf")
    error = Check("image", False, "error", "no image", "vmtest image build linux")
    assert doctor_exit_code([]) == 0
    assert doctor_exit_code([passed, warning, info]) == 0
    assert doctor_exit_code([passed, warning, error]) == EXIT_INFRA
    text = render([passed, warning, error])
    assert "fix: fix kvm" in text and "fix: vmtest image build linux" in text
    assert text.rstrip().endswith("cannot run here")


def test_doctor_command_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {tmp_path / 'not-built'}\n", encoding="utf-8")
    code = doctor_command(config, json_output=True)
    document = json.loads(capsys.readouterr().out)
    assert code == document["exit_code"] == EXIT_INFRA
    assert document["ok"] is False
    image = next(check for check in document["checks"] if check["name"] == "image")
    assert image["severity"] == "error" and image["fix"] == "vmtest image build linux"
