"""Warm starts and restores (by mapping the RAM file) on the real Linux self-test guest, and `-j`.

Every test here uses a private cache (``VMTEST_CACHE``) for its warm snapshots, so the user's cache is
never touched; the accelerator is chosen once, with the real cache, before that. Every QEMU here runs
under the seccomp filter that forbids spawning processes, which the store must not need.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vmtest.config.models import LinuxGuestConfig, MachineConfig, VmtestConfig
from vmtest.guests import Guest
from vmtest.images.linux import LinuxImage, build_linux_image, default_cache_root
from vmtest.machine.accel import resolve_accelerator
from vmtest.machine.mapped import RAM_FILE, STATE_FILE
from vmtest.machine.process import find_qemu
from vmtest.machine.snapshots import WARM_TAG, SnapshotError, delete_snapshot
from vmtest.progress import PlainProgress
from vmtest.runner import ScenarioRunner
from vmtest.session import VmSession

pytestmark = pytest.mark.e2e

T = TypeVar("T")
Warm = tuple["LoopThread", VmSession, Guest]
SCENARIOS = "kmutex_contention,grt_errors"
SANDBOX = ("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")


class LoopThread:
    """An event loop in a thread of its own, alive until ``close`` (QEMU is bound to that thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vm-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(300)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def image() -> LinuxImage:
    return build_linux_image()


@pytest.fixture(scope="module")
def accel(image: LinuxImage) -> str:
    return asyncio.run(
        resolve_accelerator(
            "auto",
            qemu=find_qemu("qemu-system-x86_64"),
            kvm_cpu_model="host",
            timeout=8,
            probe_kernel=image.kernel,
            cache_dir=default_cache_root(),
        )
    )


@pytest.fixture(scope="module")
def cache(accel: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VMTEST_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def config(
    image: LinuxImage, accel: str, cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> VmtestConfig:
    return VmtestConfig(
        artifacts=tmp_path_factory.mktemp("runs"),
        guest=LinuxGuestConfig(image=image.root),
        machine=MachineConfig(accel=accel, warm=True, extra_args=SANDBOX),
    )


@pytest.fixture(scope="module")
def created(config: VmtestConfig, cache: Path, image: LinuxImage) -> tuple[Path, VmSession]:
    """The first warm session: it boots cold, saves the ready guest, publishes the entry, goes on from it."""
    base = sha256(image.disk)

    async def first() -> VmSession:
        async with VmSession(config, PlainProgress(), label="create") as session:
            assert session.restored and session.restarts_from_entry and session.snapshot == WARM_TAG
        return session

    session = asyncio.run(first())
    assert sha256(image.disk) == base
    (manifest,) = (cache / "warm").glob("*/*/warm.json")
    return manifest.parent, session


@pytest.fixture(scope="module")
def ram_digest(created: tuple[Path, VmSession]) -> str:
    """The entry's RAM file's digest right after it was made."""
    return sha256(created[0] / RAM_FILE)


@pytest.fixture(scope="module")
def warm(config: VmtestConfig, created: tuple[Path, VmSession]) -> Iterator[Warm]:
    """A session started from the entry, logged in, for the restore tests (in file order)."""
    loop = LoopThread()
    session = VmSession(config, PlainProgress(), label="warm")
    try:
        loop.run(session.__aenter__())
        guest = loop.run(session.connect())
        yield loop, session, guest
    finally:
        loop.run(session.__aexit__(None, None, None))
        loop.close()


def sh(guest: Guest, script: str) -> str:
    return guest.transport.run(["sh", "-c", script], timeout=60).check(script).stdout.decode()


def vmtest_run(tmp_path: Path, image: LinuxImage, accel: str, *args: str) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "vmtest.yaml"
    sandbox = json.dumps(list(SANDBOX))  # as the in-process sessions, so that they share the entry
    machine = f"machine:\n  accel: {accel}\n  extra_args: {sandbox}\n"
    path.write_text(f"guest:\n  kind: linux\n  image: {image.root}\n{machine}")
    command = [sys.executable, "-m", "vmtest.cli", "run", str(path), "--artifacts", str(tmp_path / "runs")]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600, cwd=tmp_path)


def statuses(stdout: str) -> dict[str, str]:
    return {item["name"]: item["status"] for item in json.loads(stdout)["scenarios"]}


# --------------------------------------------------------------------------------------- the entry


def test_the_first_cold_boot_publishes_a_frozen_entry(
    created: tuple[Path, VmSession], image: LinuxImage, ram_digest: str
) -> None:
    entry, session = created
    for name in ("disk0.qcow2", STATE_FILE, "warm.json"):
        assert (entry / name).stat().st_mode & 0o777 == 0o444
    assert (entry / RAM_FILE).stat().st_size == 1024 << 20  # the whole memory, as a (sparse) file
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(entry / "disk0.qcow2")], capture_output=True, text=True
        ).stdout
    )
    assert Path(info["backing-filename"]) == image.disk.resolve()  # frozen layer over the base image
    assert not (session.run_dir.path / RAM_FILE).exists()  # moved into the entry, not copied
    log = session.run_dir.vmtest_log.read_text()
    # The saving VM ended (quit) before the entry was published; the run went on from the entry.
    assert log.index("device state saved") < log.index("QEMU stopped by QMP quit")
    assert log.index("QEMU stopped by QMP quit") < log.index("warm snapshot saved for later runs")
    assert log.index("warm snapshot saved for later runs") < log.index("device state loaded")
    assert "-incoming defer" in log and "exec:" not in log


