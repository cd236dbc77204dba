"""One VM from boot to shutdown: the first steps of the pipeline, shared by every command.

``async with VmSession(config, progress) as session:`` boots the configured guest and waits until it is
ready; leaving the block always shuts QEMU down, and a failure inside it is reported with the phase,
the run directory and a screenshot of the guest's screen.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from vmtest.capture.attach import sources_for
from vmtest.capture.debugview import DebugViewSource
from vmtest.capture.source import Capture, CaptureSource
from vmtest.config.models import VmtestConfig
from vmtest.config.windows import Windows11GuestConfig
from vmtest.drivers.verifier import guest_setup
from vmtest.errors import DeadlineExceeded, GuestError, InfraError
from vmtest.guest.banner import wait_for_ssh_banner
from vmtest.guest.ssh import SshTransport
from vmtest.guests import Guest, GuestAccess, access_for, guest_for
from vmtest.images.linux import default_cache_root
from vmtest.machine.accel import resolve_accelerator
from vmtest.machine.confine import Confinement
from vmtest.machine.machine import Machine, ShutdownReport
from vmtest.machine.mapped import (
    RAM_FILE,
    STATE_FILE,
    MappedMachine,
    MappedWarm,
    SavingMachine,
    load_device_state,
    save_device_state,
    store_root,
)
from vmtest.machine.ports import LOOPBACK
from vmtest.machine.process import find_qemu
from vmtest.machine.profiles import Profile, profile_for
from vmtest.machine.rundir import RunDirectory
from vmtest.machine.snapshots import (
    WARM_TAG,
    SnapshotError,
    WarmStart,
    delete_snapshot,
    load_snapshot,
    remove_disk_copies,
    save_snapshot,
)
from vmtest.progress import Progress

__all__ = ["VmSession"]

log = logging.getLogger(__name__)

T = TypeVar("T")

WARM_READY = 30.0  # a restored guest was ready when it was saved: it answers at once or never

# The run whose task is logging: several sessions in one event loop (vmtest run -j) each keep their own
# records in their vmtest.log. Set in the task that boots the session; records from elsewhere go to all.
_CURRENT_RUN: contextvars.ContextVar[Path | None] = contextvars.ContextVar("vmtest_run", default=None)


class VmSession:
    """Boots the configured guest, waits until it is ready, and always shuts it down.

    With ``machine.warm`` it starts from the per-image snapshot of the ready guest instead (made by the
    first cold boot, see :mod:`vmtest.machine.mapped`, or :mod:`vmtest.machine.snapshots` where QEMU
    cannot map it), and :meth:`restore` returns to it.
    """

    def __init__(self, config: VmtestConfig, progress: Progress, *, label: str = "run") -> None:
        self.config = config
        self.progress = progress
        self.run_dir = RunDirectory.create(config.artifacts, label)
        self._log_handler = _attach_run_log(self.run_dir.vmtest_log)
        self._profile: Profile | None = None
        self.machine: Machine | None = None
        self.guest: Guest | None = None
        self.capture = Capture(self.run_dir.path / "capture.log")
        self.sources: list[CaptureSource] = []
        self.phase = "prepare"
        self.phases: dict[str, str] = {}
        """Each phase entered so far, in order, and how it ended: ``passed``, ``failed`` or ``running``."""
        self.shutdown_report: ShutdownReport | None = None
        self.screenshots: list[Path] = []
        self.snapshot: str | None = None
        """The snapshot in the VM's disks that :meth:`restore` returns to, if any."""
        self.restored = False
        """Whether the running guest came from a snapshot (its clock needs setting after login)."""
        self._warm: WarmStart | None = None
        self._warm_deferred = False
        self._mapped: MappedWarm | None = None
        self._at_entry = False

    @contextmanager
    def step(self, phase: str, description: str) -> Iterator[None]:
        """Run one phase: shown in the progress display, named in any error raised inside it."""
        self.phase = phase
        self.phases[phase] = "running"
        with self.progress.phase(phase, description):
            try:
                yield
            except InfraError as error:
                self.phases[phase] = "failed"
                error.located(phase=phase, artifacts=self.run_dir.path)
                raise
            except BaseException:
                self.phases[phase] = "failed"
                raise
        self.phases[phase] = "passed"

    async def __aenter__(self) -> VmSession:
        _CURRENT_RUN.set(self.run_dir.path)
        try:
            await self._boot()
        except BaseException as error:
            await self.__aexit__(type(error), error, error.__traceback__)
            raise
        return self

    async def _boot(self) -> None:
        config = self.config
        with self.step("prepare", "locating the guest image"):
            profile = profile_for(config)
        with self.step("accel", f"choosing the accelerator ({config.machine.accel})"):
            accel = await resolve_accelerator(
                config.machine.accel,
                qemu=find_qemu(config.machine.qemu),
                kvm_cpu_model=profile.cpu_model("kvm"),
                timeout=config.timeouts.accel_probe,
                probe_kernel=profile.probe_kernel,
                cache_dir=default_cache_root(),
                confinement=Confinement.from_config(config.machine),
            )
            profile.check_accelerator(accel)
        self.progress.note(f"run directory: {self.run_dir.path} (accelerator: {accel})")
        self._profile = profile
        await profile.start_helpers(self.run_dir.path)
        machine = Machine(profile, config.machine, config.timeouts, self.run_dir, accel=accel)
        machine.throwaway = not config.machine.clean_shutdown  # its disk is a run's overlay
        if config.machine.warm:
            setup = guest_setup(config)
            root = store_root(config.machine, default_cache_root())
            # The mapped store snapshots the guest at ready; a set-up guest (Driver Verifier on, rebooted)
            # is snapshotted later, which only the copy-based store does (see save_warm).
            if not setup:
                self._mapped = await asyncio.to_thread(MappedWarm.prepare, machine, root)
            else:
                log.info(
                    "warm start with a guest set up after boot (%s): the copy-based store", ", ".join(setup)
                )
            if self._mapped is not None:
                if self._mapped.entry is not None and await self._boot_mapped():
                    return
                machine = self._mapped.cold_machine()
            else:
                self._warm = await asyncio.to_thread(WarmStart.prepare, machine, default_cache_root(), setup)
                if (
                    self._warm is not None
                    and self._warm.entry is not None
                    and await self._boot_warm(self._warm)
                ):
                    return
        await self._boot_cold(machine)
        if isinstance(machine, SavingMachine):
            await self._make_entry(machine)
        elif self._warm is not None:
            if guest_setup(config):  # the snapshot is taken once the guest is set up (see save_warm)
                self._warm_deferred = True
                return
            with self.step("snapshot", "saving a snapshot of the ready guest"):
                self.snapshot = await self._warm.checkpoint(machine, config.timeouts.boot)

    async def _boot_cold(self, machine: Machine) -> None:
        self.machine = machine
        with self.step("boot", f"starting QEMU ({machine.profile.describe()} guest)"):
            await machine.start(prelaunch=self._attach_capture)
        with self.step("ready", "waiting for the guest to be ready"):
            await self._wait_ready(machine)

    async def _boot_mapped(self, ports: dict[str, int] | None = None) -> bool:
        """Restore the mapped warm entry; on failure stop that VM, log why, and return False (boot cold)."""
        assert self._mapped is not None
        machine = self._mapped.restore_machine(ports)
        self.machine = machine
        try:
            with self.step("restore", "starting from the warm snapshot"):
                await machine.start(prelaunch=self._attach_capture_and_load)
            with self.step("ready", "waiting for the restored guest"):
                await self._wait_ready(machine, restored=True)
        except InfraError as error:
            await self._abandon(machine)
            await asyncio.to_thread(self._mapped.failed, error)
            return False
        self.snapshot = WARM_TAG
        self._at_entry = True
        self.restored = True
        return True

    async def _attach_capture_and_load(self, machine: Machine) -> None:
        await self._attach_capture(machine)
        assert isinstance(machine, MappedMachine)
        await load_device_state(machine, machine.entry / STATE_FILE, timeout=self.config.timeouts.boot)

    async def _abandon(self, machine: Machine, *, kill: bool = True) -> None:
        """End ``machine`` (at once, or with ``quit``); restart the helpers (swtpm ends with QEMU)."""
        await self._stop_sources()
        if kill:
            machine.kill_now()
        await machine.shutdown()
        self.machine = None
        await machine.profile.stop_helpers()
        await machine.profile.start_helpers(self.run_dir.path)

    async def _make_entry(self, machine: SavingMachine) -> None:
        """Save the ready guest into the mapped store and continue this run from the entry.

        The saving VM ends right after the save, so nothing writes its RAM file any more; then the entry
        is published. If a step fails the run goes on without an entry (from a new cold boot if needed).
        """
        assert self._mapped is not None
        mapped = self._mapped
        state = self.run_dir.path / STATE_FILE
        ports = dict(machine.forwards)
        with self.step("snapshot", "saving the ready guest for later runs"):
            try:
                await save_device_state(machine, state, timeout=self.config.timeouts.boot)
            except SnapshotError as error:
                log.warning("the warm snapshot was not saved: %s", error)
                mapped.release()
                await machine.monitor.execute("cont")
                return
            await self._abandon(machine, kill=False)  # stopped after the save: it ends with quit
            try:
                await asyncio.to_thread(mapped.publish, machine, state)
            except (SnapshotError, OSError) as error:
                log.warning("the warm snapshot was not published: %s", error)
            finally:
                mapped.release()
        if mapped.entry is None or not await self._boot_mapped(ports):
            log.warning("continuing this run from a new cold boot")
            mapped.release()
            await self._boot_cold(mapped.template)

    async def save_warm(self) -> None:
        """Save the warm snapshot held back until the guest was set up (Driver Verifier on, rebooted)."""
        if self._warm is None or not self._warm_deferred:
            return
        self._warm_deferred = False
        machine = self._require_machine()
        with self.step("snapshot", "saving a snapshot of the set-up guest"):
            self.snapshot = await self._warm.checkpoint(machine, self.config.timeouts.boot)

    async def reboot(self, command: Sequence[str], reason: str) -> Guest:
        """Reboot the guest's OS inside the same QEMU (its disks kept), wait until it is ready, log in again.

        QEMU normally ends when the guest reboots (``-action reboot=shutdown``, so that a crash that
        reboots ends the run); for this reboot QMP ``set-action`` makes it reset instead, and then
        restores the usual action. ``command`` is the guest's own reboot command.
        """
        machine = self._require_machine()
        guest = self.guest
        if guest is None:
            raise InfraError("cannot reboot a guest that is not logged in", phase="reboot")
        marker = machine.profile.ready_marker
        with self.step("reboot", reason):
            await self._stop_guest_sources()  # DebugView: its log so far is kept; connect() starts it anew
            await machine.monitor.execute("set-action", {"reboot": "reset"})
            try:
                ready = machine.consoles["console"].marker(marker, include_recent=False) if marker else None
                try:
                    result = await self.call(
                        guest.transport.run,
                        list(command),
                        timeout=self.config.timeouts.command,
                        what="asking the guest to reboot",
                    )
                except GuestError as dropped:  # the connection may go down with the guest: the marker decides
                    log.info("the reboot command's connection ended: %s", dropped)
                else:
                    result.check("the guest's reboot command")
                guest.close()
                if ready is not None:
                    await machine.wait(
                        ready, self.config.timeouts.boot, f"waiting for {marker!r} after the reboot"
                    )
            finally:
                await machine.monitor.execute("set-action", {"reboot": "shutdown"})
        self.guest = None
        return await self.connect()

    async def _boot_warm(self, warm: WarmStart) -> bool:
        """Start from the warm snapshot; on failure stop that VM, log why, and return False (boot cold)."""
        machine = warm.machine()
        self.machine = machine
        try:
            with self.step("restore", "starting from the warm snapshot"):
                await machine.start(prelaunch=self._attach_capture_and_restore)
            with self.step("ready", "waiting for the restored guest"):
                await self._wait_ready(machine, restored=True)
        except InfraError as error:
            await self._stop_sources()
            machine.kill_now()
            await machine.shutdown()
            self.machine = None
            await machine.profile.stop_helpers()  # a helper such as swtpm ends with its QEMU: start it anew
            await machine.profile.start_helpers(self.run_dir.path)
            await asyncio.to_thread(warm.failed, error)
            return False
        self.snapshot = WARM_TAG
        self.restored = True
        return True

    async def _attach_capture_and_restore(self, machine: Machine) -> None:
        await self._attach_capture(machine)
        await load_snapshot(machine, WARM_TAG, timeout=self.config.timeouts.boot)

    async def _attach_capture(self, machine: Machine) -> None:
        for source in sources_for(machine):
            await source.start(self.capture)
            self.sources.append(source)

    async def add_source(self, source: CaptureSource) -> None:
        """Start another capture source (one that needs the guest up, such as DebugView)."""
        await source.start(self.capture)
        self.sources.append(source)

    async def _wait_ready(self, machine: Machine, *, restored: bool = False) -> None:
        budget = min(self.config.timeouts.boot, WARM_READY) if restored else self.config.timeouts.boot
        marker = machine.profile.ready_marker
        if marker is not None and not restored:  # a restored guest printed it before it was saved
            await machine.wait_for_console(marker, budget, f"waiting for {marker!r} on the serial console")
        ssh_port = machine.forwards.get("ssh")
        if ssh_port is not None:
            banner = await machine.wait(
                wait_for_ssh_banner(LOOPBACK, ssh_port),
                budget,
                f"waiting for an SSH banner on {LOOPBACK}:{ssh_port}",
            )
            log.info("guest SSH server: %s", banner)

    async def connect(self) -> Guest:
        """Log into the ready guest; the transport and driver lifecycle are then ``self.guest``."""
        machine = self._require_machine()
        budget = self.config.timeouts.boot
        with self.step("connect", "logging into the guest"):
            guest = guest_for(self.config, machine.profile, machine.forwards, self.run_dir.path.name)
            self.guest = guest
            await self.call(
                guest.transport.wait_ready, budget, timeout=budget + 5, what="logging into the guest"
            )
            if self.restored:
                await self._set_clock(guest)
        access = access_for(self.config, machine.profile, machine.forwards)
        if access is not None:
            access.write(self.run_dir.path)
        await self._start_debugview(guest)
        return guest

    async def _start_debugview(self, guest: Guest) -> None:
        """DbgPrint through DebugView in the guest, for a Windows guest without kernel debugging."""
        settings = self.config.guest
        if not isinstance(settings, Windows11GuestConfig) or not settings.debugview_enabled:
            return
        source = DebugViewSource(
            guest.transport,
            program=settings.debugview.program,
            guest_log=settings.debugview.guest_log,
            raw_copy=self.run_dir.path / "debugview.csv",
            start_command=settings.debugview.start_command,
            no_win32=settings.debugview.no_win32,
        )
        with self.step("capture", "starting DebugView in the guest"):
            await self.add_source(source)

    @property
    def restarts_from_entry(self) -> bool:
        """Whether :meth:`restore` restarts QEMU from the mapped warm entry (what a checkpoint replaces)."""
        return self._at_entry

    async def checkpoint(self) -> None:
        """Snapshot the guest as it is now, in this run's disks only, for :meth:`restore` to return to."""
        machine = self._require_machine()
        timeout = self.config.timeouts.boot
        with self.step("snapshot", "saving a snapshot of the guest"):
            if self.snapshot is not None and not self._at_entry:  # snapshot-save does not replace one
                await delete_snapshot(machine, self.snapshot, timeout=timeout)
                self.snapshot = None
            await save_snapshot(machine, WARM_TAG, timeout=timeout)
        self.snapshot = WARM_TAG
        self._at_entry = False

    async def restore(self) -> None:
        """Return the guest to its snapshot (RAM, devices, disks: a clean guest) and log in again.

        The snapshot is the warm one (``machine.warm``) or one taken by :meth:`checkpoint`. The guest's
        clock, which resumes at the snapshot's time, is set to the host's.
        """
        machine = self._require_machine()
        if self.snapshot is None:
            raise SnapshotError(
                "this VM has no snapshot to return to: start it with machine.warm: true (vmtest run --warm)"
                " or call checkpoint() first",
                phase="restore",
                artifacts=self.run_dir.path,
            )
        with self.step("restore", "returning the guest to its snapshot"):
            if self._at_entry:
                await self._restart_from_entry(machine)
            else:
                await load_snapshot(machine, self.snapshot, timeout=self.config.timeouts.boot)
            self.restored = True
            if self.guest is not None:
                transport = self.guest.transport
                await asyncio.to_thread(transport.close)  # its TCP connection is not in the restored guest
                await self.call(
                    transport.wait_ready, WARM_READY, timeout=WARM_READY + 5, what="logging in again"
                )
                await self._set_clock(self.guest)

    async def _restart_from_entry(self, machine: Machine) -> None:
        """End this QEMU (``quit``) and restore the mapped entry in a new one, on the same host ports."""
        assert self._mapped is not None
        ports = dict(machine.forwards)
        await self._stop_sources()
        await machine.shutdown()
        await machine.profile.stop_helpers()
        await machine.profile.start_helpers(self.run_dir.path)
        restored = self._mapped.restore_machine(ports)
        self.machine = restored
        await restored.start(prelaunch=self._attach_capture_and_load)
        await self._wait_ready(restored, restored=True)
        if self.guest is not None and restored.forwards != ports:
            transport = self.guest.transport
            if isinstance(transport, SshTransport) and "ssh" in restored.forwards:
                transport.port = restored.forwards["ssh"]
            access = access_for(self.config, restored.profile, restored.forwards)
            if access is not None:
                access.write(self.run_dir.path)

    async def _set_clock(self, guest: Guest) -> None:
        transport = guest.transport
        if not isinstance(transport, SshTransport) or transport.shell != "posix":
            log.info("the restored guest's clock is the snapshot's: only POSIX guests get it set")
            return
        command = functools.partial(transport.run, ["date", "-u", "-s", f"@{time.time():.0f}"], timeout=30)
        result = await self.call(command, timeout=35, what="setting the restored guest's clock")
        if not result.ok:
            log.warning("the restored guest's clock was not set: %s", result.text().strip())

    async def call(self, function: Callable[..., T], *args: object, timeout: float, what: str) -> T:
        """Run a blocking guest operation in a worker thread, ending early if the VM dies or crashes.

        ``function`` must have its own deadline too: a worker thread cannot be cancelled.
        """
        machine = self._require_machine()
        return await machine.wait(asyncio.to_thread(function, *args), timeout, what)

    async def wait(self, awaitable: Awaitable[T], timeout: float, what: str) -> T:
        """Wait for ``awaitable`` with a deadline, ending early if the VM dies or crashes."""
        return await self._require_machine().wait(awaitable, timeout, what)

    async def catch_up(self) -> None:
        """Wait until the capture holds every line the guest printed before this call."""
        caught_up = asyncio.gather(*(source.catch_up() for source in self.sources))
        await self.wait(caught_up, self.config.timeouts.command, "reading the guest's last output")

    async def keep(self, seconds: float) -> None:
        """Keep the VM up for a person until Ctrl-C, QEMU's exit, or ``seconds``; print how to reach it."""
        machine = self._require_machine()
        if self.guest is None:
            await self.connect()
        access = GuestAccess.read(self.run_dir.path)
        self.progress.note(f"the VM stays up until Ctrl-C (at most {seconds:.0f}s); reach it with:")
        self.progress.note(f"  {access.ssh_command(self.run_dir.path)}")
        self.progress.note(f"  vmtest exec --vm {self.run_dir.path} -- uname -a")
        assert machine.process is not None
        try:
            await machine.wait(machine.process.wait(), seconds, "keeping the VM up")
        except DeadlineExceeded:
            self.progress.note(f"{seconds:.0f}s are over; shutting the VM down")

    def _require_machine(self) -> Machine:
        if self.machine is None:
            raise RuntimeError("the VM is not booted")
        return self.machine

    async def screenshot(self, label: str) -> Path | None:
        """Save a screenshot of the guest's screen into the run directory."""
        if self.machine is None:
            return None
        path = await self.machine.screenshot(label)
        if path is not None:
            self.screenshots.append(path)
        return path

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if error is not None and self.machine is not None:
                shot = await self.screenshot(f"failure-{self.phase}")
                if isinstance(error, InfraError):
                    error.located(phase=self.phase, artifacts=self.run_dir.path, screenshot=shot)
            await self._stop_sources()
            if self.guest is not None:
                await asyncio.to_thread(self.guest.close)
            if self.machine is not None:
                with self.progress.phase("shutdown", "stopping the VM"):
                    self.shutdown_report = await self.machine.shutdown()
            if self._profile is not None:
                await self._profile.stop_helpers()
        finally:
            if self._warm is not None:
                self._warm.release()
            if self._mapped is not None:
                self._mapped.release()
            (self.run_dir.path / RAM_FILE).unlink(missing_ok=True)  # a RAM file no entry took
            if self.machine is not None:
                self.machine.kill_now()
                if self.snapshot is not None and not self._at_entry:  # a mapped run's overlay holds no RAM
                    remove_disk_copies(self.machine)
            self.capture.close()
            logging.getLogger("vmtest").removeHandler(self._log_handler)
            self._log_handler.close()

    async def _stop_guest_sources(self) -> None:
        """Stop the capture sources that run inside the guest (DebugView), which a reboot would end."""
        for source in [source for source in self.sources if isinstance(source, DebugViewSource)]:
            try:
                await source.stop()
            except Exception as problem:  # what it captured so far is kept if it can be; the run goes on
                log.warning("capture source %s did not stop cleanly: %s", source.name, problem)
            self.sources.remove(source)

    async def _stop_sources(self) -> None:
        for source in reversed(self.sources):
            try:
                await source.stop()
            except Exception as problem:  # a capture that fails to stop must not hide the run's outcome
                log.warning("capture source %s did not stop cleanly: %s", source.name, problem)
        self.sources.clear()


class _ThisRun(logging.Filter):
    """Passes the records of one run, and those logged outside any run's task."""

    def __init__(self, run: Path) -> None:
        super().__init__()
        self.run = run

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` belongs in this run's log."""
        return _CURRENT_RUN.get() in (None, self.run)


def _attach_run_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_ThisRun(path.parent))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("vmtest")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.DEBUG:
        root.setLevel(logging.DEBUG)
    return handler
