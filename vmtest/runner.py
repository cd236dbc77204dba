"""Scenarios on a VM that stays up: boot once, deploy the driver once, then load/judge/unload per batch.

The synchronous face of the pipeline, for the pytest plugin: one :class:`ScenarioRunner` per session
(per xdist worker). Each :meth:`ScenarioRunner.run` (protocol mode) or :meth:`ScenarioRunner.run_driver`
(text and smoke modes) captures only its own batch's lines and judges them with the pipeline's
:func:`~vmtest.pipeline.verdict_of`, so a failure in one test never leaks into the next;
:meth:`ScenarioRunner.reset` returns the whole guest to a RAM snapshot taken once it was up (and again
once the driver was copied in).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmtest.capture.source import CapturedLine
from vmtest.config.models import VmtestConfig
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.errors import DriverError, GuestCrashed
from vmtest.events.protocol import Event
from vmtest.facade import BackgroundSession
from vmtest.guests import Guest
from vmtest.pipeline import (
    EventCollector,
    RunOutcome,
    RunRequest,
    package_for,
    parameters_for,
    resolve_mode,
    run_driver,
    run_scenarios,
    switch_verifier_on,
    verdict_of,
)
from vmtest.progress import PlainProgress
from vmtest.verdict.crashes import Crash, crash_from_qmp
from vmtest.verdict.verdict import RunVerdict, ScenarioVerdict

__all__ = ["ScenarioResult", "ScenarioRunner"]


@dataclass(frozen=True)
class ScenarioResult:
    """What one batch of scenarios produced: its events, its verdict, and where the evidence is."""

    events: tuple[Event, ...]
    verdict: RunVerdict
    run_dir: Path
    capture_lines: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Every scenario of the batch passed."""
        return self.verdict.passed

    def scenario(self, name: str) -> ScenarioVerdict:
        """One scenario's verdict."""
        for item in self.verdict.scenarios:
            if item.name == name:
                return item
        raise KeyError(name)

    def report(self) -> str:
        """The human verdict, with where the logs are."""
        return f"{self.verdict.render()}\nartifacts: {self.run_dir}"