# --------------------------------------------------------------------------------------- restores


def test_a_restore_does_not_see_what_an_earlier_restore_wrote(warm: Warm) -> None:
    loop, session, guest = warm
    assert session.restarts_from_entry
    for round_ in range(2):
        listing = sh(guest, "ls /tmp /mnt/disk")
        assert "vmtest-image" in listing and "after-snapshot" not in listing, round_
        sh(guest, "echo dirty > /tmp/after-snapshot && echo dirty > /mnt/disk/after-snapshot && sync")
        first = session.machine
        loop.run(session.restore())
        assert session.machine is not first  # a new QEMU, restored from the entry
    assert "after-snapshot" not in sh(guest, "ls /tmp /mnt/disk")


def test_the_ram_file_is_unchanged_by_runs_and_restores(
    warm: Warm, created: tuple[Path, VmSession], ram_digest: str
) -> None:
    loop, session, guest = warm
    sh(guest, "dd if=/dev/urandom of=/tmp/noise bs=1M count=64 2>/dev/null && sync")
    loop.run(session.restore())
    assert sha256(created[0] / RAM_FILE) == ram_digest


def test_a_warm_start_restores_the_snapshot_and_sets_the_clock(
    warm: Warm,
) -> None:
    loop, session, guest = warm
    assert session.restored
    log = session.run_dir.vmtest_log.read_text()
    assert "device state loaded" in log and "waiting for 'VMTEST-GUEST-READY'" not in log
    # The checkpoint below replaces the entry as what restore() returns to (a snapshot in the run's disk).
    # Checkpoint with the guest's clock an hour slow: a restore that did not set it would keep it slow.
    sh(guest, f"date -u -s @{time.time() - 3600:.0f}")
    loop.run(session.checkpoint())
    loop.run(session.restore())
    # Set from the host at restore: no longer an hour behind (half an hour is far beyond any delay of
    # the command itself, and far short of the hour a restore that kept the clock would show).
    assert abs(int(sh(guest, "date +%s")) - time.time()) < 1800


def test_restore_gives_a_clean_guest_and_a_working_transport(
    warm: Warm,
) -> None:
    loop, session, guest = warm
    sh(guest, "echo dirty > /tmp/after-snapshot && echo dirty > /mnt/disk/after-snapshot && sync")
    loop.run(session.restore())
    listing = sh(guest, "ls /tmp /mnt/disk")  # a command on the new connection
    assert "vmtest-image" in listing and "after-snapshot" not in listing
    loop.run(session.restore())  # twice in a row, with nothing in between
    assert sh(guest, "echo still here") == "still here\n"


