"""The whole pipeline, top to bottom: config → boot → connect → deploy → load → capture → verdict → report.

:func:`run` is the one call from a configuration to its reports; the CLI (``vmtest run``), ``-j`` and
the pytest plugin are faces over the pieces below. Nothing here asks which kind of guest it has: the
session, the guest's transport and driver lifecycle (:mod:`vmtest.guests`) and the capture sources
answer for it.

Three kinds of test driver (``suite.mode``, see :func:`resolve_mode`):

* ``protocol``: the driver speaks vmtest's event protocol; the scenario selection goes in as driver
  parameters and the run ends when every requested scenario has ended.
* ``text``: the driver prints its own pass/fail lines (``verdict.text``); only ``driver.parameters``
  go in. The run ends as soon as the suite's outcome is known, or once loading returned and the kernel
  printed nothing new for ``suite.quiet_seconds``.
* ``smoke``: load, run ``suite.exerciser`` in the guest, wait for a quiet kernel, unload; it passes
  when all of that succeeded and the kernel reported nothing (:mod:`vmtest.verdict.smoke`).

A driver whose entry point fails by design (``driver.expect_entry_failure``) is judged from what it
printed: its :class:`~vmtest.errors.EntryPointFailed` is a note, and there is nothing to unload.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TextIO, TypeVar

from vmtest import resources
from vmtest.capture.source import CapturedLine, CaptureEvent
from vmtest.config import load_config
from vmtest.config.models import SuiteMode, VmtestConfig
from vmtest.config.verifier import VerifierConfig
from vmtest.config.windows import Windows11GuestConfig
from vmtest.drivers.kbuild import build_module
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.drivers.linux import module_parameters
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
from vmtest.errors import (
    EXIT_INFRA,
    EXIT_TEST_FAILURE,
    ConfigError,
    DeadlineExceeded,
    DriverError,
    EntryPointFailed,
    GuestCrashed,
    GuestError,
    InfraError,
)
from vmtest.events.protocol import Event, ProtocolError, parse_line
from vmtest.events.scenarios import DEFAULT_SCENARIOS
from vmtest.guests import Guest
from vmtest.images.linux import default_cache_root
from vmtest.loop import run_main
from vmtest.machine.confine import confinement_warnings
from vmtest.machine.profiles.linux import LinuxProfile
from vmtest.probe import ensure_probed
from vmtest.progress import Progress, make_progress
from vmtest.report.github import write_github
from vmtest.report.html import LockEdge, write_html
from vmtest.report.junit import write_junit
from vmtest.report.model import FindingReport, RunReport, ScenarioReport
from vmtest.session import VmSession
from vmtest.verdict.analyze import judge_lines
from vmtest.verdict.crashes import WINDOWS_SOURCES, Crash, CrashScanner, crash_from_qmp
from vmtest.verdict.kernel_reports import KernelReport, KernelReportScanner
from vmtest.verdict.lock_order import lock_edges
from vmtest.verdict.smoke import ExerciserResult, smoke_verdict
from vmtest.verdict.text import TextVerdictConfig, TextVerdictReader
from vmtest.verdict.verdict import RunVerdict

__all__ = [
    "EXIT_INTERRUPTED",
    "DriverRun",
    "EventCollector",
    "OutputWatch",
    "RunOutcome",
    "RunRequest",
    "RunResult",
    "confirm_verifier",
    "deploy",
    "judge_outcome",
    "package_for",
    "parameters_for",
    "resolve_mode",
    "run",
    "run_driver",
    "run_pipeline",
    "run_scenarios",
    "switch_verifier_on",
    "verdict_of",
    "write_reports",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

LINUX_TEST_MODULE = resources.LINUX_TEST_MODULE.path()
MAX_PROBLEMS = 100  # protocol problems kept (a guest may print endless malformed lines)
MAX_PROBLEM_TEXT = 500
EXIT_INTERRUPTED = 130
_PROTOCOL_PARAMETER = re.compile(r"\bmodule_param\w*\(\s*scenarios\s*,")


# --------------------------------------------------------------------------------------------------
# What was asked, and what came of it
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    """What the user asked ``vmtest run`` for, on top of the configuration."""

    driver: Path | None = None
    scenarios: tuple[str, ...] = ()
    keep_vm_for: float | None = None
    mode: SuiteMode = "protocol"


@dataclass
class DriverRun:
    """What one load of a text or smoke driver produced, besides its lines."""

    ended_by: str = ""
    entry_failure: EntryPointFailed | None = None
    reports: list[KernelReport] = field(default_factory=list)
    dropped_reports: int = 0
    exerciser: ExerciserResult | None = None
    notes: list[str] = field(default_factory=list)
    hung: bool = False


@dataclass
class RunOutcome:
    """Everything the verdict and the reports are made from."""

    run_dir: Path
    requested: tuple[str, ...]
    mode: SuiteMode = "protocol"
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
    phases: dict[str, str] = field(default_factory=dict)
    ended_by: str = ""
    """What ended the wait for the driver's output: ``scenarios-ended``, ``run-end``, ``suite-result``,
    ``tests-ended`` or ``quiet``; empty when it did not end (a failure, a hang)."""
    driver_run: DriverRun = field(default_factory=DriverRun)


@dataclass(frozen=True)
class RunResult:
    """A whole run, from configuration to reports: what :func:`vmtest.run` returns."""

    verdict: RunVerdict
    status: str
    """``passed``, ``failed``, ``infrastructure`` (retry), ``interrupted``, ``nothing`` (an empty shard)."""
    phases: Mapping[str, str]
    """Each phase the run went through, in order, and how it ended (``passed``, ``failed``, ``running``)."""
    reports: Mapping[str, Path]
    """The reports written: ``verdicts``, ``junit``, ``html``, ``config`` (and ``junitxml`` if asked)."""
    exit_code: int
    """0 passed, 1 a test failure, 3 an infrastructure failure, 130 interrupted."""
    run_dir: Path | None
    mode: SuiteMode = "protocol"
    message: str = ""
    """Why the run failed when no verdict says it (the driver did not load, QEMU died, ...)."""
    ended_by: str = ""

    @property
    def passed(self) -> bool:
        """Whether the run passed."""
        return self.status == "passed"


# --------------------------------------------------------------------------------------------------
# The one call
# --------------------------------------------------------------------------------------------------


def run(
    config: VmtestConfig | Path | str | None = None,
    *,
    driver: Path | str | None = None,
    scenarios: Sequence[str] = (),
    artifacts: Path | str | None = None,
    jobs: int = 1,
    warm: bool | None = None,
    shard: str | None = None,
    junitxml: Path | str | None = None,
    keep_vm: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Boot, deploy, load, capture, unload, judge and report: one run from configuration to reports.

    ``config`` is a loaded configuration or a ``vmtest.yaml`` path (None: ``./vmtest.yaml`` if there is
    one, else the Linux self-test defaults). ``scenarios`` (protocol mode) are names or comma-separated
    lists of names; ``shard`` is ``I/N``; ``jobs`` VMs run at once (protocol mode: the scenarios are
    spread over them; text and smoke modes load the driver once, on one VM). Test and infrastructure
    failures are in the result, never raised; bad input raises :class:`~vmtest.errors.ConfigError`.

    Example::

        import vmtest

        result = vmtest.run("vmtest.yaml", driver="build/my_driver.ko")
        print(result.status, result.exit_code)      # passed 0
        for test in result.verdict.scenarios:
            print(test.name, test.status)
        print(result.reports["html"])               # <run_dir>/report.html
    """
    config = _configured(config, artifacts, warm)
    if jobs < 1 or (jobs > 1 and keep_vm):
        raise ConfigError(f"-j {jobs}: give at least 1 VM, and only 1 with --keep-vm")
    driver_path = Path(driver) if driver is not None else None
    mode = resolve_mode(config, driver_path)
    selected = _selection(config, mode, driver_path, scenarios, shard)
    if not selected:
        nothing = f"shard {shard} has nothing to run"
        return RunResult(RunVerdict(()), "nothing", {}, {}, 0, None, mode, nothing)
    request = RunRequest(driver_path, selected, 3600.0 if keep_vm else None, mode)
    own_progress = progress is None
    progress = progress or make_progress()
    started = time.monotonic()
    try:
        if jobs > 1 and mode == "protocol":
            from vmtest.parallel import merge_outcomes, merge_verdicts, run_parallel  # builds on this module

            runs = _in_event_loop(run_parallel(config, request, progress, jobs))
            outcome = merge_outcomes(runs)
            verdict = merge_verdicts([judge_outcome(config, item) for item in runs.outcomes])
        else:
            if jobs > 1:
                progress.note(f"{mode} mode loads the driver once: one VM, not {jobs}")
            outcome = _in_event_loop(run_pipeline(config, request, progress))
            verdict = judge_outcome(config, outcome)
    finally:
        if own_progress:
            progress.close()
    report = report_of(config, request, outcome, verdict, time.monotonic() - started)
    reports = write_reports(config, outcome, verdict, report, Path(junitxml) if junitxml else None)
    return RunResult(
        verdict=verdict,
        status=report.status,
        phases=dict(outcome.phases),
        reports=reports,
        exit_code=exit_code_of(outcome, verdict),
        run_dir=outcome.run_dir,
        mode=mode,
        message=report.message,
        ended_by=outcome.ended_by,
    )


