"""One VM from boot to shutdown: the first steps of the pipeline, shared by every command.

``async with VmSession(config, progress) as session:`` boots the configured guest and waits until it is
ready; leaving the block always shuts QEMU down, and a failure inside it is reported with the phase,
the run directory and a screenshot of the guest's screen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from vmtest.capture.attach import sources_for
from vmtest.capture.source import Capture, CaptureSource
from vmtest.config.models import VmtestConfig
from vmtest.errors import DeadlineExceeded, InfraError
from vmtest.guest.banner import wait_for_ssh_banner
from vmtest.guest.connect import Guest, GuestAccess, access_for, guest_for
from vmtest.images.linux import default_cache_root
from vmtest.machine.accel import resolve_accelerator
from vmtest.machine.machine import Machine, ShutdownReport
from vmtest.machine.ports import LOOPBACK
from vmtest.machine.process import find_qemu
from vmtest.machine.profiles import profile_for
from vmtest.machine.rundir import RunDirectory
from vmtest.progress import Progress

__all__ = ["VmSession"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class VmSession:
    """Boots the configured guest, waits until it is ready, and always shuts it down."""

    def __init__(self, config: VmtestConfig, progress: Progress, *, label: str = "run") -> None:
        self.config = config
        self.progress = progress
        self.run_dir = RunDirectory.create(config.artifacts, label)
        self._log_handler = _attach_run_log(self.run_dir.vmtest_log)
        self.machine: Machine | None = None
        self.guest: Guest | None = None
        self.capture = Capture(self.run_dir.path / "capture.log")
        self.sources: list[CaptureSource] = []
        self.phase = "prepare"
        self.shutdown_report: ShutdownReport | None = None
        self.screenshots: list[Path] = []

    @contextmanager
    def step(self, phase: str, description: str) -> Iterator[None]:
        """Run one phase: shown in the progress display, named in any error raised inside it."""
        self.phase = phase
        with self.progress.phase(phase, description):
            try:
                yield
            except InfraError as error:
                error.located(phase=phase, artifacts=self.run_dir.path)
                raise

    async def __aenter__(self) -> VmSession:
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
            )
        self.progress.note(f"run directory: {self.run_dir.path} (accelerator: {accel})")
        machine = Machine(profile, config.machine, config.timeouts, self.run_dir, accel=accel)
        self.machine = machine
        with self.step("boot", f"starting QEMU ({profile.describe()} guest)"):
            await machine.start(prelaunch=self._attach_capture)
        with self.step("ready", "waiting for the guest to be ready"):
            await self._wait_ready(machine)

    async def _attach_capture(self, machine: Machine) -> None:
        for source in sources_for(machine):
            await source.start(self.capture)
            self.sources.append(source)

    async def add_source(self, source: CaptureSource) -> None:
        """Start another capture source (one that needs the guest up, such as DebugView)."""
        await source.start(self.capture)
        self.sources.append(source)

    async def _wait_ready(self, machine: Machine) -> None:
        budget = self.config.timeouts.boot
        marker = machine.profile.ready_marker
        if marker is not None:
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
        access_for(self.config, machine.profile, machine.forwards).write(self.run_dir.path)
        return guest

    async def call(self, function: Callable[..., T], *args: object, timeout: float, what: str) -> T:
        """Run a blocking guest operation in a worker thread, ending early if the VM dies or crashes.

        ``function`` must have its own deadline too: a worker thread cannot be cancelled.
        """
        machine = self._require_machine()
        return await machine.wait(asyncio.to_thread(function, *args), timeout, what)

    async def wait(self, awaitable: Awaitable[T], timeout: float, what: str) -> T:
        """Wait for ``awaitable`` with a deadline, ending early if the VM dies or crashes."""
        return await self._require_machine().wait(awaitable, timeout, what)

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
            for source in reversed(self.sources):
                try:
                    await source.stop()
                except Exception as problem:  # a capture that fails to stop must not hide the run's outcome
                    log.warning("capture source %s did not stop cleanly: %s", source.name, problem)
            if self.guest is not None:
                await asyncio.to_thread(self.guest.close)
            if self.machine is not None:
                with self.progress.phase("shutdown", "stopping the VM"):
                    self.shutdown_report = await self.machine.shutdown()
        finally:
            if self.machine is not None:
                self.machine.kill_now()
            self.capture.close()
            logging.getLogger("vmtest").removeHandler(self._log_handler)
            self._log_handler.close()


def _attach_run_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("vmtest")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.DEBUG:
        root.setLevel(logging.DEBUG)
    return handler
