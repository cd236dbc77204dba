"""`vmtest image build windows11 --dry-run`, end to end through the function the CLI calls.

A dry run decides everything and prints it; it starts nothing, needs neither KVM nor a valid ISO
(only an existing path), and writes nothing but its own run directory.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from vmtest.errors import ConfigError
from vmtest.images.windows11 import host as windows_host
from vmtest.images.windows11 import image_build_windows11_command
from vmtest.images.windows11 import install as windows_install

PASSWORD = "never-printed-9f3b"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMTEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VMTEST_WINDOWS_PASSWORD", PASSWORD)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Win11_Eval.iso").write_bytes(b"not an ISO at all")
    (tmp_path / "OpenSSH-Win64.zip").write_bytes(b"PK not a zip either")
    return tmp_path


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def dry_run(workspace: Path, **changes: object) -> tuple[int, str]:
    out = io.StringIO()
    arguments: dict[str, object] = {
        "openssh_zip": workspace / "OpenSSH-Win64.zip",
        "output": None,
        "dry_run": True,
        "artifacts": workspace / "artifacts",
        "stdout": out,
    }
    arguments.update(changes)
    code = image_build_windows11_command(workspace / "Win11_Eval.iso", **arguments)  # type: ignore[arg-type]
    return code, out.getvalue()


def run_directory(workspace: Path) -> Path:
    (run_dir,) = (workspace / "artifacts").iterdir()
    return run_dir


def command_options(text: str) -> list[str]:
    start = text.index("QEMU command")
    end = text.index("dry run:", start)
    return [line.strip().rstrip("\\").strip() for line in text[start:end].splitlines()[1:]]


def test_the_dry_run_prints_the_plan_and_writes_only_its_run_directory(workspace: Path) -> None:
    before = tree(workspace)
    code, text = dry_run(workspace)
    assert code == 0
    run_dir = run_directory(workspace)
    new = tree(workspace) - before
    assert new == {"artifacts", *(str(Path("artifacts", p)) for p in tree(workspace / "artifacts"))}
    assert tree(run_dir) == {"plan.json", "qemu-command.txt", "screenshots"}
    assert not (workspace / "cache").exists()  # no image folder, no KVM probe cache, nothing else

    assert "plan (ready)" in text
    assert f"installation ISO  {workspace / 'Win11_Eval.iso'}" in text
    assert "edition           /IMAGE/INDEX = 1" in text
    assert f"image folder      {workspace / 'cache' / 'windows11'}/win11-" in text
    assert f"run directory     {run_dir}" in text
    assert "password from $VMTEST_WINDOWS_PASSWORD (set;" in text
    assert "LabConfig bypasses: BypassTPMCheck, BypassSecureBootCheck, BypassRAMCheck" in text
    assert "kernel debugging  on, COM1 (debugport:1, baudrate:115200)" in text
    for path in ("Autounattend.xml", "vmtest/settings.json", "vmtest/provision.ps1", "vmtest/ready.ps1",
                 "vmtest/common.ps1", "vmtest/OpenSSH-Win64.zip"):  # fmt: skip
        assert f"\n  {path} " in text, path
    assert PASSWORD not in text and PASSWORD not in (run_dir / "plan.json").read_text()


def test_the_printed_qemu_command_is_the_installers(workspace: Path) -> None:
    _, text = dry_run(workspace)
    options = command_options(text)
    run_dir = run_directory(workspace)
    assert options[0].endswith("qemu-system-x86_64")
    assert "-accel kvm" in options and "-machine q35,vmport=off" in options
    assert "-action panic=pause" in options and options[-1] == "-action reboot=reset"
    assert "-netdev user,id=net0,restrict=on" in options
    assert "-device e1000e,netdev=net0" in options
    assert "-device ide-hd,drive=hd0,bus=ide.0,bootindex=1" in options
    assert (
        f"-drive file={workspace / 'Win11_Eval.iso'},if=none,id=cd0,media=cdrom,readonly=on,format=raw"
        in options
    )
    assert "-device ide-cd,drive=cd0,bus=ide.1,bootindex=2" in options
    assert (
        f"-drive file={run_dir / 'answer.iso'},if=none,id=cd1,media=cdrom,readonly=on,format=raw" in options
    )
    assert any(o.startswith("-drive if=pflash,format=raw,unit=0,readonly=on,file=") for o in options)
    efivars = f"-drive if=pflash,format=qcow2,unit=1,node-name=efivars,file={run_dir / 'disk1.qcow2'}"
    assert efivars in options
    assert [o for o in options if o.startswith("-serial")] == [
        "-serial chardev:serial0",
        "-serial chardev:serial1",
    ]
    saved = (run_dir / "qemu-command.txt").read_text().split("\n")
    plan = json.loads((run_dir / "plan.json").read_text())
    assert saved[:-1] == plan["qemu_command"]  # one argument per line, as for every run
    assert plan["answer_iso"] == str(run_dir / "answer.iso") and plan["problems"] == []


def test_a_missing_iso_is_a_clear_error_and_starts_nothing(workspace: Path) -> None:
    with pytest.raises(ConfigError, match=r"the Windows ISO .*nope\.iso does not exist"):
        image_build_windows11_command(workspace / "nope.iso", openssh_zip=None, output=None, dry_run=True)
    with pytest.raises(ConfigError, match="is not a file"):
        image_build_windows11_command(workspace, openssh_zip=None, output=None, dry_run=True)
    assert not (workspace / "vmtest-artifacts").exists()


def test_other_bad_inputs_are_reported_together(workspace: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        dry_run(workspace, openssh_zip=workspace / "missing.zip", image_name="x", image_index=2, user="a<b",
                accel="tcg")  # fmt: skip
    messages = " | ".join(problem.message for problem in caught.value.problems)
    assert "OpenSSH zip" in messages and "by name or by index" in messages
    assert "user 'a<b'" in messages and "--allow-tcg" in messages


def test_an_existing_image_is_not_replaced_without_force(workspace: Path) -> None:
    output = workspace / "image"
    output.mkdir()
    (output / "image.json").write_text("{}")
    with pytest.raises(ConfigError, match="--force"):
        dry_run(workspace, output=output)
    code, _ = dry_run(workspace, output=output, force=True)
    assert code == 0


def test_without_the_password_the_dry_run_says_so(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMTEST_WINDOWS_PASSWORD")
    code, text = dry_run(workspace)
    assert code == 2
    assert "plan (NOT ready)" in text and "$VMTEST_WINDOWS_PASSWORD is not set" in text


def test_missing_host_tools_are_listed_with_their_package(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows_host.shutil, "which", lambda name: None)
    code, text = dry_run(workspace, tpm=True)
    assert code == 3
    for advice in ("apt-get install qemu-system-x86", "apt-get install qemu-utils", "apt-get install xorriso",
                   "apt-get install swtpm swtpm-tools"):  # fmt: skip
        assert advice in text


def test_the_dry_run_does_not_need_kvm(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run must not probe KVM")

    monkeypatch.setattr(windows_install, "probe_kvm", no_probe)
    monkeypatch.setattr("vmtest.machine.profiles.windows11.kvm_has_hyperv", lambda: None)
    code, text = dry_run(workspace, tpm=True, image_name="Windows 11 Enterprise LTSC Evaluation")
    assert code == 0
    assert "edition           /IMAGE/NAME = 'Windows 11 Enterprise LTSC Evaluation'" in text
    assert "LabConfig bypasses: BypassSecureBootCheck, BypassRAMCheck" in text
    options = command_options(text)
    assert "-device tpm-crb,tpmdev=tpm0" in options and "-tpmdev emulator,id=tpm0,chardev=chrtpm" in options
    assert not [name for name in os.listdir(run_directory(workspace)) if name.startswith("tpm")]
