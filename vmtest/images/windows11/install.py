"""The install under QEMU: boot the installer, follow Setup and provisioning, wait for the power-off.

:func:`install_windows` boots :class:`Windows11InstallerProfile` (the Windows profile plus both
CD-ROMs), presses Enter over QMP during the first minute to get past "Press any key to boot from CD
or DVD" (windows11-vm.md §2.2), follows the markers the guest prints on COM2, takes a screenshot every
minute (and at each marker), watches QEMU's run state and drains COM1, all within one overall deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket

from vmtest.errors import (
    AcceleratorError,
    DeadlineExceeded,
    GuestCrashed,
    ImageError,
    InfraError,
    MachineExited,
)
from vmtest.images.linux import default_cache_root
from vmtest.images.windows11.markers import ProvisionLog
from vmtest.images.windows11.plan import KVM_PROBE_TIMEOUT, Deadlines, WindowsImagePlan
from vmtest.machine.accel import probe_kvm
from vmtest.machine.bugcheck import bugcheck_from_qmp_event
from vmtest.machine.machine import Machine
from vmtest.machine.process import find_qemu
from vmtest.machine.profiles.windows11 import Windows11InstallerProfile
from vmtest.progress import Progress
from vmtest.verdict.stop_codes import known_stop_code_name

__all__ = ["install_windows"]

logger = logging.getLogger(__name__)

RUN_STATE_POLL = 5.0
CONSOLE_DRAIN = 5.0
DEAD_RUN_STATES = frozenset({"internal-error", "io-error"})


async def _choose_accelerator(plan: WindowsImagePlan, profile: Windows11InstallerProfile) -> str:
    if plan.options.accel == "tcg":
        return "tcg"  # allowed: checked when planning
    qemu = find_qemu(plan.options.qemu)
    probe = await probe_kvm(qemu, profile.cpu_model("kvm"), KVM_PROBE_TIMEOUT, cache_dir=default_cache_root())
    if probe.usable:
        return "kvm"
    if plan.options.allow_tcg and plan.options.accel == "auto":
        logger.warning(
            "KVM cannot run a guest here (%s): installing under TCG, which takes many hours", probe.reason
        )
        return "tcg"
    raise AcceleratorError(
        f"KVM cannot run a guest here: {probe.reason}. Installing Windows under TCG takes many hours; pass "
        "--accel auto --allow-tcg to try anyway",
        phase="accel",
        artifacts=plan.run_dir.path,
    )


async def install_windows(plan: WindowsImagePlan, progress: Progress) -> tuple[ProvisionLog, str]:
    """Boot the installer and wait until the provisioned guest has powered off."""
    profile = Windows11InstallerProfile(
        plan.hardware, windows_iso=plan.options.iso.resolve(), answer_iso=plan.answer_iso
    )
    with progress.phase("accel", "checking that KVM can run the installer"):
        accel = await _choose_accelerator(plan, profile)
    machine = Machine(profile, plan.machine, plan.timeouts, plan.run_dir, accel=accel)
    report = ProvisionLog()
    finished = asyncio.Event()
    setup_started = asyncio.Event()
    shots: asyncio.Queue[str] = asyncio.Queue()
    stopped: list[str] = []  # a run state in which the guest can never go on

    def on_line(line: str) -> None:
        note = report.feed(line)
        if note is None:
            return
        progress.note(note)
        if not report.done:  # the guest is powering off then: nothing left to see
            shots.put_nowait(re.sub(r"[^A-Za-z0-9]+", "-", note)[:30])
        if report.passes:
            setup_started.set()
        if report.done or report.failure is not None:
            finished.set()

    async def prelaunch(booting: Machine) -> None:
        booting.consoles["console"].add_line_listener(on_line)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.deadlines.overall
    tasks: list[asyncio.Task[None]] = []
    try:
        await profile.start_helpers(plan.run_dir.path)
        with progress.phase("boot", f"starting QEMU ({profile.describe()}, {accel})"):
            await machine.start(prelaunch=prelaunch)
        tasks = [
            asyncio.create_task(_watch_run_state(machine, stopped, finished), name="run-state"),
            asyncio.create_task(_press_enter(machine, plan.deadlines, setup_started), name="send-key"),
            asyncio.create_task(
                _screenshots(machine, plan.deadlines.screenshot_interval, shots), name="screens"
            ),
            asyncio.create_task(_drain(machine.serial_sockets.get("kd")), name="drain-com1"),
        ]
        with progress.phase("install", "Windows Setup, then provisioning (markers on COM2)"):
            try:
                await machine.wait(
                    finished.wait(), deadline - loop.time(), "installing and provisioning Windows"
                )
            except MachineExited:
                await _console_drained(machine)  # its last lines may still be on their way
                if not report.done:
                    raise
        if stopped:
            shot = await machine.screenshot("vm-stopped")
            raise ImageError(
                f"QEMU stopped the VM ({stopped[0]}) with {report.last}: see qemu.log"
                + (" (KVM cannot run this guest here)" if stopped[0] == "internal-error" else ""),
                phase="install",
                screenshot=shot,
            )
        if report.failure is not None:
            shot = await machine.screenshot("provisioning-failed")
            raise ImageError(
                f"provisioning failed in the guest: {report.failure}", phase="install", screenshot=shot
            )
        with progress.phase("power-off", "waiting for the guest to shut down"):
            await _wait_for_poweroff(machine, min(plan.deadlines.poweroff, max(deadline - loop.time(), 1.0)))
    except GuestCrashed as error:
        event = machine.crash
        named = known_stop_code_name
        bugcheck = bugcheck_from_qmp_event(event, name_for=named) if event is not None else None
        shot = await machine.screenshot("bugcheck")
        summary = bugcheck.summary if bugcheck is not None else str(error)
        raise ImageError(
            f"the guest crashed during the install ({summary}); last progress: {report.last}",
            phase="install",
            screenshot=shot,
        ) from error
    except (DeadlineExceeded, MachineExited) as error:
        shot = await machine.screenshot("install-stopped") if machine.running else None
        raise ImageError(
            f"{error.message}; last progress: {report.last} (see the screenshots)",
            phase="install",
            screenshot=shot,
        ) from error
    except InfraError as error:
        error.located(phase="install", artifacts=plan.run_dir.path)
        raise
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await machine.shutdown()
        machine.kill_now()
        await profile.stop_helpers()
    return report, accel


async def _watch_run_state(machine: Machine, stopped: list[str], finished: asyncio.Event) -> None:
    """Poll QEMU's run state; record a dead end (``internal-error``, ``io-error``) and end the wait."""
    while machine.running:
        await asyncio.sleep(RUN_STATE_POLL)
        try:
            status = await machine.monitor.execute("query-status")
        except InfraError:
            return
        if status.get("status") in DEAD_RUN_STATES:
            stopped.append(str(status["status"]))
            finished.set()
            return