class ScenarioRunner:
    """A booted, logged-in guest that runs batches of scenarios of one driver."""

    def __init__(self, config: VmtestConfig, *, driver: Path | None = None) -> None:
        self.config = config
        self.mode = resolve_mode(config, driver)
        """The suite mode: ``suite.mode``, or what the driver is (:func:`~vmtest.pipeline.resolve_mode`)."""
        self.request = RunRequest(driver=driver, mode=self.mode)
        self.background = BackgroundSession(config, PlainProgress())
        self._guest: Guest | None = None
        self._driver: DeployedDriver | None = None
        self._package: Path | None = None
        self._batch = itertools.count(1)

    @property
    def run_dir(self) -> Path:
        """The session's run directory."""
        return self.background.session.run_dir.path

    @property
    def guest(self) -> Guest:
        """The logged-in guest."""
        if self._guest is None:
            raise RuntimeError("the runner is not started")
        return self._guest

    def start(self) -> None:
        """Boot and log in; then snapshot the guest for :meth:`reset`, unless it started from one."""
        self._guest = self.background.start()
        if self.background.session.snapshot is None:
            self._checkpoint()

    def reset(self) -> None:
        """Return the guest to its snapshot: clean, logged in, and with the driver if it was deployed.

        From a mapped warm entry the reset is a new QEMU restored from it (~0.1 s), and the driver is
        copied in again; otherwise the VM returns to the snapshot taken after the deploy.
        """
        session = self.background.session
        self.background.run(session.restore(), self.config.timeouts.boot + 60)
        if session.restarts_from_entry and self._driver is not None:
            self._driver = None
            self.deploy()

    def deploy(self) -> DeployedDriver:
        """Copy the driver into the guest (once), and snapshot that state for :meth:`reset`."""
        if self._driver is None:
            session = self.background.session
            self._package = package_for(self.config, self.request, session)
            timeout = self.config.timeouts.command
            self._driver = self.background.call(
                self.guest.drivers.deploy, self._package, timeout=timeout, what="deploy"
            )
            verifier = self.config.driver.verifier
            if verifier is not None:  # on before any snapshot, so that reset() returns to it
                self._guest = self.background.run(
                    switch_verifier_on(session, self.guest, self._driver, verifier),
                    self.config.timeouts.boot + timeout,
                )
            self.background.run(session.save_warm(), self.config.timeouts.boot + 30)
            if not session.restarts_from_entry:  # a restart from the entry is faster than a checkpoint
                self._checkpoint()
        return self._driver

    def _checkpoint(self) -> None:
        session = self.background.session
        if session.machine is not None and session.machine.profile.snapshot_nodes:
            self.background.run(session.checkpoint(), self.config.timeouts.boot + 30)

    def run(self, scenarios: Sequence[str], params: Mapping[str, str | int] | None = None) -> ScenarioResult:
        """Protocol mode: load the driver for ``scenarios``, wait for them to end, unload, judge the batch."""
        if self.mode != "protocol":
            raise RuntimeError(f"this driver runs in {self.mode} mode: call run_driver(), not run(scenarios)")
        driver = self.deploy()
        session = self.background.session
        number = next(self._batch)
        lines: list[str] = []
        qmp_crashes: list[Crash] = []

        def keep(line: CapturedLine) -> None:
            lines.append(line.text)

        async def batch() -> list[Event]:
            collector = EventCollector(scenarios, self.run_dir / f"events-{number}.jsonl")
            session.capture.on_line(collector.take)
            session.capture.on_line(keep)
            parameters = {**parameters_for(self.config, scenarios), **(params or {})}
            try:
                await run_scenarios(session, self.guest, driver, parameters, collector)
            except GuestCrashed as crash:
                data = getattr(crash.crash, "data", {})
                shot = str(crash.screenshot or "")
                qmp_crashes.append(crash_from_qmp(data if isinstance(data, dict) else {}, screenshot=shot))
            finally:
                session.capture.remove_line_listener(collector.take)
                session.capture.remove_line_listener(keep)
                collector.close()
            return collector.events

        events = self.background.run(batch(), self.config.timeouts.scenarios * 2 + 120)
        outcome = RunOutcome(self.run_dir, tuple(scenarios), "protocol")
        verdict = verdict_of(self.config, outcome, lines, qmp_crashes)
        return ScenarioResult(tuple(events), verdict, self.run_dir, tuple(lines))

    def run_driver(self) -> ScenarioResult:
        """Text and smoke modes: load the driver once, wait for its output to end, unload it, and judge that.

        A load the driver's configuration does not expect to fail is a failed verdict (smoke) or raises
        its :class:`~vmtest.errors.DriverError` (text), as ``vmtest run`` reports it.
        """
        if self.mode == "protocol":
            raise RuntimeError("this driver speaks the protocol: call run(scenarios)")
        driver = self.deploy()
        assert self._package is not None
        package = self._package
        session = self.background.session
        lines: list[str] = []
        qmp_crashes: list[Crash] = []
        outcome = RunOutcome(self.run_dir, (driver.name,), self.mode)

        def keep(line: CapturedLine) -> None:
            lines.append(line.text)

        async def load() -> None:
            session.capture.on_line(keep)
            try:
                outcome.driver_run = await run_driver(session, self.guest, driver, package, self.mode)
                outcome.ended_by = outcome.driver_run.ended_by
            except GuestCrashed as crash:
                data = getattr(crash.crash, "data", {})
                shot = str(crash.screenshot or "")
                qmp_crashes.append(crash_from_qmp(data if isinstance(data, dict) else {}, screenshot=shot))
            except DriverError as error:
                if self.mode != "smoke":
                    raise
                outcome.driver_error = error
                outcome.phase = session.phase
            finally:
                session.capture.remove_line_listener(keep)

        self.background.run(load(), self.config.timeouts.scenarios * 2 + 120)
        verdict = verdict_of(self.config, outcome, lines, qmp_crashes)
        return ScenarioResult((), verdict, self.run_dir, tuple(lines))

    def capture_tail(self, count: int) -> list[str]:
        """The last lines the guest printed."""
        return self.background.session.capture.tail(count)

    def close(self) -> None:
        """Shut the VM down."""
        self.background.close()
