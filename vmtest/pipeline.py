"""The whole pipeline, top to bottom: boot → connect → deploy → load → capture → unload → verdict → report.

Nothing here asks which kind of guest it has: the session, the guest's transport and driver lifecycle,
and the capture sources answer for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import TextIO

from vmtest import resources
from vmtest.capture.source import CapturedLine, CaptureEvent
from vmtest.config.models import VmtestConfig
from vmtest.config.verifier import VerifierConfig
from vmtest.drivers.kbuild import build_module
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.drivers.verifier import (
    REGISTRY_QUERY,
    WINDOWS_REBOOT,
    already_set,
    enable_command,
    parse_query,
    parse_registry,
    run_verifier,
    verifier_confirmation,
)
from vmtest.errors import DeadlineExceeded, DriverError, GuestCrashed, GuestError, InfraError
from vmtest.events.protocol import Event, ProtocolError, parse_line
from vmtest.events.scenarios import DEFAULT_SCENARIOS
from vmtest.guest.connect import Guest
from vmtest.images.linux import default_cache_root
from vmtest.machine.profiles.linux import LinuxProfile
from vmtest.probe import ensure_probed
from vmtest.progress import Progress
from vmtest.session import VmSession

__all__ = [
    "EventCollector",
    "RunOutcome",
    "RunRequest",
    "deploy",
    "package_for",
    "parameters_for",
    "run_pipeline",
    "run_scenarios",
]

log = logging.getLogger(__name__)

LINUX_TEST_MODULE = resources.LINUX_TEST_MODULE.path()
MAX_PROBLEMS = 100  # protocol problems kept (a guest may print endless malformed lines)
MAX_PROBLEM_TEXT = 500


@dataclass(frozen=True)
class RunRequest:
    """What the user asked ``vmtest run`` for, on top of the configuration."""

    driver: Path | None = None
    scenarios: tuple[str, ...] = ()
    keep_vm_for: float | None = None


@dataclass
class RunOutcome:
    """Everything the verdict and the reports are made from."""

    run_dir: Path
    requested: tuple[str, ...]
    events: list[Event] = field(default_factory=list)
    protocol_problems: list[str] = field(default_factory=list)
    capture_events: list[CaptureEvent] = field(default_factory=list)
    crash_data: list[dict[str, object]] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    capture_tail: list[str] = field(default_factory=list)
    infra_error: InfraError | None = None
    driver_error: DriverError | None = None
    interrupted: bool = False
    hung: bool = False
    phase: str = "prepare"
    notes: list[str] = field(default_factory=list)
    """Facts the report states beside the verdict (Driver Verifier's rules in effect, ...)."""


class EventCollector:
    """Turns captured lines into protocol events as they arrive, and knows when the run has ended."""

    def __init__(
        self,
        requested: Sequence[str],
        events_file: Path,
        on_scenario_end: Callable[[Event], None] | None = None,
    ) -> None:
        self.requested = set(requested)
        self.on_scenario_end = on_scenario_end
        self.events: list[Event] = []
        self.problems: list[str] = []
        self.problem_count = 0
        self.ended: set[str] = set()
        self.finished = asyncio.get_running_loop().create_future()
        self._file: TextIO | None = open(events_file, "a", encoding="utf-8")  # noqa: SIM115
        self.write_error: OSError | None = None
        self._lineno = 0

    def take(self, line: CapturedLine) -> None:
        """Capture listener: parse one line, record any event in ``events.jsonl``."""
        self._lineno += 1
        try:
            event = parse_line(line.text, self._lineno)
        except ProtocolError as problem:
            self.problem_count += 1
            if len(self.problems) < MAX_PROBLEMS:
                self.problems.append(str(problem)[:MAX_PROBLEM_TEXT])
            return
        if event is None:
            return
        self.events.append(event)
        record = {"seq": event.seq, "ev": event.ev, **event.fields, "time": line.time, "source": line.source}
        if event.msg is not None:
            record["msg"] = event.msg
        self._write(json.dumps(record) + "\n")
        if event.ev == "scenario-end":
            self.ended.add(event.scenario)
            if self.on_scenario_end is not None:
                self.on_scenario_end(event)
        if (event.ev == "run-end" or self.requested <= self.ended) and not self.finished.done():
            self.finished.set_result(None)

    def _write(self, text: str) -> None:
        """Append to ``events.jsonl``; on a write error (a full disk) stop writing, but keep collecting."""
        if self._file is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as error:
            self.write_error = error
            self.close()

    def close(self) -> None:
        """Close ``events.jsonl``."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def parameters_for(config: VmtestConfig, scenarios: Sequence[str]) -> dict[str, str | int]:
    """Driver parameters: the scenario selection and counts, then the user's own."""
    suite = config.suite
    base: dict[str, str | int] = {
        "scenarios": ",".join(scenarios),
        "threads": suite.threads,
        "iterations": suite.iterations,
    }
    return {**base, **config.driver.parameters}


def package_for(config: VmtestConfig, request: RunRequest, session: VmSession) -> Path:
    """The driver package to deploy; a Kbuild source folder is built against the guest's headers first."""
    package = request.driver or config.driver.package
    profile = session.machine.profile if session.machine else None
    if package is None:
        if not isinstance(profile, LinuxProfile):
            raise DriverError(
                "no driver given: pass --driver PATH or set driver.package in the configuration"
            )
        package = LINUX_TEST_MODULE
    if package.is_dir() and (package / "Kbuild").is_file():
        if not isinstance(profile, LinuxProfile):
            raise DriverError(f"{package} is Linux module source, but the guest is not Linux")
        build_dir = session.run_dir.path / "build" / package.name
        return build_module(package, profile.image.headers, build_dir, cache=default_cache_root() / "kbuild")
    return package


async def run_pipeline(config: VmtestConfig, request: RunRequest, progress: Progress) -> RunOutcome:
    """Run the configured driver's scenarios in a fresh VM; never raises for test or infra failures.

    Infrastructure failures and driver failures are recorded in the outcome, with the phase they
    happened in, so that the verdict and the reports are always written.
    """
    requested = request.scenarios or config.suite.scenarios or DEFAULT_SCENARIOS
    session = VmSession(config, progress, label="run")
    outcome = RunOutcome(session.run_dir.path, tuple(requested))
    collector = EventCollector(
        requested,
        session.run_dir.path / "events.jsonl",
        lambda end: progress.note(f"scenario {end.scenario}: ended ({end.get('outcome', '?')})"),
    )
    session.capture.on_line(collector.take)
    session.capture.on_event(outcome.capture_events.append)
    try:
        async with session:
            await _drive(session, config, request, collector, outcome)
        outcome.phase = session.phase
    except GuestCrashed as crash:
        outcome.crash_data.append({"event": getattr(crash.crash, "name", ""), **_crash_fields(crash)})
        outcome.phase = crash.phase or session.phase
    except DriverError as error:
        outcome.driver_error = error
        outcome.phase = session.phase
    except InfraError as error:
        outcome.infra_error = error
        outcome.phase = error.phase or session.phase
    except (asyncio.CancelledError, KeyboardInterrupt):
        outcome.interrupted = True
        outcome.phase = session.phase
    finally:
        collector.close()
        outcome.events = collector.events
        outcome.protocol_problems = collector.problems
        outcome.screenshots = list(session.screenshots)
        outcome.capture_tail = session.capture.tail(40)
        unwritten = session.capture.write_error or collector.write_error
        if unwritten is not None and outcome.infra_error is None:
            # A verdict from a log cut short could claim a success that was never seen.
            outcome.infra_error = InfraError(
                f"the run directory could not be written ({unwritten.strerror or unwritten}), so its logs"
                " are incomplete and the run cannot be judged; free some space and run again",
                phase="capture",
                artifacts=session.run_dir.path,
            )
    return outcome


async def _drive(
    session: VmSession,
    config: VmtestConfig,
    request: RunRequest,
    collector: EventCollector,
    outcome: RunOutcome,
) -> None:
    guest = await session.connect()
    await ensure_probed(session, guest)  # a new Windows image: its assumptions, once, before any scenario
    with session.step("deploy", "copying the driver into the guest"):
        package = await asyncio.to_thread(package_for, config, request, session)
        driver = await deploy(session, guest, package)
    verifier = config.driver.verifier
    if verifier is not None:
        guest = await switch_verifier_on(session, guest, driver, verifier)
    await session.save_warm()
    outcome.hung = await run_scenarios(
        session, guest, driver, parameters_for(config, outcome.requested), collector
    )
    if outcome.hung:
        return  # a driver stuck in its load or its scenarios cannot be unloaded
    if verifier is not None:
        outcome.notes.append(await confirm_verifier(session, guest, driver, verifier))
    with session.step("remove", f"removing {driver.name}"):
        await session.call(
            guest.drivers.remove, driver, timeout=config.timeouts.command, what="removing the driver"
        )
    if request.keep_vm_for is not None:
        await session.keep(request.keep_vm_for)


async def switch_verifier_on(
    session: VmSession, guest: Guest, driver: DeployedDriver, verifier: VerifierConfig
) -> Guest:
    """Driver Verifier on for the deployed driver, before it loads: at once, or through one reboot.

    A guest restored from a warm snapshot taken after this step already has the rules (its registry
    says so) and is not rebooted again. Returns the guest, logged in again after a reboot.
    """
    name = PureWindowsPath(driver.guest_binary).name
    timeout = session.config.timeouts.command
    with session.step("verifier", f"Driver Verifier for {name}: {', '.join(verifier.names)}"):
        if await _verifier_in_effect(session, guest, name, verifier):
            session.progress.note(f"Driver Verifier already on for {name} (from the warm snapshot)")
            return guest
        await session.call(
            run_verifier,
            guest.transport,
            enable_command(verifier, name),
            "switching Driver Verifier on",
            timeout=timeout,
            what="switching Driver Verifier on",
        )
    if verifier.volatile:
        return guest
    return await session.reboot(WINDOWS_REBOOT, "rebooting so that Driver Verifier's rules take effect")


async def _verifier_in_effect(session: VmSession, guest: Guest, name: str, verifier: VerifierConfig) -> bool:
    """The rules are on already: in the registry for the next boot, or (volatile) in the running kernel."""
    timeout = session.config.timeouts.command
    if not verifier.volatile:
        shown = await session.call(
            run_verifier,
            guest.transport,
            REGISTRY_QUERY,
            "reading Driver Verifier's registry settings",
            timeout=timeout,
            what="reading Driver Verifier's settings",
        )
        return already_set(verifier, name, parse_registry(shown))
    shown = await session.call(
        run_verifier,
        guest.transport,
        ["verifier", "/query"],
        "verifier /query",
        timeout=timeout,
        what="reading what Driver Verifier applies",
    )
    try:
        state = parse_query(shown)
    except ValueError:
        return False  # nothing verified yet prints no Level line: switch the rules on
    return verifier.flags & ~state.level == 0 and name.lower() in state.drivers


async def confirm_verifier(
    session: VmSession, guest: Guest, driver: DeployedDriver, verifier: VerifierConfig
) -> str:
    """After the driver ran: ``verifier /query`` must show the rules and the driver as verified."""
    name = PureWindowsPath(driver.guest_binary).name
    shown = await session.call(
        run_verifier,
        guest.transport,
        ["verifier", "/query"],
        "verifier /query",
        timeout=session.config.timeouts.command,
        what="reading what Driver Verifier applied",
    )
    try:
        state = parse_query(shown)
    except ValueError as error:
        raise GuestError(str(error)) from None
    line = verifier_confirmation(verifier, name, state)
    session.progress.note(line)
    return line


async def deploy(session: VmSession, guest: Guest, package: Path) -> DeployedDriver:
    """Copy the driver package into the guest, reporting the bytes copied."""
    timeout = session.config.timeouts.command
    copied = [0]

    def progress(done: int, total: int) -> None:
        copied[0] = total

    driver = await session.call(
        functools.partial(guest.drivers.deploy, package, progress=progress),
        timeout=timeout,
        what="copying the driver",
    )
    if copied[0]:
        session.progress.note(f"copied {copied[0]} bytes of {driver.name} into the guest")
    return driver


async def run_scenarios(
    session: VmSession,
    guest: Guest,
    driver: DeployedDriver,
    parameters: dict[str, str | int],
    collector: EventCollector,
) -> bool:
    """Load the driver with ``parameters``, wait until its scenarios end, unload it; True if it hung.

    A scenario that never ends is the driver's failure (a hang), judged later from what was captured;
    a screenshot is taken and the driver is left loaded, since it cannot be unloaded.
    """
    timeouts = session.config.timeouts
    count = len(collector.requested)
    try:
        with session.step("load", f"loading {driver.name} with {count} scenario(s)"):
            await session.call(
                guest.drivers.load, driver, parameters, timeout=timeouts.scenarios, what="loading"
            )
        with session.step("capture", "waiting for every scenario to end"):
            await session.wait(collector.finished, timeouts.scenarios, "waiting for the scenarios to end")
    except DeadlineExceeded as hang:
        log.warning("%s", hang)
        await session.screenshot("hang")
        return True
    await session.screenshot("end")
    with session.step("unload", f"unloading {driver.name}"):
        await session.call(
            guest.drivers.unload, driver, timeout=timeouts.command, what="unloading the driver"
        )
        await session.catch_up()  # what the driver printed up to its unload, for whoever judges this batch
    session.progress.note(f"captured {session.capture.lines_seen} lines, {len(collector.events)} events")
    return False


def _crash_fields(crash: GuestCrashed) -> dict[str, object]:
    data = getattr(crash.crash, "data", None)
    return {"data": data if isinstance(data, dict) else {}, "message": crash.message}
