"""Confinement of QEMU (docs/SECURITY.md): seccomp, an unprivileged user, only the files it was handed,
and bounds that end a run naming them. Each test runs the real Linux self-test guest."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from pathlib import Path

import pytest
from conftest import write_config
from faultlib import Record, vmtest_run

from vmtest.config.models import LinuxGuestConfig, MachineConfig, MachineLimits, VmtestConfig
from vmtest.errors import InfraError, MachineExited
from vmtest.images.linux import LinuxImage
from vmtest.machine.confine import SANDBOX
from vmtest.progress import PlainProgress
from vmtest.session import VmSession

pytestmark = pytest.mark.e2e

FILL_MIB = 40  # the guest's scratch disk is 64 MiB; the bound below is 16 MiB


def config_for(tmp_path: Path, image: LinuxImage, machine: MachineConfig | None = None) -> VmtestConfig:
    return VmtestConfig(
        artifacts=tmp_path, guest=LinuxGuestConfig(image=image.root), machine=machine or MachineConfig()
    )


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def open_files(pid: int) -> list[str]:
    """Where QEMU's descriptors lead, for the regular files and folders among them."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/"):
            targets.append(target)
    return targets


def test_qemu_runs_under_seccomp_as_an_unprivileged_user_with_only_its_files(
    tmp_path: Path, image: LinuxImage, record: Record
) -> None:
    row = record(
        "QEMU confined (seccomp, user, files)",
        "the Linux guest booted by VmSession with the default configuration; /proc/PID/status, "
        "/proc/PID/fd and the command line of the running QEMU read",
        "Seccomp: 2; an unprivileged uid when vmtest runs as root; `-sandbox "
        f"{SANDBOX}`; every file it holds is in the run directory or the image; no path on its command line",
    )

    async def scenario() -> tuple[dict[str, str], list[str], str, Path | None]:
        async with VmSession(config_for(tmp_path, image), PlainProgress()) as session:
            assert session.machine is not None and session.machine.process is not None
            pid = session.machine.process.pid
            status = status_fields(pid)
            files = open_files(pid)
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            shot = await session.screenshot("confined")
        return status, files, command, shot

    status, files, command, shot = asyncio.run(scenario())
    uid = int(status["Uid"].split()[0])
    allowed = (str(tmp_path), str(image.root.resolve()), "/dev/")
    outside = [path for path in files if not path.startswith(allowed)]
    handed = ("/dev/fdset/", "/proc/self/fd/")
    pieces = re.split(r"[ ,=]", command)[1:]  # after the QEMU binary
    named = sorted({p for p in pieces if p.startswith("/") and not p.startswith(handed)})
    row.observed = (
        f"Seccomp: {status['Seccomp']}; uid {uid} (vmtest's: {os.geteuid()}); VmPeak {status['VmPeak']} "
        f"(RLIMIT_AS {(1024 + 4096)} MiB); {len(files)} open files, "
        f"outside the run directory and image: {outside or 'none'}; paths on the command line: "
        f"{named or 'none'}; screenshot through a passed descriptor: {shot is not None}"
    )
    assert status["Seccomp"] == "2"
    assert f"-sandbox {SANDBOX}" in command
    if os.geteuid() == 0:
        assert uid != 0
        assert int(status["Gid"].split()[0]) != 0
    assert not outside
    assert not named
    assert shot is not None and shot.read_bytes().startswith(b"\x89PNG")


def test_a_qmp_command_that_would_spawn_a_process_kills_qemu(
    tmp_path: Path, image: LinuxImage, record: Record
) -> None:
    marker = tmp_path / "spawned"
    row = record(
        "QMP asks QEMU to spawn a process",
        "`migrate` with an `exec:` URI (`touch` a file) on the running, sandboxed QEMU",
        "QEMU is killed by SIGSYS before anything runs; the session ends naming the seccomp filter",
    )

    async def scenario() -> str:
        async with VmSession(config_for(tmp_path, image), PlainProgress()) as session:
            machine = session.machine
            assert machine is not None
            with pytest.raises(InfraError):
                await machine.wait(
                    machine.monitor.execute("migrate", {"uri": f"exec:touch {marker}"}), 30, "migrating"
                )
            with pytest.raises(MachineExited) as exited:
                await machine.wait(asyncio.sleep(30), 30, "waiting after the migration")
            return str(exited.value)

    message = asyncio.run(scenario())
    row.observed = f"`{message}`; file made by the spawned command: {marker.exists()}"
    assert "SIGSYS" in message and "seccomp" in message
    assert not marker.exists()


