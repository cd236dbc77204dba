"""One QEMU process and its QMP connection, from a stopped CPU to a bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vmtest.config.models import MachineConfig, Timeouts
from vmtest.errors import (
    DeadlineExceeded,
    GuestCrashed,
    GuestUnreachable,
    InfraError,
    MachineExited,
    MonitorError,
    QemuStartError,
)
from vmtest.machine.confine import Confinement, bound_for_signal
from vmtest.machine.console import SerialConsole
from vmtest.machine.hostfiles import HostFiles
from vmtest.machine.monitor import Monitor, QmpEvent
from vmtest.machine.ports import LOOPBACK, free_loopback_port
from vmtest.machine.process import find_qemu, spawn_bound_to_parent
from vmtest.machine.profiles.base import LaunchContext, Profile
from vmtest.machine.rundir import RunDirectory

__all__ = ["CRASH_EVENTS", "Machine", "ShutdownReport"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CRASH_EVENTS = ("GUEST_PANICKED", "GUEST_CRASHLOADED")
_FORWARD_ATTEMPTS = 20
_QUIT_WAIT = 5.0
_SIGNAL_WAIT = 5.0
_SERIAL_BUFFER = 8 * 1024 * 1024
CONSOLE_ROLE = "console"
_GONE_WAIT = 1.0  # how long a failed guest operation waits to learn whether QEMU died under it


@dataclass(frozen=True)
class ShutdownReport:
    """How the VM ended: the ladder step that stopped QEMU and its exit status."""

    step: str
    returncode: int | None


class Machine:
    """Owns one QEMU process: starts it stopped, wires QMP and the serial ports, then lets it run.

    Every wait goes through :meth:`wait`, which ends with an error naming the cause when QEMU exits,
    the QMP link drops or the guest crashes, so nothing ever waits on a dead VM.
    """

    def __init__(
        self,
        profile: Profile,
        machine: MachineConfig,
        timeouts: Timeouts,
        run_dir: RunDirectory,
        *,
        accel: str,
    ) -> None:
        self.profile = profile
        self.config = machine
        self.timeouts = timeouts
        self.run_dir = run_dir
        self.accel = accel
        self.confinement = Confinement.from_config(machine)
        profile.confinement = self.confinement
        self.monitor = Monitor("vmtest", run_dir.events_log, timeouts.qmp_command)
        self.consoles: dict[str, SerialConsole] = {}
        self.serial_sockets: dict[str, socket.socket] = {}
        self.forwards: dict[str, int] = {}
        self.process: asyncio.subprocess.Process | None = None
        self.crash: QmpEvent | None = None
        self._exited: asyncio.Task[int] | None = None
        self._crashed: asyncio.Future[QmpEvent] | None = None
        self._io_stopped: asyncio.Future[QmpEvent] | None = None
        self._console_starts: dict[str, int] = {}
        self.throwaway = False
        """The guest's disk is discarded after the run: :meth:`shutdown` ends QEMU with ``quit`` at once."""
        self.preferred_ports: dict[str, int] = {}
        """Host ports to try first for the forwards (a VM restarted in place keeps its predecessor's)."""

    # ----------------------------------------------------------------------------------- start

    async def start(self, prelaunch: Callable[[Machine], Awaitable[None]] | None = None) -> None:
        """Start QEMU with its CPU stopped, connect QMP and the serial ports, add forwards, then run.

        ``prelaunch`` runs while the CPU is still stopped: capture sources attach there, so they see
        the guest's very first output.
        """
        qemu = find_qemu(self.config.qemu)
        overlays = await self._make_overlays()
        qmp_ours, qmp_theirs = socket.socketpair()
        serial_pairs = {role: _serial_pair() for role in self.raw_serial_roles}
        for role in self.text_serial_roles:  # made before QEMU opens it, so a reader can follow it at once
            path = self.run_dir.serial_log(role)
            path.touch(mode=0o600)
            # A QEMU restarted in the same run directory appends: its reader starts after the old output.
            self._console_starts[role] = path.stat().st_size
        files = HostFiles(pass_descriptors=True)
        try:
            args = self.command_line(
                qemu,
                overlays,
                qmp_theirs.fileno(),
                {r: p[1].fileno() for r, p in serial_pairs.items()},
                files=files,
            )
            self.run_dir.command_file.write_text("\n".join(args) + "\n" + _legend(files))
            log.info("starting QEMU (%s): %s", self.confinement.describe(), " ".join(args))
            for warning in self.confinement.warnings():
                log.warning("%s", warning)
            self.process = await spawn_bound_to_parent(
                args,
                log=self.run_dir.qemu_log,
                pass_fds=[qmp_theirs.fileno(), *(p[1].fileno() for p in serial_pairs.values()), *files.fds],
                confinement=self.confinement,
            )
        except OSError as error:
            raise QemuStartError(
                f"cannot open {error.filename or 'a file'} for QEMU: {error.strerror}", phase="boot"
            ) from None
        finally:
            files.close()
            qmp_theirs.close()
            for _, theirs in serial_pairs.values():
                theirs.close()
        self._exited = asyncio.create_task(self.process.wait(), name="qemu-exit")
        self._crashed = asyncio.get_running_loop().create_future()
        self._io_stopped = asyncio.get_running_loop().create_future()
        try:
            await self._connect(qmp_ours, {role: pair[0] for role, pair in serial_pairs.items()})
        except MachineExited:
            await self._raise_start_failure()
            raise
        await self._add_forwards()
        if prelaunch is not None:
            await prelaunch(self)
        await self.wait(self.monitor.execute("cont"), self.timeouts.qmp_command, "starting the guest's CPU")

    @property
    def text_serial_roles(self) -> tuple[str, ...]:
        """The serial ports QEMU writes into a file that vmtest follows (the text console)."""
        return tuple(role for role in self.profile.serial_roles if role == CONSOLE_ROLE)

    @property
    def raw_serial_roles(self) -> tuple[str, ...]:
        """The two-way serial ports, on a socket pair (the KD link): every port but the console."""
        return tuple(role for role in self.profile.serial_roles if role != CONSOLE_ROLE)

    def command_line(
        self,
        qemu: str,
        overlays: tuple[Path, ...],
        qmp_fd: int,
        serial_fds: Mapping[str, int],
        *,
        files: HostFiles | None = None,
    ) -> list[str]:
        """The full QEMU command line: what every guest shares, then the profile's part.

        ``serial_fds`` holds QEMU's end of each raw serial port's socket pair (see :attr:`raw_serial_roles`).
        ``files`` opens every host file QEMU needs and names it by descriptor; without it files are
        named by path (for keys and descriptions).
        """
        files = files if files is not None else HostFiles.described()
        args = [
            qemu,
            "-name", f"vmtest-{self.run_dir.path.name},debug-threads=on",
            *self.confinement.qemu_args(),
            "-S", "-nodefaults", "-no-user-config", "-display", "none",
            "-accel", self.accel,
            "-m", str(self.config.memory_mib),
            "-smp", str(self.config.cpus),
            "-chardev", f"socket,id=qmp,fd={qmp_fd}",
            "-mon", "chardev=qmp,mode=control",
            # A guest panic pauses the VM so that the screen can be captured; a reboot ends QEMU.
            "-action", "panic=pause",
            "-action", "reboot=shutdown",
            # User networking with no route out: the guest reaches nothing but the forwards added below.
            "-netdev", "user,id=net0,restrict=on",
        ]  # fmt: skip
        for index, role in enumerate(self.profile.serial_roles):
            log_path = self.run_dir.serial_log(role)
            if role in self.text_serial_roles:
                args += ["-chardev", f"file,id=serial{index},path={files.output(log_path)},append=on"]
            else:
                fd = serial_fds[role]
                logfile = files.output(log_path)
                args += ["-chardev", f"socket,id=serial{index},fd={fd},logfile={logfile},logappend=on"]
            args += ["-serial", f"chardev:serial{index}"]
        context = LaunchContext(accel=self.accel, overlays=overlays, run_dir=self.run_dir.path, files=files)
        guest = self.profile.qemu_args(context)
        return [args[0], *files.add_fd_args(), *args[1:], *guest, *self.config.extra_args]

    async def _make_overlays(self) -> tuple[Path, ...]:
        overlays = []
        for index, base in enumerate(self.profile.base_disks):
            if not base.is_file():
                raise QemuStartError(f"disk image {base} does not exist", phase="boot")
            overlay = self.run_dir.overlay(index)
            fmt = "qcow2" if base.suffix == ".qcow2" else "raw"
            await _run_tool(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    str(base.resolve()),
                    "-F",
                    fmt,
                    str(overlay),
                ]
            )
            overlays.append(overlay)
        return tuple(overlays)

    async def _connect(self, qmp: socket.socket, serials: dict[str, socket.socket]) -> None:
        await self.wait(
            self.monitor.connect(qmp, self.timeouts.qmp_command),
            self.timeouts.qmp_command,
            "connecting to QMP",
        )
        self.monitor.add_listener(self._note_crash)
        for role in self.text_serial_roles:
            console = SerialConsole(role)
            console.follow(
                self.run_dir.serial_log(role), lambda: self.running, start=self._console_starts.get(role, 0)
            )
            self.consoles[role] = console
        self.serial_sockets.update(serials)  # raw ports (the KD link) belong to their capture source
        status = await self.monitor.execute("query-status")
        if status.get("status") not in ("prelaunch", "inmigrate"):  # inmigrate: -incoming defer
            raise MonitorError(f"QEMU should be stopped before the guest runs, but its status is {status}")

    def _note_crash(self, event: QmpEvent) -> None:
        if event.name == "BLOCK_IO_ERROR" and event.data.get("action") == "stop":
            # QEMU paused the guest on a failed disk write (a full disk under the overlay): it will not
            # go on by itself, so every wait ends now instead of at its deadline.
            log.warning("QEMU paused the guest on a disk I/O error: %s", event.data)
            if self._io_stopped is not None and not self._io_stopped.done():
                self._io_stopped.set_result(event)
            return
        if event.name not in CRASH_EVENTS:
            return
        log.warning("guest crash reported by QEMU: %s %s", event.name, event.data)
        self.crash = event
        if self._crashed is not None and not self._crashed.done():
            self._crashed.set_result(event)

    async def _raise_start_failure(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            assert self._exited is not None
            await asyncio.wait_for(asyncio.shield(self._exited), 5)
        tail = _tail(self.run_dir.qemu_log)
        hint = ""
        if "cannot allocate memory" in tail.lower() and self.confinement.bounds.address_space is not None:
            hint = (
                f" (the address-space bound: {self.confinement.bounds.address_space >> 20} MiB = "
                "machine.memory_mib + machine.limits.memory_overhead_mib, RLIMIT_AS)"
            )
        raise QemuStartError(f"QEMU did not start: {tail or 'see qemu.log'}{hint}", phase="boot")

    async def _add_forwards(self) -> None:
        for name, guest_port in self.profile.forwards.items():
            for attempt in range(_FORWARD_ATTEMPTS):
                preferred = self.preferred_ports.get(name)
                port = preferred if attempt == 0 and preferred else free_loopback_port()
                rule = f"tcp:{LOOPBACK}:{port}-:{guest_port}"
                try:
                    await self.monitor.hmp(f"hostfwd_add net0 {rule}")
                except MonitorError as error:  # hmp raises for QEMU's "Could not set up host forwarding"
                    if "could not set up host forwarding" not in str(error).lower():
                        raise
                    log.info("host port %d was taken, trying another", port)
                    continue
                self.forwards[name] = port
                log.info("forward %s: %s:%d -> guest port %d", name, LOOPBACK, port, guest_port)
                break
            else:
                raise InfraError(
                    f"no free host port for the {name} forward after {_FORWARD_ATTEMPTS} tries", phase="boot"
                )

    # ----------------------------------------------------------------------------------- waits

    @property
    def running(self) -> bool:
        """True while the QEMU process is alive."""
        return self.process is not None and self.process.returncode is None

    async def wait(
        self, awaitable: Awaitable[T], timeout: float, what: str, *, crash_ends_wait: bool = True
    ) -> T:
        """Await ``awaitable`` for at most ``timeout`` seconds.

        The wait ends early, with an error saying why, when QEMU exits, the QMP link drops or (unless
        ``crash_ends_wait`` is false) the guest crashes.
        """
        task = asyncio.ensure_future(awaitable)
        stoppers: list[asyncio.Future[Any]] = []
        if self._exited is not None:
            stoppers.append(self._exited)
        if self.monitor.connected:
            stoppers.append(asyncio.ensure_future(self.monitor.link_down.wait()))
        if crash_ends_wait and self._crashed is not None:
            stoppers.append(self._crashed)
        if self._io_stopped is not None:
            stoppers.append(self._io_stopped)
        try:
            done, _ = await asyncio.wait(
                {task, *stoppers}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # The waiter was interrupted (Ctrl-C, SIGTERM): the work waited for is abandoned too, so that
            # its later failure (a guest command cut off by the shutdown) is never reported as unretrieved.
            task.cancel()
            raise
        finally:
            for stopper in stoppers:
                if stopper not in (self._exited, self._crashed, self._io_stopped):
                    stopper.cancel()
        if task in done:
            failure = None if task.cancelled() else task.exception()
            broken = isinstance(failure, (GuestUnreachable, MachineExited, MonitorError))
            if broken and await self._died_within(_GONE_WAIT):
                # The guest or QMP link failed because QEMU died: say that, not what it broke.
                assert self._exited is not None
                returncode = self._exited.result()
                raise MachineExited(
                    f"QEMU exited ({_exit_reason(returncode)}) while {what}", returncode=returncode
                ) from failure
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if self._crashed is not None and self._crashed in done:
            event = self._crashed.result()
            raise GuestCrashed(f"the guest crashed ({_crash_summary(event)}) while {what}", crash=event)
        if self._io_stopped is not None and self._io_stopped in done:
            raise InfraError(
                f"QEMU paused the guest ({_io_error_summary(self._io_stopped.result())}) while {what}"
            )
        if self._exited is not None and self._exited.done():
            raise MachineExited(
                f"QEMU exited ({_exit_reason(self._exited.result())}) while {what}",
                returncode=self._exited.result(),
            )
        if any(s in done for s in stoppers):
            # The QMP link went down first; QEMU is exiting. Give it a moment so the error can say how.
            with contextlib.suppress(asyncio.TimeoutError):
                assert self._exited is not None
                await asyncio.wait_for(asyncio.shield(self._exited), 2)
            reason = (
                _exit_reason(self._exited.result())
                if self._exited and self._exited.done()
                else "QMP link dropped"
            )
            raise MachineExited(f"QEMU went away ({reason}) while {what}")
        raise DeadlineExceeded(f"{what}: not done within {timeout:.0f}s")

    async def wait_for_console(self, marker: str, timeout: float, what: str) -> None:
        """Wait until ``marker`` appears on the console serial port."""
        console = self.consoles["console"]
        await self.wait(console.marker(marker), timeout, what)

    # ----------------------------------------------------------------------------------- actions

    async def screenshot(self, label: str) -> Path | None:
        """Save the screen as PNG in the run directory; None (with a log line) if QEMU cannot."""
        path = self.run_dir.screenshot(label)
        if not self.monitor.connected:
            log.warning("no screenshot %r: the QMP connection is closed", label)
            return None
        try:
            await self._screendump(path)
        except (InfraError, OSError) as error:
            log.warning("no screenshot %r: %s", label, error)
            return None
        return path if path.exists() and path.stat().st_size > 0 else None

    async def _screendump(self, path: Path) -> None:
        """``screendump`` into a file vmtest opened and passed over QMP: QEMU cannot reach the run dir."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fdset: int | None = None
        try:
            fdset = await self.monitor.add_fd(fd, f"screenshot {path.name}")
            await self.monitor.execute("screendump", {"filename": f"/dev/fdset/{fdset}", "format": "png"})
        finally:
            os.close(fd)
            if fdset is not None:
                with contextlib.suppress(InfraError):
                    await self.monitor.execute("remove-fd", {"fdset-id": fdset})

    async def shutdown(self) -> ShutdownReport:
        """Stop QEMU by the gentlest step that works: guest power-off, QMP quit, SIGTERM, SIGKILL.

        A :attr:`throwaway` machine skips the power-off: nothing in its guest is worth a clean shutdown.
        """
        if self.process is None:
            return ShutdownReport("never started", None)
        report = await self._shutdown_ladder()
        await self.monitor.close()
        for console in self.consoles.values():
            await console.close()
        for sock in self.serial_sockets.values():
            sock.close()
        log.info("QEMU stopped by %s (exit status %s)", report.step, report.returncode)
        return report

    async def _shutdown_ladder(self) -> ShutdownReport:
        assert self.process is not None and self._exited is not None
        if self._exited.done():
            return ShutdownReport("already exited", self._exited.result())
        budget = self.timeouts.shutdown
        guest_can_act = not self.throwaway and self.crash is None and await self._guest_running()
        if guest_can_act:
            powerdown = min(self.profile.powerdown_timeout, budget / 2)
            with contextlib.suppress(InfraError):
                await self.monitor.execute("system_powerdown", timeout=min(5.0, powerdown))
                if await self._exit_within(powerdown):
                    return ShutdownReport("guest power-off", self.process.returncode)
        with contextlib.suppress(InfraError):
            if self.monitor.connected:
                await self.monitor.execute("quit", timeout=_QUIT_WAIT)
        if await self._exit_within(_QUIT_WAIT):
            return ShutdownReport("QMP quit", self.process.returncode)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        if await self._exit_within(_SIGNAL_WAIT):
            return ShutdownReport("SIGTERM", self.process.returncode)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self._exit_within(_SIGNAL_WAIT)
        return ShutdownReport("SIGKILL", self.process.returncode)

    async def _guest_running(self) -> bool:
        try:
            status = await self.monitor.execute("query-status", timeout=5)
        except InfraError:
            return False
        return bool(status.get("running"))

    async def _died_within(self, seconds: float) -> bool:
        """Whether QEMU (once started) has exited, or exits within ``seconds``."""
        return self._exited is not None and await self._exit_within(seconds)

    async def _exit_within(self, seconds: float) -> bool:
        assert self._exited is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), seconds)
        return self._exited.done()

    def kill_now(self) -> None:
        """SIGKILL QEMU at once (for signal handlers and last-resort cleanup)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)


def _serial_pair() -> tuple[socket.socket, socket.socket]:
    """A socket pair for a serial port, with QEMU's sending side as large as this user may make it.

    QEMU's UART gives up on a byte after a few failed writes to a full socket, so while vmtest's reader
    is starved of CPU the guest's output could lose characters; a big buffer makes that unlikely.
    """
    ours, theirs = socket.socketpair()
    for option in (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF):
        if option is None:
            continue
        try:
            theirs.setsockopt(socket.SOL_SOCKET, option, _SERIAL_BUFFER)
            break
        except OSError:
            continue  # SO_SNDBUFFORCE needs CAP_NET_ADMIN; SO_SNDBUF is capped by net.core.wmem_max
    return ours, theirs


def _crash_summary(event: QmpEvent) -> str:
    info = event.data.get("info")
    if isinstance(info, dict) and info.get("type") == "hyper-v":
        return f"{event.name}, stop code {int(info.get('arg1', 0)):#x}"
    return event.name


def _io_error_summary(event: QmpEvent) -> str:
    data = event.data
    text = f"{data.get('operation', 'I/O')} error on its disk {data.get('node-name') or data.get('device')}"
    reason = str(data.get("reason", "unknown reason"))
    text += f": {reason}"
    if data.get("nospace"):
        text += "; the disk that holds the run directory is full"
    elif "file too large" in reason.lower():
        text += "; the disk overlay reached its size bound (machine.limits.disk_mib, RLIMIT_FSIZE)"
    return text


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"killed by signal {-returncode}"
        bound = bound_for_signal(-returncode)
        return f"killed by {name}: {bound}" if bound else f"killed by {name}"
    return f"exit status {returncode}"


def _legend(files: HostFiles) -> str:
    """The descriptor names of the command line, as comment lines for people."""
    return "".join(f"# {line}\n" for line in files.describe().splitlines())


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


async def _run_tool(args: list[str], timeout: float = 60) -> None:
    try:
        process = await asyncio.create_subprocess_exec(
            *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except OSError as error:
        raise QemuStartError(f"cannot run {args[0]}: {error} (install qemu-utils)", phase="boot") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise DeadlineExceeded(f"{args[0]} did not finish within {timeout:.0f}s", phase="boot") from None
    if process.returncode != 0:
        raise QemuStartError(
            f"{' '.join(args[:2])} failed: {output.decode(errors='replace').strip()}", phase="boot"
        )
