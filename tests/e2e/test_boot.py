"""End to end with the real Linux self-test guest under real QEMU.

The last test writes to the guest's disk itself, then checks the base image against its hash taken
before any VM of the session booted (``base_image_hash`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmtest.config.models import LinuxGuestConfig, MachineConfig, VmtestConfig
from vmtest.errors import GuestCrashed, InfraError, MachineExited
from vmtest.facade import BackgroundSession
from vmtest.images.linux import LinuxImage, build_linux_image
from vmtest.progress import PlainProgress
from vmtest.session import VmSession

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def image() -> LinuxImage:
    return build_linux_image()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_for(
    tmp_path: Path, image: LinuxImage, append: str = "", *, clean_shutdown: bool = False
) -> VmtestConfig:
    return VmtestConfig(
        artifacts=tmp_path,
        guest=LinuxGuestConfig(image=image.root, append=append),
        machine=MachineConfig(clean_shutdown=clean_shutdown),
    )


def qemu_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_boot_ready_screenshot_and_clean_shutdown(tmp_path: Path, image: LinuxImage) -> None:
    async def scenario() -> tuple[VmSession, Path | None, int]:
        config = config_for(tmp_path, image, clean_shutdown=True)
        async with VmSession(config, PlainProgress()) as session:
            assert session.machine is not None
            shot = await session.screenshot("ready")
            pid = session.machine.process.pid if session.machine.process else -1
        return session, shot, pid

    session, shot, pid = asyncio.run(scenario())
    assert shot is not None and shot.read_bytes().startswith(PNG_SIGNATURE)
    assert session.shutdown_report is not None
    assert session.shutdown_report.step == "guest power-off"
    assert session.shutdown_report.returncode == 0
    assert not qemu_alive(pid)
    run = session.run_dir.path
    assert run.stat().st_mode & 0o777 == 0o700
    serial = run / "serial-console.log"
    assert image.ready_marker in serial.read_text(errors="replace")
    assert "Linux version" in serial.read_text(errors="replace")
    assert '"event": "SHUTDOWN"' in (run / "qmp-events.jsonl").read_text()


def test_a_throwaway_vm_ends_with_quit_not_the_power_off_ladder(tmp_path: Path, image: LinuxImage) -> None:
    async def scenario() -> VmSession:
        async with VmSession(config_for(tmp_path, image), PlainProgress()) as session:
            pass
        return session

    session = asyncio.run(scenario())
    assert session.shutdown_report is not None
    assert session.shutdown_report.step == "QMP quit" and session.shutdown_report.returncode == 0
    events = (session.run_dir.path / "qmp-events.jsonl").read_text()
    assert '"reason": "host-qmp-quit"' in events and "POWERDOWN" not in events


def test_guest_panic_is_reported_as_a_crash_with_logs(tmp_path: Path, image: LinuxImage) -> None:
    async def scenario() -> None:
        async with VmSession(config_for(tmp_path, image, append="vmtest.selftest=panic"), PlainProgress()):
            pass

    # Seen as the crash it is (the panic event), not as the boot deadline running out.
    with pytest.raises(GuestCrashed) as caught:
        asyncio.run(scenario())
    error = caught.value
    assert error.phase == "ready"
    assert error.crash is not None and getattr(error.crash, "name", "") == "GUEST_PANICKED"
    assert error.artifacts is not None
    serial = (error.artifacts / "serial-console.log").read_text(errors="replace")
    assert "Kernel panic" in serial
    assert "console *** panic: sysrq triggered crash" in (error.artifacts / "capture.log").read_text()
    assert error.screenshot is not None and error.screenshot.read_bytes().startswith(PNG_SIGNATURE)
    assert "GUEST_PANICKED" in str(error) and str(error.artifacts) in str(error)


def test_qemu_killed_from_outside_is_a_clear_error_naming_the_signal(
    tmp_path: Path, image: LinuxImage
) -> None:
    killed: list[int] = []

    async def scenario() -> None:
        session = VmSession(config_for(tmp_path, image), PlainProgress())

        async def kill_when_booting() -> None:
            # Strike once the kernel runs (its banner on the serial console): in the ready phase.
            while session.machine is None or session.machine.process is None or not kernel_started(session):
                await asyncio.sleep(0.05)
            killed.append(session.machine.process.pid)
            os.kill(session.machine.process.pid, signal.SIGKILL)

        killer = asyncio.create_task(kill_when_booting())
        try:
            async with session:
                pass
        finally:
            killer.cancel()

    # QEMU's death itself is the error (not the boot deadline running out, nor a failed QMP command).
    with pytest.raises(MachineExited) as caught:
        asyncio.run(scenario())
    assert killed
    assert "killed by SIGKILL" in str(caught.value)
    assert caught.value.phase == "ready"
    assert caught.value.artifacts is not None and (caught.value.artifacts / "qemu.log").exists()


def kernel_started(session: VmSession) -> bool:
    """Whether the guest kernel printed its banner on the serial console yet."""
    serial = session.run_dir.path / "serial-console.log"
    return serial.is_file() and b"Linux version" in serial.read_bytes()


def test_qemu_does_not_outlive_vmtest_killed_with_sigkill(tmp_path: Path, image: LinuxImage) -> None:
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"artifacts: {tmp_path / 'runs'}\nguest:\n  image: {image.root}\n")
    vmtest = subprocess.Popen(
        [sys.executable, "-m", "vmtest.cli", "boot", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        qemu_pid = wait_for_child_qemu(vmtest.pid, timeout=60)
    finally:
        vmtest.kill()
        vmtest.wait(timeout=10)
    deadline = time.monotonic() + 10
    while qemu_alive(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not qemu_alive(qemu_pid), f"QEMU {qemu_pid} survived vmtest's SIGKILL"


def wait_for_child_qemu(parent: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                try:
                    if "qemu-system" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                        return int(child)
                except OSError:
                    continue
        time.sleep(0.1)
    raise AssertionError("vmtest did not start QEMU in time")


def test_infra_errors_name_the_phase_and_the_logs(tmp_path: Path, image: LinuxImage) -> None:
    config = VmtestConfig(artifacts=tmp_path, guest=LinuxGuestConfig(image=tmp_path / "no-such-image"))

    async def scenario() -> None:
        async with VmSession(config, PlainProgress()):
            pass

    with pytest.raises(InfraError) as caught:
        asyncio.run(scenario())
    assert caught.value.phase == "prepare"
    assert "vmtest image build linux" in str(caught.value)


def test_base_image_is_never_written(tmp_path: Path, image: LinuxImage, base_image_hash: str | None) -> None:
    # The hash was taken before the session's first test: every VM booted since (this module's, and
    # this test's own, whose guest writes its disk) must have left the base image as it was.
    assert base_image_hash is not None, "the session fixture did not hash the base image"
    booted = BackgroundSession(config_for(tmp_path, image), PlainProgress(), label="base-image")
    try:
        guest = booted.start()
        assert guest is not None
        script = (
            "echo written-by-the-guest > /mnt/disk/vmtest-write-check && sync"
            " && dd if=/dev/urandom of=/dev/vda bs=4096 seek=64 count=16 conv=fsync 2>&1"
            " && cat /mnt/disk/vmtest-write-check"
        )
        result = booted.call(lambda: guest.transport.run(["sh", "-c", script], timeout=60), timeout=90)
    finally:
        booted.close()
    assert result.exit_code == 0 and b"written-by-the-guest" in result.stdout, result.text()
    assert sha256(image.disk) == base_image_hash
