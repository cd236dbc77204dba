"""The mapped warm store without a guest: command lines (Windows dry run), the QEMU probe, entry checks.

What travels where for a Windows guest (see vmtest/machine/mapped.py): the guest's memory in the
entry's ``ram`` file; the UEFI variable store as the entry's frozen ``disk1.qcow2`` under each run's
overlay (the flash's RAM copy and the TPM's state blobs in ``state``); a fresh swtpm from the image's
template state per QEMU, into which the incoming migration loads the saved TPM state.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from vmtest.config.models import MachineConfig, Timeouts, VmtestConfig
from vmtest.doctor_warm import warm_store_checks
from vmtest.machine.machine import Machine
from vmtest.machine.mapped import (
    RAM_FILE,
    STATE_FILE,
    MappedMachine,
    MappedWarm,
    SavingMachine,
    mapping_support,
    store_root,
)
from vmtest.machine.mapped import _judge as judge
from vmtest.machine.process import find_qemu
from vmtest.machine.profiles.windows11 import TpmSettings, Windows11Profile, WindowsHardware, tpm_socket
from vmtest.machine.rundir import RunDirectory
from vmtest.machine.snapshots import WarmKey

MEMORY = 4096


@pytest.fixture(autouse=True)
def host_with_hyperv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vmtest.machine.profiles.windows11.kvm_has_hyperv", lambda: True)


def windows_template(tmp_path: Path) -> Machine:
    hardware = WindowsHardware(
        disk=tmp_path / "disk.qcow2",
        efivars=tmp_path / "efivars.qcow2",
        ovmf_code=Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        tpm=TpmSettings(state=tmp_path / "tpm-template"),
    )
    run_dir = RunDirectory.create(tmp_path / "artifacts")
    config = MachineConfig(memory_mib=MEMORY)
    return Machine(Windows11Profile(hardware), config, Timeouts(), run_dir, accel="kvm")


def values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == option]


def dry_run(machine: Machine) -> list[str]:
    run = machine.run_dir
    return machine.command_line("qemu-system-x86_64", (run.overlay(0), run.overlay(1)), 3, {"kd": 4})


def warm_for(template: Machine, root: Path) -> MappedWarm:
    return MappedWarm(template, root, WarmKey("windows11-test", "0123456789abcdef", {"k": 1}))


def test_the_windows_save_command_line_keeps_ram_in_a_shared_file_of_the_run(tmp_path: Path) -> None:
    template = windows_template(tmp_path)
    saving = warm_for(template, tmp_path / "store")
    saving._lock = open(tmp_path / "lock", "w")  # noqa: SIM115  (as if this run held the entry's lock)
    machine = saving.cold_machine()
    assert isinstance(machine, SavingMachine)
    args = dry_run(machine)
    ram = template.run_dir.path / RAM_FILE
    assert values(args, "-object") == [
        f"memory-backend-file,id=vmtest-ram,size={MEMORY}M,mem-path={ram},share=on"
    ]
    assert values(args, "-machine") == ["q35,vmport=off", "memory-backend=vmtest-ram"]  # QEMU merges them
    assert values(args, "-m") == [str(MEMORY)] and "-incoming" not in args
    drives = values(args, "-drive")
    assert any(f"file={template.run_dir.overlay(1)}" in d and "node-name=efivars" in d for d in drives)
    assert any(str(tpm_socket(template.run_dir.path)) in c for c in values(args, "-chardev"))
    saving.release()


def test_the_windows_restore_command_line_maps_the_entry_privately_and_waits_for_state(
    tmp_path: Path,
) -> None:
    template = windows_template(tmp_path)
    warm = warm_for(template, tmp_path / "store")
    warm.entry = tmp_path / "store" / "entry"
    machine = warm.restore_machine({"ssh": 40022})
    assert isinstance(machine, MappedMachine) and machine.preferred_ports == {"ssh": 40022}
    args = dry_run(machine)
    ram = warm.entry / RAM_FILE
    assert values(args, "-object") == [
        f"memory-backend-file,id=vmtest-ram,size={MEMORY}M,mem-path={ram},share=off"
    ]
    assert values(args, "-incoming") == ["defer"]  # the state comes later, over a passed descriptor
    assert not any(arg.startswith(("exec:", "fd:")) for arg in args)
    drives = values(args, "-drive")  # the run's overlays (over the entry's frozen disks), never the entry
    assert any(f"file={template.run_dir.overlay(0)}" in d and "node-name=disk0" in d for d in drives)
    assert any(f"file={template.run_dir.overlay(1)}" in d and "node-name=efivars" in d for d in drives)
    assert not any(str(warm.entry / "disk") in d for d in drives)


def test_a_cold_boot_without_the_lock_is_the_plain_template(tmp_path: Path) -> None:
    template = windows_template(tmp_path)
    assert warm_for(template, tmp_path / "store").cold_machine() is template


def test_the_store_is_placed_by_configuration(tmp_path: Path) -> None:
    assert store_root(MachineConfig(), tmp_path) == tmp_path / "warm"
    placed = MachineConfig.model_validate({"warm_store": str(tmp_path / "shm")})
    assert store_root(placed, tmp_path) == tmp_path / "shm"


# ------------------------------------------------------------------------------------------ probe

QEMU_72 = {
    "version": {"qemu": {"major": 7, "minor": 2, "micro": 22}},
    "capabilities": [
        {"capability": "xbzrle", "state": False},
        {"capability": "x-ignore-shared", "state": False},
    ],
    "backends": [{"name": "memory-backend-file"}, {"name": "memory-backend-ram"}],
}


def test_this_hosts_qemu_can_map() -> None:
    assert mapping_support(find_qemu("qemu-system-x86_64")) is None


def test_a_qemu_without_the_capability_falls_back_with_a_reason() -> None:
    assert judge(QEMU_72) is None
    lacking = {**QEMU_72, "capabilities": [{"capability": "xbzrle", "state": False}]}
    assert judge(lacking) == "QEMU has no x-ignore-shared migration capability"
    old = {**QEMU_72, "version": {"qemu": {"major": 4, "minor": 2, "micro": 1}}}
    assert "needs 5.0 or newer" in str(judge(old))
    assert judge({}) == "QEMU did not answer query-version over QMP"


# ------------------------------------------------------------------------------------------ entries


def published(tmp_path: Path) -> MappedWarm:
    template = windows_template(tmp_path)
    warm = warm_for(template, tmp_path / "store")
    entry = warm.path
    entry.mkdir(parents=True)
    for name in (RAM_FILE, STATE_FILE, "disk0.qcow2", "disk1.qcow2"):
        (entry / name).write_bytes(b"x")
    stat = (entry / RAM_FILE).stat()
    manifest = {"key": warm.key.material, "ram": [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]}
    (entry / "warm.json").write_text(json.dumps(manifest))
    return warm


def test_an_intact_entry_is_found(tmp_path: Path) -> None:
    warm = published(tmp_path)
    assert warm.find() == warm.path


def test_an_entry_missing_a_file_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warm = published(tmp_path)
    (warm.path / STATE_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        assert warm.find() is None
    assert "lacks state; booting cold" in caplog.text


def test_a_ram_file_written_back_to_its_old_times_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warm = published(tmp_path)
    ram = warm.path / RAM_FILE
    before = ram.stat()
    ram.write_bytes(b"y")  # same size; then the modification time is set back, as its owner could
    os.utime(ram, ns=(before.st_atime_ns, before.st_mtime_ns))
    with caplog.at_level(logging.WARNING):
        assert warm.find() is None  # the change time gives it away
    assert "its RAM file changed after it was published" in caplog.text


def test_an_entry_whose_ram_file_was_written_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warm = published(tmp_path)
    (warm.path / RAM_FILE).write_bytes(b"written after it was published")
    with caplog.at_level(logging.WARNING):
        assert warm.find() is None
    assert "its RAM file changed after it was published; booting cold" in caplog.text


def test_an_unreadable_manifest_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warm = published(tmp_path)
    (warm.path / "warm.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert warm.find() is None
    assert "is unreadable" in caplog.text and "booting cold" in caplog.text


# ------------------------------------------------------------------------------------------ doctor


def doctor_config(tmp_path: Path, memory_mib: int) -> VmtestConfig:
    machine = {"warm": True, "warm_store": str(tmp_path / "store"), "memory_mib": memory_mib}
    return VmtestConfig.model_validate({"artifacts": str(tmp_path / "runs"), "machine": machine})


def test_doctor_reports_the_store_and_whether_qemu_can_map(tmp_path: Path) -> None:
    mapping, store = warm_store_checks(doctor_config(tmp_path, 1024))
    assert mapping.ok and mapping.name == "warm-mapping"
    assert store.ok and str(tmp_path / "store") in store.detail and "1280 MiB" in store.detail


def test_doctor_warns_when_the_store_has_no_room_for_the_ram_file(tmp_path: Path) -> None:
    _, store = warm_store_checks(doctor_config(tmp_path, 1024 * 1024))  # a 1 TiB guest
    assert not store.ok and store.severity == "warning" and "not enough" in store.detail
    assert "machine.warm_store" in store.fix


def test_the_probes_answer_is_kept_for_later_processes(tmp_path: Path) -> None:
    qemu = find_qemu("qemu-system-x86_64")
    assert mapping_support(qemu, tmp_path) is None
    (answers,) = json.loads((tmp_path / "qemu-mapping.json").read_text()).items()
    assert answers[0].startswith(str(Path(qemu).resolve())) and answers[1] is None
    stamp = answers[0]
    (tmp_path / "qemu-mapping.json").write_text(json.dumps({stamp: "remembered reason"}))
    assert mapping_support(qemu, tmp_path) == "remembered reason"  # not asked again