def _configured(
    config: VmtestConfig | Path | str | None, artifacts: Path | str | None, warm: bool | None
) -> VmtestConfig:
    if not isinstance(config, VmtestConfig):
        config = load_config(Path(config) if config is not None else None)
    if artifacts is not None:
        config = config.model_copy(update={"artifacts": Path(artifacts)})
    if warm is not None:
        config = config.model_copy(update={"machine": config.machine.model_copy(update={"warm": warm})})
    return config


def _in_event_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` in a fresh event loop (SIGTERM cancels it, when this is the main thread)."""
    if threading.current_thread() is threading.main_thread():
        return run_main(coroutine)
    return asyncio.run(coroutine)


def resolve_mode(config: VmtestConfig, driver: Path | None = None) -> SuiteMode:
    """The suite mode: ``suite.mode`` if set; otherwise what the driver is.

    A driver speaks vmtest's protocol when it is the bundled one (no driver given), a Windows driver
    (vmtest cannot read its parameters), or a Linux module that declares a ``scenarios`` parameter: in
    its ``.modinfo`` for a ``.ko``, in a ``module_param*(scenarios, ...)`` of its C sources for a Kbuild
    folder. Any other module is one vmtest does not know: text mode when ``verdict.text`` describes its
    lines, else smoke.
    """
    if config.suite.mode is not None:
        return config.suite.mode
    package = driver or config.driver.package
    if package is None or isinstance(config.guest, Windows11GuestConfig) or _speaks_protocol(package):
        return "protocol"
    return "text" if config.verdict.text is not None else "smoke"


def _speaks_protocol(package: Path) -> bool:
    """Whether ``package`` declares a ``scenarios`` parameter; False when unreadable (deploy says why)."""
    try:
        if package.is_dir() and (package / "Kbuild").is_file():
            sources = sorted(package.glob("*.c"))
            return any(_PROTOCOL_PARAMETER.search(source.read_text(errors="replace")) for source in sources)
        modules = sorted(package.glob("*.ko")) if package.is_dir() else [package]
    except (OSError, ValueError):
        return False
    return any("scenarios" in module_parameters(module) for module in modules)


def _selection(
    config: VmtestConfig, mode: SuiteMode, driver: Path | None, scenarios: Sequence[str], spec: str | None
) -> tuple[str, ...]:
    """What runs: protocol mode's scenarios (this shard of them); text and smoke modes' one load."""
    from vmtest.cli_run import shard  # the share I/N lives with the command that takes --shard

    if mode == "protocol":
        named = tuple(name for item in scenarios for name in item.split(",") if name)
        wanted = named or config.suite.scenarios
        return shard(wanted or DEFAULT_SCENARIOS, spec)
    if scenarios:
        raise ConfigError(f"--scenario selects protocol scenarios; this driver runs in {mode} mode")
    return shard((_driver_label(config, driver),), spec)


def _driver_label(config: VmtestConfig, driver: Path | None) -> str:
    package = driver or config.driver.package
    return package.name.removesuffix(".ko") if package is not None else "wdk-mutex tests"


# --------------------------------------------------------------------------------------------------
# One VM: boot → connect → deploy → load → capture → unload
# --------------------------------------------------------------------------------------------------


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
        self.ended_by = ""
        self.notes: list[str] = []
        """Notes for the verdict (an entry point that failed as the configuration expected)."""
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
            self.ended_by = "run-end" if event.ev == "run-end" else "scenarios-ended"
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


class OutputWatch:
    """Follows a text or smoke driver's output: when it has said all it will say, and the kernel's reports.

    The wait ends when the text verdict's outcome is known (:meth:`TextVerdictReader.settled`), or once
    loading returned (:meth:`loaded`) and no line arrived for ``quiet`` seconds.
    """

    def __init__(self, text: TextVerdictConfig | None, quiet: float) -> None:
        self.reader = TextVerdictReader(text) if text is not None else None
        self.scanner = KernelReportScanner()
        self.quiet = quiet
        self.lines = 0
        self._last_output = time.monotonic()
        self._loaded_at: float | None = None
        self._settled = asyncio.Event()

    def take(self, line: CapturedLine) -> None:
        """Capture listener: one more line of output."""
        self.lines += 1
        self._last_output = time.monotonic()
        self.scanner.feed(line.text, self.lines)
        if self.reader is not None:
            self.reader.feed(line.text, self.lines)
            if self._loaded_at is not None and self.reader.settled():
                self._settled.set()

    def loaded(self) -> None:
        """Loading (or the exerciser) returned: the quiet period counts from now at the latest."""
        self._loaded_at = time.monotonic()

    async def ended(self) -> str:
        """Wait for the output to end; say what ended it (``suite-result``, ``tests-ended``, ``quiet``)."""
        while True:
            settled = self.reader.settled() if self.reader is not None else None
            if settled is not None:
                return settled
            since = max(self._last_output, self._loaded_at or time.monotonic())
            remaining = self.quiet - (time.monotonic() - since)
            if remaining <= 0:
                return "quiet"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._settled.wait(), remaining)


async def run_pipeline(config: VmtestConfig, request: RunRequest, progress: Progress) -> RunOutcome:
    """Run the configured driver in a fresh VM; never raises for test or infra failures.

    Infrastructure failures and driver failures are recorded in the outcome, with the phase they
    happened in, so that the verdict and the reports are always written.
    """
    requested = request.scenarios or config.suite.scenarios or DEFAULT_SCENARIOS
    session = VmSession(config, progress, label="run")
    outcome = RunOutcome(session.run_dir.path, tuple(requested), request.mode)
    collector = EventCollector(
        requested if request.mode == "protocol" else (),
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
        outcome.phases = dict(session.phases)
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
    if request.mode == "protocol":
        outcome.hung = await run_scenarios(
            session, guest, driver, parameters_for(config, outcome.requested), collector
        )
        outcome.ended_by = collector.ended_by
        outcome.driver_run.notes += collector.notes
    else:
        outcome.driver_run = await run_driver(session, guest, driver, package, request.mode)
        outcome.hung = outcome.driver_run.hung
        outcome.ended_by = outcome.driver_run.ended_by
    if outcome.hung:
        return  # a driver stuck in its load or its scenarios cannot be unloaded
    if verifier is not None:
        outcome.driver_run.notes.append(await confirm_verifier(session, guest, driver, verifier))
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


def parameters_for(config: VmtestConfig, scenarios: Sequence[str]) -> dict[str, str | int]:
    """Protocol mode's driver parameters: the scenario selection and counts, then the user's own."""
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
    """Protocol mode: load the driver, wait until its scenarios end, unload it; True if it hung.

    A scenario that never ends is the driver's failure (a hang), judged later from what was captured;
    a screenshot is taken and the driver is left loaded, since it cannot be unloaded. A driver whose
    entry point fails by design (``driver.expect_entry_failure``) has printed its events by then.
    """
    timeouts = session.config.timeouts
    count = len(collector.requested)
    entry_failure = None
    try:
        with session.step("load", f"loading {driver.name} with {count} scenario(s)"):
            entry_failure = await _load(session, guest, driver, parameters)
        if entry_failure is not None:
            collector.notes.append(_expected_failure_note(entry_failure))
        with session.step("capture", "waiting for every scenario to end"):
            await session.wait(collector.finished, timeouts.scenarios, "waiting for the scenarios to end")
    except DeadlineExceeded as hang:
        log.warning("%s", hang)
        await session.screenshot("hang")
        return True
    await session.screenshot("end")
    if entry_failure is None:
        with session.step("unload", f"unloading {driver.name}"):
            await session.call(
                guest.drivers.unload, driver, timeout=timeouts.command, what="unloading the driver"
            )
    await session.catch_up()  # what the driver printed up to its unload, for whoever judges this batch
    session.progress.note(f"captured {session.capture.lines_seen} lines, {len(collector.events)} events")
    return False


async def run_driver(
    session: VmSession, guest: Guest, driver: DeployedDriver, package: Path, mode: SuiteMode
) -> DriverRun:
    """Text and smoke modes: load (``driver.parameters``), exercise (smoke), wait for the output, unload.

    The wait ends when the suite's outcome is known (text mode), or once loading returned and the
    kernel was quiet for ``suite.quiet_seconds``; what ended it is :attr:`DriverRun.ended_by`. A load
    that never returns, or output that never stops, is a hang after ``timeouts.scenarios``.
    """
    config = session.config
    timeouts = config.timeouts
    result = DriverRun()
    watch = OutputWatch(config.verdict.text if mode == "text" else None, config.suite.quiet_seconds)
    session.capture.on_line(watch.take)
    try:
        try:
            with session.step("load", f"loading {driver.name} ({mode} mode)"):
                result.entry_failure = await _load(session, guest, driver, dict(config.driver.parameters))
            watch.loaded()
            if result.entry_failure is not None:
                result.notes.append(_expected_failure_note(result.entry_failure))
            elif config.driver.expect_entry_failure:
                result.notes.append("driver.expect_entry_failure is set, but the entry point succeeded")
            if mode == "smoke" and config.suite.exerciser and result.entry_failure is None:
                with session.step("exercise", f"running {config.suite.exerciser[0]} in the guest"):
                    exerciser = config.suite.exerciser
                    result.exerciser = await _exercise(session, guest, driver, package, exerciser)
                watch.loaded()
            with session.step("capture", f"waiting until {driver.name} has said all it will say"):
                result.ended_by = await session.wait(
                    watch.ended(), timeouts.scenarios, f"waiting for the output of {driver.name} to end"
                )
            log.info("the wait for the driver's output ended by: %s", result.ended_by)
            session.progress.note(f"output ended: {_ENDED_BY.get(result.ended_by, result.ended_by)}")
        except DeadlineExceeded as hang:
            log.warning("%s", hang)
            await session.screenshot("hang")
            result.hung = True
            return result
        await session.screenshot("end")
        if result.entry_failure is None:
            with session.step("unload", f"unloading {driver.name}"):
                await session.call(
                    guest.drivers.unload, driver, timeout=timeouts.command, what="unloading the driver"
                )
        await session.catch_up()
    finally:
        session.capture.remove_line_listener(watch.take)
        result.reports = list(watch.scanner.reports)
        result.dropped_reports = watch.scanner.dropped
    return result


_ENDED_BY = {
    "suite-result": "the suite's passed or failed line",
    "tests-ended": "every test that started has ended",
    "quiet": "the kernel printed nothing new for the quiet period",
}


def _expected_failure_note(failure: EntryPointFailed) -> str:
    expected = "the entry point failed, as driver.expect_entry_failure says it would"
    return f"{expected}: {failure}; nothing to unload"


async def _load(
    session: VmSession, guest: Guest, driver: DeployedDriver, parameters: Mapping[str, str | int]
) -> EntryPointFailed | None:
    """Load the driver; its entry point's failure is returned when the configuration expects it."""
    try:
        await session.call(
            guest.drivers.load, driver, parameters, timeout=session.config.timeouts.scenarios, what="loading"
        )
    except EntryPointFailed as failed:
        if not session.config.driver.expect_entry_failure:
            raise
        session.progress.note(f"the entry point failed, as expected: {failed}")
        return failed
    return None


async def _exercise(
    session: VmSession, guest: Guest, driver: DeployedDriver, package: Path, argv: Sequence[str]
) -> ExerciserResult:
    """Run the exerciser in the guest's package folder; a relative program is copied in from the package."""
    program, *arguments = argv
    folder = package if package.is_dir() else package.parent
    local = folder / program
    remote = program
    timeout = session.config.timeouts.command
    if ("/" in program or "\\" in program) and not Path(program).is_absolute() and local.is_file():
        windows = guest.shell == "cmd"
        remote = str((PureWindowsPath if windows else PurePosixPath)(driver.guest_dir, local.name))
        copy = functools.partial(guest.transport.put, local, remote, timeout=timeout)
        await session.call(copy, timeout=timeout + 5, what="copying the exerciser")
        if not windows:
            await session.call(
                functools.partial(guest.transport.run, ["chmod", "755", remote], timeout=timeout),
                timeout=timeout,
                what="making the exerciser executable",
            )
    command = [remote, *arguments]
    if guest.shell == "posix":
        in_folder = 'cd "$1" && shift && exec "$@"'
        command = ["sh", "-c", in_folder, "vmtest-exerciser", driver.guest_dir, *command]
    runs = functools.partial(guest.transport.run, command, timeout=timeout)
    done = await session.call(runs, timeout=timeout + 5, what="exercising")
    shown = " ".join(argv)
    session.progress.note(f"exerciser {shown}: exit {done.exit_code}")
    return ExerciserResult(shown, done.exit_code, done.text())


def _crash_fields(crash: GuestCrashed) -> dict[str, object]:
    data = getattr(crash.crash, "data", None)
    return {"data": data if isinstance(data, dict) else {}, "message": crash.message}


# --------------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------------


def judge_outcome(config: VmtestConfig, outcome: RunOutcome) -> RunVerdict:
    """The verdict of one VM's run, from its ``capture.log`` and what the pipeline recorded."""
    shot = str(outcome.screenshots[-1]) if outcome.screenshots else ""
    crashes = []
    for data in outcome.crash_data:
        event_data = data.get("data")
        crashes.append(crash_from_qmp(event_data if isinstance(event_data, dict) else {}, screenshot=shot))
    try:
        with (outcome.run_dir / "capture.log").open(encoding="utf-8", errors="replace") as lines:
            return verdict_of(config, outcome, lines, crashes)
    except FileNotFoundError:
        return verdict_of(config, outcome, [], crashes)


def verdict_of(
    config: VmtestConfig, outcome: RunOutcome, lines: Iterable[str], crashes: Sequence[Crash]
) -> RunVerdict:
    """The verdict of captured ``lines`` in the outcome's mode, with the crashes QEMU reported."""
    run = outcome.driver_run
    if outcome.mode == "smoke":
        scanner = CrashScanner()  # a bugcheck in the KD text; Linux reports are the kernel-report scanner's
        for lineno, line in enumerate(lines, 1):
            scanner.feed(line, lineno)
        windows = [crash for crash in scanner.crashes if crash.source in WINDOWS_SOURCES]
        error = outcome.driver_error
        return smoke_verdict(
            outcome.requested[0] if outcome.requested else "driver",
            reports=run.reports,
            crashes=[*windows, *crashes],
            driver_error=f"{outcome.phase}: {error}" if error is not None else "",
            driver_output=error.output if error is not None else "",
            exerciser=run.exerciser,
            notes=run.notes,
            dropped_reports=run.dropped_reports,
        )
    requested = outcome.requested if outcome.mode == "protocol" else ()
    verdict = judge_lines(lines, config.judging, requested, crashes)
    if run.notes:
        verdict = dataclasses.replace(verdict, notes=(*verdict.notes, *run.notes))
    return verdict


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def status_of(outcome: RunOutcome, verdict: RunVerdict) -> tuple[str, str]:
    """The run's status (``passed``, ``failed``, ``infrastructure``, ``interrupted``) and why."""
    if outcome.interrupted:
        return "interrupted", f"interrupted during {outcome.phase}"
    if outcome.infra_error is not None:
        return "infrastructure", str(outcome.infra_error)
    if outcome.driver_error is not None:
        detail = f"\n{outcome.driver_error.output}" if outcome.driver_error.output else ""
        return "failed", f"{outcome.phase}: {outcome.driver_error}{detail}"
    return ("passed", "") if verdict.passed else ("failed", "")


def exit_code_of(outcome: RunOutcome, verdict: RunVerdict) -> int:
    """The exit code CI acts on: 0 passed, 1 a test failure, 3 infrastructure, 130 interrupted."""
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    if outcome.infra_error is not None:
        return EXIT_INFRA
    if outcome.driver_error is not None or not verdict.passed:
        return EXIT_TEST_FAILURE
    return 0


def report_of(
    config: VmtestConfig, request: RunRequest, outcome: RunOutcome, verdict: RunVerdict, duration: float
) -> RunReport:
    """What every report shows: one testcase per scenario (protocol) or test (text), or the smoke test."""
    status, message = status_of(outcome, verdict)
    scenarios = [
        ScenarioReport(
            item.name,
            item.status,
            tuple(FindingReport(f.check, f.message, f.lines) for f in item.findings)
            + tuple(
                FindingReport("verifier" if c.violation else "crash", c.describe()) for c in item.crashes
            ),
        )
        for item in verdict.scenarios
    ]
    return RunReport(
        run_dir=outcome.run_dir,
        driver=_driver_label(config, request.driver),
        guest=config.guest.kind,
        scenarios=scenarios,
        status=status,
        message=message,
        duration=duration,
        screenshots=outcome.screenshots,
        capture_tail=outcome.capture_tail,
        crashes=[c.to_dict() for c in verdict.crashes],
        notes=list(verdict.notes),
        warnings=confinement_warnings(config.machine),
    )


def write_reports(
    config: VmtestConfig, outcome: RunOutcome, verdict: RunVerdict, report: RunReport, junitxml: Path | None
) -> dict[str, Path]:
    """Write every report, or none: half a set (a full disk) could claim a success the rest cannot show.

    When one cannot be written, those already written are removed, a short ``verdicts.json`` saying why
    is left if even that fits, and the run ends as an infrastructure failure (raised).
    """
    try:
        return _write_report_files(config, outcome, verdict, report, junitxml)
    except OSError as error:
        reports = [outcome.run_dir / name for name in ("verdicts.json", "junit.xml", "report.html")]
        for path in [*reports, *([junitxml] if junitxml is not None else [])]:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        message = f"cannot write the reports: {error.strerror or error}"
        if report.message:
            message += f" (the run had already failed: {report.message.splitlines()[0]})"
        document = {"status": "infrastructure", "message": message, "phase": "report"}
        try:
            reports[0].write_text(json.dumps(document) + "\n", encoding="utf-8")
        except OSError:
            with contextlib.suppress(OSError):
                reports[0].unlink(missing_ok=True)  # rather none than a cut one
        raise InfraError(message, phase="report", artifacts=outcome.run_dir) from None


def _write_report_files(
    config: VmtestConfig, outcome: RunOutcome, verdict: RunVerdict, report: RunReport, junitxml: Path | None
) -> dict[str, Path]:
    run_dir = outcome.run_dir
    paths = {
        "verdicts": run_dir / "verdicts.json",
        "config": run_dir / "config.json",
        "junit": run_dir / "junit.xml",
        "html": run_dir / "report.html",
    }
    document = {
        "status": report.status,
        "message": report.message,
        "mode": outcome.mode,
        "phase": outcome.phase,
        "phases": outcome.phases,
        "ended_by": outcome.ended_by,
        **({"warnings": report.warnings} if report.warnings else {}),
        **verdict.to_dict(),
    }
    paths["verdicts"].write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    paths["config"].write_text(json.dumps(config.redacted(), indent=2) + "\n", encoding="utf-8")
    write_junit(report, paths["junit"])
    if junitxml is not None:
        write_junit(report, junitxml)
        paths["junitxml"] = junitxml
    edges = [LockEdge(held, acquired, in_cycle) for held, acquired, in_cycle in lock_edges(outcome.events)]
    write_html(report, outcome.events, edges, paths["html"])
    write_github(report)
    return paths
