"""vmtest as a pytest plugin: one VM per session (per xdist worker), the driver deployed once.

Fixtures: ``vmtest_config``, ``vmtest_vm`` (a booted, logged-in :class:`ScenarioRunner`), ``vmtest_guest``,
``vmtest_clean_guest`` (the guest returned to its snapshot first), ``vmtest_driver``,
``run_scenario(name, **params)`` (protocol mode) and ``run_driver()`` (text and smoke modes: one load,
judged as ``vmtest run`` judges it). Marker: ``@pytest.mark.vmtest_guest("linux")``
runs a test only when the configured guest is of that kind. A failing test's report carries the tail
of the kernel capture and the run directory; the artifacts also go into JUnit as properties.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from vmtest.config import load_config
from vmtest.config.models import VmtestConfig
from vmtest.config.verifier import VerifierConfig
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.errors import VmtestError
from vmtest.guests import Guest
from vmtest.runner import ScenarioResult, ScenarioRunner

__all__ = ["ScenarioResult"]

_RUNNERS_KEY = pytest.StashKey[list[ScenarioRunner]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's command-line options."""
    group = parser.getgroup("vmtest", "kernel-driver tests in QEMU virtual machines (vmtest)")
    group.addoption(
        "--vmtest-config",
        type=Path,
        default=None,
        help="vmtest.yaml (default: ./vmtest.yaml or the Linux self-test guest)",
    )
    group.addoption("--vmtest-artifacts", type=Path, default=None, help="where run directories go")
    group.addoption("--vmtest-driver", type=Path, default=None, help="the driver package to test")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker."""
    config.addinivalue_line(
        "markers", "vmtest_guest(kind): run only when the configured guest is of this kind"
    )
    config.addinivalue_line(
        "markers",
        "vmtest_verifier: run the test's scenarios under Driver Verifier (a Windows guest of its own, with "
        "driver.verifier from the configuration or IRQL checking and deadlock detection)",
    )
    config.stash[_RUNNERS_KEY] = []


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def vmtest_config(pytestconfig: pytest.Config) -> VmtestConfig:
    """The configuration, with the artifacts directory of this xdist worker."""
    try:
        config = load_config(pytestconfig.getoption("vmtest_config"))
    except VmtestError as error:
        raise pytest.UsageError(str(error)) from None
    artifacts = pytestconfig.getoption("vmtest_artifacts") or config.artifacts
    return config.model_copy(update={"artifacts": Path(artifacts) / _worker()})


@pytest.fixture(scope="session")
def vmtest_vm(vmtest_config: VmtestConfig, pytestconfig: pytest.Config) -> Iterator[ScenarioRunner]:
    """One booted, logged-in VM for the session (one per xdist worker); always shut down at the end."""
    yield from _started_runner(vmtest_config, pytestconfig)


@pytest.fixture(scope="session")
def vmtest_guest(vmtest_vm: ScenarioRunner) -> Guest:
    """The guest's transport and driver lifecycle."""
    return vmtest_vm.guest


@pytest.fixture
def vmtest_clean_guest(vmtest_vm: ScenarioRunner) -> Guest:
    """The guest, first returned to its snapshot: nothing an earlier test did is left in it."""
    vmtest_vm.reset()
    return vmtest_vm.guest


@pytest.fixture(scope="session")
def vmtest_driver(vmtest_vm: ScenarioRunner) -> DeployedDriver:
    """The driver under test, deployed once per session."""
    return vmtest_vm.deploy()


@pytest.fixture(scope="session")
def vmtest_verifier_vm(vmtest_config: VmtestConfig, pytestconfig: pytest.Config) -> Iterator[ScenarioRunner]:
    """A second VM for tests marked ``vmtest_verifier``: the same guest with Driver Verifier on."""
    verifier = vmtest_config.driver.verifier or VerifierConfig()
    driver = vmtest_config.driver.model_copy(update={"verifier": verifier})
    config = vmtest_config.model_copy(
        update={"driver": driver, "artifacts": Path(vmtest_config.artifacts) / "verifier"}
    )
    yield from _started_runner(config, pytestconfig)


def _started_runner(config: VmtestConfig, pytestconfig: pytest.Config) -> Iterator[ScenarioRunner]:
    """A booted runner for ``config``, known to the failure-report hook, shut down at the end."""
    runner = ScenarioRunner(config, driver=pytestconfig.getoption("vmtest_driver"))
    pytestconfig.stash[_RUNNERS_KEY].append(runner)
    try:
        runner.start()
        yield runner
    finally:
        runner.close()


@pytest.fixture
def run_scenario(request: pytest.FixtureRequest) -> Callable[..., ScenarioResult]:
    """``run_scenario(name, **params)``: load the driver for one scenario, judge it, unload it.

    A test marked ``vmtest_verifier`` runs on the VM with Driver Verifier on.
    """
    verified = request.node.get_closest_marker("vmtest_verifier") is not None
    runner: ScenarioRunner = request.getfixturevalue("vmtest_verifier_vm" if verified else "vmtest_vm")
    runner.deploy()

    def run(name: str, **params: str | int) -> ScenarioResult:
        return runner.run((name,), params)

    return run


@pytest.fixture
def run_driver(vmtest_vm: ScenarioRunner, vmtest_driver: DeployedDriver) -> Callable[[], ScenarioResult]:
    """``run_driver()``: text and smoke modes: load the driver once, wait for its output, unload, judge it."""
    return vmtest_vm.run_driver


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked for another guest kind than the configured one, and Verifier tests off Windows."""
    marked = [item for item in items if item.get_closest_marker("vmtest_guest")]
    verified = [item for item in items if item.get_closest_marker("vmtest_verifier")]
    if not marked and not verified:
        return
    try:
        kind = load_config(config.getoption("vmtest_config")).guest.kind
    except VmtestError as error:
        raise pytest.UsageError(str(error)) from None
    if kind != "windows11":
        for item in verified:
            item.add_marker(
                pytest.mark.skip(reason=f"Driver Verifier needs a windows11 guest; this one is {kind}")
            )
    for item in marked:
        marker = item.get_closest_marker("vmtest_guest")
        assert marker is not None
        wanted = marker.args[0] if marker.args else ""
        if wanted != kind:
            item.add_marker(
                pytest.mark.skip(reason=f"needs a {wanted} guest; the configured guest is {kind}")
            )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the capture's tail and the artifact paths to the report of a failed vmtest test."""
    report: pytest.TestReport = yield
    runners = item.config.stash.get(_RUNNERS_KEY, [])
    if (
        report.when == "call"
        and report.failed
        and runners
        and "vmtest_vm" in getattr(item, "fixturenames", ())
    ):
        runner = runners[-1]
        report.sections.append(("vmtest capture (last lines)", "\n".join(runner.capture_tail(40))))
        report.sections.append(("vmtest artifacts", str(runner.run_dir)))
        item.user_properties.append(("vmtest_artifacts", str(runner.run_dir)))  # JUnit reads the item's
    return report