def test_the_capture_receives_kernel_output_after_restore(warm: Warm) -> None:
    loop, session, guest = warm
    loop.run(session.restore())
    token = f"vmtest-after-restore-{secrets.token_hex(4)}"
    sh(guest, f"echo {token} > /dev/kmsg")
    deadline = time.monotonic() + 20
    while not any(token in line for line in session.capture.tail(50)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(token in line for line in session.capture.tail(50))
    assert token in (session.run_dir.path / "serial-console.log").read_text(errors="replace")


def test_a_snapshot_that_is_gone_is_an_error_in_qemus_words(
    warm: Warm,
) -> None:
    loop, session, _ = warm
    machine = session.machine
    assert machine is not None
    loop.run(delete_snapshot(machine, WARM_TAG, timeout=60))
    with pytest.raises(SnapshotError, match="does not exist"):
        loop.run(session.restore())


def test_the_runner_resets_to_a_clean_guest_that_keeps_the_driver(
    config: VmtestConfig, created: tuple[Path, VmSession]
) -> None:
    runner = ScenarioRunner(config)
    try:
        runner.start()
        assert runner.run(("kmutex_recursion",)).passed
        sh(runner.guest, "touch /tmp/left-by-a-test")
        runner.reset()
        assert "left-by-a-test" not in sh(runner.guest, "ls /tmp")
        sh(runner.guest, f"test -f {runner.deploy().guest_binary}")  # snapshotted after the deploy
        assert runner.run(("kmutex_recursion",)).passed
    finally:
        runner.close()


# --------------------------------------------------------------------------------------- fallbacks


def run_log(tmp_path: Path) -> str:
    (run,) = (tmp_path / "runs").iterdir()
    return (run / "vmtest.log").read_text()


def assert_entry_is_usable(entry: Path) -> None:
    manifest = json.loads((entry / "warm.json").read_text())
    assert manifest["ram"][0] == (entry / RAM_FILE).stat().st_size
    assert (entry / STATE_FILE).read_bytes()[:4] == b"QEVM"  # a migration stream, made anew


def test_a_corrupted_snapshot_falls_back_to_a_cold_boot(
    tmp_path: Path, created: tuple[Path, VmSession], image: LinuxImage, accel: str
) -> None:
    entry, _ = created
    state = entry / STATE_FILE
    state.chmod(0o644)
    state.write_bytes(b"not a migration stream\n" * 1000)
    result = vmtest_run(tmp_path, image, accel, "--warm", "--scenario", "kmutex_contention", "--json")
    assert result.returncode == 0, result.stderr
    assert "could not be restored" in run_log(tmp_path) and "booting cold" in result.stderr
    assert_entry_is_usable(entry)


def test_a_missing_snapshot_falls_back_to_a_cold_boot(
    tmp_path: Path, created: tuple[Path, VmSession], image: LinuxImage, accel: str
) -> None:
    entry, _ = created
    (entry / STATE_FILE).unlink()
    result = vmtest_run(tmp_path, image, accel, "--warm", "--scenario", "kmutex_contention", "--json")
    assert result.returncode == 0, result.stderr
    assert "lacks state; booting cold, it will be replaced" in run_log(tmp_path)
    assert_entry_is_usable(entry)


def test_concurrent_first_runs_publish_one_entry(tmp_path: Path, image: LinuxImage, accel: str) -> None:
    store = tmp_path / "store"
    config = tmp_path / "vmtest.yaml"
    config.write_text(
        f"guest:\n  kind: linux\n  image: {image.root}\n"
        f"machine:\n  accel: {accel}\n  warm: true\n  warm_store: {store}\n"
    )
    runs = []
    for name in ("a", "b"):
        command = [
            sys.executable,
            "-m",
            "vmtest.cli",
            "run",
            str(config),
            "--artifacts",
            str(tmp_path / name),
        ]
        command += ["--scenario", "kmutex_contention"]
        runs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, errors = run.communicate(timeout=600)
        assert run.returncode == 0, errors
    assert len(list(store.glob("*/*/warm.json"))) == 1
    assert not list(store.glob("*/.*.tmp-*"))
    logs = [(next((tmp_path / name).iterdir()) / "vmtest.log").read_text() for name in ("a", "b")]
    published = ["warm snapshot saved for later runs" in log for log in logs]
    assert sorted(published) == [False, True]
    other = logs[published.index(False)]
    assert "another run is creating the warm snapshot" in other or "warm snapshot found" in other


def test_a_stale_snapshot_is_replaced_after_a_cold_boot(
    tmp_path: Path, created: tuple[Path, VmSession], image: LinuxImage, accel: str
) -> None:
    entry, _ = created
    manifest = entry / "warm.json"
    manifest.chmod(0o644)
    data = json.loads(manifest.read_text())
    data["key"]["qemu"]["version"] = "QEMU emulator version 0.1"  # as if QEMU had been upgraded since
    manifest.write_text(json.dumps(data))
    result = vmtest_run(tmp_path, image, accel, "--warm", "--scenario", "kmutex_contention", "--json")
    assert result.returncode == 0, result.stderr
    assert "was made from other inputs; it will be replaced" in run_log(tmp_path)
    assert json.loads(manifest.read_text())["key"]["qemu"]["version"] != "QEMU emulator version 0.1"
    assert_entry_is_usable(entry)


# --------------------------------------------------------------------------------------- -j


def test_two_vms_give_the_verdicts_of_one_without_collisions(
    tmp_path: Path, created: tuple[Path, VmSession], image: LinuxImage, accel: str
) -> None:
    one = vmtest_run(tmp_path / "one", image, accel, "--warm", "-j", "1", "--scenario", SCENARIOS, "--json")
    two = vmtest_run(tmp_path / "two", image, accel, "--warm", "-j", "2", "--scenario", SCENARIOS, "--json")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert statuses(one.stdout) == statuses(two.stdout) == dict.fromkeys(SCENARIOS.split(","), "passed")
    (parent,) = (tmp_path / "two" / "runs").iterdir()
    assert Path(json.loads(two.stdout)["run_dir"]) == parent
    assert [path.relative_to(parent) for path in parent.rglob("verdicts.json")] == [Path("verdicts.json")]
    assert (parent / "junit.xml").is_file() and (parent / "report.html").is_file()
    children = sorted(path for path in parent.iterdir() if (path / "guest.json").is_file())
    assert len(children) == 2
    ports = [json.loads((child / "guest.json").read_text())["port"] for child in children]
    assert ports[0] != ports[1]
    for child, port, other in zip(children, ports, reversed(ports), strict=True):
        log = (child / "vmtest.log").read_text()
        assert f"127.0.0.1:{port} -> guest port 22" in log
        assert f"127.0.0.1:{other} -> guest port 22" not in log  # each VM's log is its own
        assert os.stat(child).st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------------------- old QEMU


def test_a_qemu_that_cannot_map_uses_snapshot_copies_and_says_why(
    config: VmtestConfig, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "QEMU has no x-ignore-shared migration capability"
    monkeypatch.setattr("vmtest.machine.mapped.mapping_support", lambda qemu, cache=None: reason)

    async def session() -> VmSession:
        async with VmSession(config, PlainProgress(), label="old-qemu") as started:
            guest = await started.connect()
            sh(guest, "touch /tmp/after-snapshot")
            await started.restore()
            assert "after-snapshot" not in sh(guest, "ls /tmp")
        return started

    first, second = asyncio.run(session()), asyncio.run(session())
    for started in (first, second):
        log = started.run_dir.vmtest_log.read_text()
        assert f"warm starts by mapping the RAM are not available ({reason}); using snapshot copies" in log
        assert "snapshot-load 'vmtest-warm' done" in log
    assert "warm snapshot saved for later runs" in first.run_dir.vmtest_log.read_text()
    assert second.restored and not second.restarts_from_entry
    assert list((cache / "warm").glob("*/*/disk0.qcow2"))  # the copy-based entry
