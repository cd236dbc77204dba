"""Fixtures of the fault-injection suite, and the table of what was tried: ``docs/RELIABILITY.md``.

Every test records the faults it injects with the ``record`` fixture: a name, the input, the expected
outcome and (filled in as soon as it is known, before the assertions) the observed one.

The table is written to ``docs/RELIABILITY.md`` only when asked, and only from a run of the whole suite
(every test file, nothing deselected, every test reported)::

    .venv/bin/pytest tests/faults --vmtest-write-reliability

Any other run, of this suite or of others, leaves the file alone; a partial run with the option says
why it did not write it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultlib import FAULTS_MODULE_SOURCE, ROOT, Record, Row, Table

from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.drivers.kbuild import build_module
from vmtest.facade import BackgroundSession
from vmtest.guests import Guest
from vmtest.images.linux import LinuxImage, build_linux_image
from vmtest.progress import PlainProgress

FAULTS_DIR = Path(__file__).resolve().parent
TABLE = ROOT / "docs" / "RELIABILITY.md"
WRITE_RELIABILITY = "--vmtest-write-reliability"  # the option, added by tests/conftest.py
PADDING = 24 << 20  # bytes added to the module for the deploy-phase faults: a copy of a few seconds


# ---------------------------------------------------------------------------------------------- the table


def _table(config: pytest.Config) -> Table:
    table: Table = config.stash.setdefault(_TABLE_KEY, Table())
    return table


_TABLE_KEY = pytest.StashKey[Table]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Remember which tests of this suite were collected (after -k/-m deselection, see below)."""
    table = _table(config)
    table.collected |= {item.nodeid for item in items if Path(item.path).parent == FAULTS_DIR}


def pytest_deselected(items: list[pytest.Item]) -> None:
    """A deselected test of this suite makes the run partial."""
    for item in items:
        if Path(item.path).parent == FAULTS_DIR:
            _table(item.config).deselected = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Mark each row of the test with whether its assertions held."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if Path(item.path).parent != FAULTS_DIR:
        return
    table = _table(item.config)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        table.reported.add(item.nodeid)
    rows: list[Row] = getattr(item, "_fault_rows", [])
    if report.when == "call" or (report.failed and report.when == "setup"):
        for row in rows:
            if report.passed:
                row.result = row.result or "as expected"
            elif report.skipped:
                row.result = "skipped"
            else:
                crash = getattr(report.longrepr, "reprcrash", None)
                reason = str(getattr(crash, "message", ""))
                row.result = f"NOT as expected: {reason.splitlines()[0] if reason else 'failed'}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the table when asked (``--vmtest-write-reliability``) and the whole suite ran."""
    table = session.config.stash.get(_TABLE_KEY, None)
    if not session.config.getoption(WRITE_RELIABILITY) or table is None or not table.rows:
        return
    for row in table.rows:
        row.result = row.result or "NOT as expected: the test did not finish"
    if table.complete():
        TABLE.write_text(table.markdown(), encoding="utf-8")
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(
            f"{TABLE.name} not written: {WRITE_RELIABILITY} needs a run of the whole fault suite"
            " (every file of tests/faults, nothing deselected)",
            yellow=True,
        )


@pytest.fixture(scope="session")
def table(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Table:
    """The session's table (paths under the session's temporary directory are shortened in it)."""
    found = _table(request.config)
    found.scrubbed.append(tmp_path_factory.getbasetemp())
    return found


@pytest.fixture
def record(request: pytest.FixtureRequest, table: Table) -> Record:
    """``record(fault, input, expected) -> Row``: add a row; set ``row.observed`` as soon as it is known."""

    def add(fault: str, input: str, expected: str) -> Row:
        row = Row(fault, input, expected)
        table.rows.append(row)
        rows: list[Row] = getattr(request.node, "_fault_rows", [])
        rows.append(row)
        request.node._fault_rows = rows
        return row

    return add


# ------------------------------------------------------------------------------------- guest and driver


@pytest.fixture(scope="session")
def image() -> LinuxImage:
    """The Linux self-test guest (built once, cached)."""
    return build_linux_image()


@pytest.fixture(scope="session")
def faults_ko(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vmtest_faults.ko``, the misbehaving test module, built against the guest's headers."""
    build = tmp_path_factory.mktemp("build") / "vmtest_faults"
    return build_module(FAULTS_MODULE_SOURCE, image.headers, build)


@pytest.fixture(scope="session")
def padded_ko(faults_ko: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module with random bytes appended, so that copying it into the guest takes a few seconds."""
    padded = tmp_path_factory.mktemp("padded") / "vmtest_faults.ko"
    shutil.copyfile(faults_ko, padded)
    with padded.open("ab") as out:
        out.write(os.urandom(PADDING))
    return padded


def write_config(path: Path, image: LinuxImage, text: str = "") -> Path:
    """A configuration file for the self-test guest with ``text`` (YAML) appended."""
    path.write_text(f"guest:\n  image: {image.root}\n{text}")
    return path


@dataclass
class SharedVm:
    """One booted, logged-in guest for the tests that do not need a VM of their own."""

    background: BackgroundSession
    guest: Guest
    image: LinuxImage

    @property
    def qemu_pid(self) -> int:
        """The QEMU process."""
        machine = self.background.session.machine
        assert machine is not None and machine.process is not None
        return machine.process.pid

    @property
    def ssh_port(self) -> int:
        """The host side of the SSH forward."""
        machine = self.background.session.machine
        assert machine is not None
        return machine.forwards["ssh"]

    def shell(self, script: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``sh -c script`` in the guest; (exit code, stdout + stderr)."""
        transport = self.guest.transport
        result = self.background.call(
            lambda: transport.run(["sh", "-c", script], timeout=timeout),
            timeout=timeout + 10,
            what="a test command",
        )
        return result.exit_code, result.text()


@pytest.fixture(scope="session")
def shared_vm(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedVm]:
    """A guest booted once for the whole session, shut down at its end."""
    config = VmtestConfig(
        artifacts=tmp_path_factory.mktemp("shared-vm"), guest=LinuxGuestConfig(image=image.root)
    )
    background = BackgroundSession(config, PlainProgress(), label="faults")
    try:
        background.start()
        yield SharedVm(background, background.guest, image)
    finally:
        background.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs(size)`` mounts a tmpfs of ``size`` (``"300k"``) and returns it; unmounted at teardown."""
    mounted: list[Path] = []
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{size}"
        point.mkdir()
        options = f"size={size},mode=0755"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            subprocess.run(["umount", str(point)], check=False)