async def _press_enter(machine: Machine, deadlines: Deadlines, stop: asyncio.Event) -> None:
    """Press Enter over QMP during the first seconds, past "Press any key to boot from CD or DVD"."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadlines.key_window
    presses = 0
    while loop.time() < end and not stop.is_set():
        try:
            await machine.monitor.execute("send-key", {"keys": [{"type": "qcode", "data": "ret"}]})
        except InfraError as error:
            logger.info("send-key stopped: %s", error)
            return
        presses += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), deadlines.key_interval)
    logger.info("pressed Enter %d times", presses)


async def _screenshots(machine: Machine, interval: float, requests: asyncio.Queue[str]) -> None:
    """A screenshot every ``interval`` seconds, and one when labels arrive (the latest of a burst)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            label = await asyncio.wait_for(requests.get(), interval)
            while not requests.empty():
                label = requests.get_nowait()
        except asyncio.TimeoutError:
            label = f"install-{int(loop.time() - started):05d}s"
        if not (machine.running and machine.monitor.connected):
            return
        await machine.screenshot(label)


async def _drain(sock: socket.socket | None) -> None:
    """Read and drop COM1 (the firmware's console, later the KD link; QEMU logs it) so it never stalls."""
    if sock is None:
        return
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        while await loop.sock_recv(sock, 65536):
            pass


async def _console_drained(machine: Machine) -> None:
    """Wait (briefly) until the console has read everything QEMU wrote before it exited."""
    console = machine.consoles.get("console")
    if console is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(console.closed.wait(), CONSOLE_DRAIN)


async def _wait_for_poweroff(machine: Machine, timeout: float) -> None:
    assert machine.process is not None
    with contextlib.suppress(MachineExited):  # QEMU exits when the guest powers off: that is the point
        await machine.wait(machine.process.wait(), timeout, "waiting for the guest to power off")
    returncode = await asyncio.wait_for(machine.process.wait(), 10)
    if returncode != 0:
        raise ImageError(
            f"QEMU exited with status {returncode} after provisioning (see qemu.log)", phase="power-off"
        )
    if not any(e.name == "SHUTDOWN" and e.data.get("guest") is True for e in machine.monitor.history):
        logger.warning("QEMU exited without reporting a guest-initiated shutdown")