def test_a_guest_filling_its_disk_hits_the_bound(tmp_path: Path, image: LinuxImage, record: Record) -> None:
    row = record(
        "guest fills its disk past the bound",
        f"machine.limits.disk_mib: 16; `dd` of {FILL_MIB} MiB onto the guest's 64 MiB scratch disk, then "
        "`sync`, over SSH",
        "QEMU's write fails with EFBIG (RLIMIT_FSIZE), the drive's werror=stop pauses the guest, the wait "
        "ends at once as an infrastructure failure naming the bound",
    )
    machine = MachineConfig(limits=MachineLimits(disk_mib=16))

    async def scenario() -> tuple[str, int]:
        async with VmSession(config_for(tmp_path, image, machine), PlainProgress()) as session:
            guest = await session.connect()
            command = [
                "sh", "-c", f"dd if=/dev/urandom of=/mnt/disk/fill bs=1M count={FILL_MIB} && sync",
            ]  # fmt: skip
            with pytest.raises(InfraError) as failed:
                await session.call(
                    functools.partial(guest.transport.run, command, timeout=300),
                    timeout=300,
                    what="filling the disk",
                )
            overlay = session.run_dir.overlay(0).stat().st_size
            return str(failed.value), overlay

    message, overlay = asyncio.run(scenario())
    row.observed = f"`{message}`; overlay size {overlay / (1 << 20):.1f} MiB"
    assert "machine.limits.disk_mib" in message and "File too large" in message
    assert overlay <= 16 << 20


def test_qemu_past_its_memory_bound_ends_the_run_naming_it(
    tmp_path: Path, image: LinuxImage, record: Record
) -> None:
    row = record(
        "QEMU past its address-space bound",
        "machine.memory_mib: 1024 with machine.limits.memory_overhead_mib: 512 (RLIMIT_AS 1.5 GiB; TCG alone "
        "reserves 1 GiB for translated code)",
        "QEMU cannot allocate its memory and exits; the run ends as an infrastructure failure naming it",
    )
    machine = MachineConfig(memory_mib=1024, limits=MachineLimits(memory_overhead_mib=512))

    async def scenario() -> str:
        with pytest.raises(InfraError) as failed:
            async with VmSession(config_for(tmp_path, image, machine), PlainProgress()):
                pass
        return str(failed.value)

    message = asyncio.run(scenario())
    row.observed = f"`{message}`"
    assert "RLIMIT_AS" in message and "memory_overhead_mib" in message


def test_qemu_past_its_cpu_time_bound_ends_the_run_naming_it(
    tmp_path: Path, image: LinuxImage, record: Record
) -> None:
    row = record(
        "QEMU past its CPU-time bound",
        "machine.limits.cpu_seconds: 10 (RLIMIT_CPU); the guest boots, then spins (`while :; do :; done`)",
        "QEMU is killed by SIGXCPU; the run ends as an infrastructure failure naming the bound",
    )
    machine = MachineConfig(limits=MachineLimits(cpu_seconds=10))

    async def scenario() -> str:
        with pytest.raises(MachineExited) as exited:
            async with VmSession(config_for(tmp_path, image, machine), PlainProgress()) as session:
                guest = await session.connect()
                spin = functools.partial(
                    guest.transport.run, ["sh", "-c", "while :; do :; done"], timeout=600
                )
                await session.call(spin, timeout=600, what="keeping the guest's CPU busy")
        return str(exited.value)

    message = asyncio.run(scenario())
    row.observed = f"`{message}`"
    assert "SIGXCPU" in message and "machine.limits.cpu_seconds" in message


def test_a_run_without_the_sandbox_says_so_in_every_report(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    row = record(
        "seccomp turned off by the configuration",
        "machine.sandbox: false; `vmtest run --driver vmtest_faults.ko --scenario fault_a`",
        "the run works; QEMU has no filter (Seccomp: 0); verdicts.json, junit.xml and report.html warn",
    )
    config = write_config(tmp_path / "vmtest.yaml", image, "machine:\n  sandbox: false\n")
    artifacts = tmp_path / "runs"
    args = ["run", str(config), "--driver", str(faults_ko), "--scenario", "fault_a"]
    with vmtest_run([*args, "--artifacts", str(artifacts)], artifacts=artifacts) as run:
        seccomp = status_fields(run.qemu_pid())["Seccomp"]
        finished = run.finish()
    assert finished.run_dir is not None
    verdicts = json.loads((finished.run_dir / "verdicts.json").read_text())
    junit = (finished.run_dir / "junit.xml").read_text()
    html = (finished.run_dir / "report.html").read_text()
    warned = {
        "verdicts.json": any("seccomp" in warning for warning in verdicts.get("warnings", [])),
        "junit.xml": 'name="warning"' in junit and "seccomp" in junit,
        "report.html": "Warning: QEMU ran without its seccomp filter" in html,
    }
    row.observed = f"exit {finished.returncode}; Seccomp: {seccomp}; warned in: {warned}"
    assert finished.returncode == 0, finished.stderr
    assert seccomp == "0"
    assert all(warned.values())
