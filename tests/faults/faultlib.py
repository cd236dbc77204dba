"""Helpers of the fault-injection suite: run ``vmtest`` as a user would and hurt it at the right moment.

:class:`VmtestRun` starts ``vmtest run`` (through ``faulty_vmtest.py``, which can inject faults into
vmtest's own process), follows its progress lines on stderr as they come, and finds its QEMU among its
children. The other helpers look at what a run left behind: processes, files, sockets.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
FAULTS_DIR = Path(__file__).resolve().parent
FAULTY_VMTEST = FAULTS_DIR / "faulty_vmtest.py"
FAULTS_MODULE_SOURCE = ROOT / "tests" / "e2e" / "modules" / "vmtest_faults"
RUN_TIMEOUT = 300.0

# The progress note naming the run directory: "[   0.0s] run directory: DIR (accelerator: tcg)".
NOT_A_MESSAGE = re.compile(r"vmtest: (WARNING: |report: \S+report\.html$)")
RUN_DIRECTORY_LINE = re.compile(r"\] run directory: (\S+) \(accelerator", re.M)


def phase_started(phase: str) -> re.Pattern[str]:
    """The progress line that says ``phase`` began (``[   7.7s] deploy: copying the driver into the guest``).

    Not the phase's "done" or "FAILED" line.
    """
    return re.compile(rf"^\[\s*[\d.]+s\] {re.escape(phase)}: (?!done in |FAILED after )")


def load_test_module(path: Path, name: str) -> ModuleType:
    """Another test file of this repository as a module (its fakes and harnesses are reused here)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Finished:
    """How a ``vmtest`` process ended, and the run directory it made (None if it made none)."""

    returncode: int
    stdout: str
    stderr: str
    run_dir: Path | None
    elapsed: float

    def verdicts(self) -> dict[str, object]:
        """The run's ``verdicts.json``."""
        assert self.run_dir is not None, "the run made no run directory"
        data: dict[str, object] = json.loads((self.run_dir / "verdicts.json").read_text())
        return data

    def last_message(self) -> str:
        """The ``vmtest: ...`` lines of stderr but warnings and the report's location, joined."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("vmtest: ")]
        return " | ".join(line for line in lines if not NOT_A_MESSAGE.match(line))


class VmtestRun:
    """One ``vmtest`` process with faults injected (``faults``) and its output followed live."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        artifacts: Path,
        faults: dict[str, object] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.artifacts = artifacts
        environment = {**os.environ, **(env or {})}
        environment.pop("GITHUB_STEP_SUMMARY", None)
        environment.pop("GITHUB_ACTIONS", None)
        if faults:
            environment["VMTEST_FAULTS"] = json.dumps(faults)
        command = [sys.executable, str(FAULTY_VMTEST), *args]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            cwd=cwd or artifacts.parent,
        )
        self._lines: list[str] = []
        self._stdout: list[bytes] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._follow_stderr, daemon=True, name="vmtest-stderr"),
            threading.Thread(target=self._follow_stdout, daemon=True, name="vmtest-stdout"),
        ]
        for reader in self._readers:
            reader.start()
        self.qemu_pids: set[int] = set()

    @property
    def pid(self) -> int:
        """The vmtest process."""
        return self.process.pid

    def _follow_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self._lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _follow_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout.append(self.process.stdout.read())

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = RUN_TIMEOUT) -> str:
        """Wait until a stderr line matches ``pattern``; fail if vmtest ends first or time runs out."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if pattern.search(line):
                        return line
                seen = len(self._lines)
                if self.process.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(
                        f"vmtest ended (exit {self.process.returncode}) before a line matched"
                        f" {pattern.pattern!r}:\n" + "\n".join(self._lines[-30:])
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no line matched {pattern.pattern!r} within {timeout:.0f}s:\n"
                        + "\n".join(self._lines[-30:])
                    )
                self._changed.wait(min(remaining, 0.2))

    def qemu_pid(self, timeout: float = 60.0) -> int:
        """The pid of this run's QEMU (a child of vmtest), once it has been started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in descendants(self.pid):
                if "qemu-system" in command_line(pid):
                    self.qemu_pids.add(pid)
                    return pid
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"vmtest (pid {self.pid}) started no QEMU within {timeout:.0f}s")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the vmtest process itself (only: its QEMU runs in a session of its own)."""
        os.kill(self.pid, signum)

    def finish(self, timeout: float = RUN_TIMEOUT) -> Finished:
        """Wait for vmtest to exit; kill it (and any QEMU of it) if it does not within ``timeout``."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_everything()
            raise AssertionError(
                f"vmtest did not exit within {timeout:.0f}s:\n" + "\n".join(self._lines[-30:])
            ) from None
        for reader in self._readers:
            reader.join(30)
        stderr = "\n".join(self._lines)
        named = RUN_DIRECTORY_LINE.search(stderr)
        return Finished(
            self.process.returncode,
            b"".join(self._stdout).decode("utf-8", errors="replace"),
            stderr,
            Path(named.group(1)) if named else only_run_dir(self.artifacts),
            time.monotonic() - self.started,
        )

    def kill_everything(self) -> None:
        """SIGKILL vmtest and every QEMU it started (cleanup after a failed test), by pid."""
        pids = [*descendants(self.pid), *self.qemu_pids]
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        for pid in pids:
            if "qemu-system" in command_line(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


@contextlib.contextmanager
def vmtest_run(args: Sequence[str], **options: object) -> Iterator[VmtestRun]:
    """A :class:`VmtestRun` that is killed (with its QEMU) if the test leaves the block early."""
    run = VmtestRun(args, **options)  # type: ignore[arg-type]
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.kill_everything()


def only_run_dir(artifacts: Path) -> Path | None:
    """The one run directory under ``artifacts``, or None when there is none."""
    if not artifacts.is_dir():
        return None
    runs = [path for path in artifacts.iterdir() if path.is_dir()]
    assert len(runs) <= 1, f"more than one run directory in {artifacts}: {runs}"
    return runs[0] if runs else None


def command_line(pid: int) -> str:
    """The command line of ``pid`` with spaces between arguments; empty if it is gone or a zombie."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, found through ``/proc/PID/task/*/children``."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    pending.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text`` (a run directory's name, say)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        line = command_line(pid)
        if text in line and alive(pid):
            found.append((pid, line))
    return found


def wait_until_gone(pids: Sequence[int], timeout: float = 15.0) -> list[int]:
    """Wait for ``pids`` to end; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in left if alive(pid)]
    return left


def leftovers(run_dir: Path | None, pids: Sequence[int] = (), timeout: float = 15.0) -> list[str]:
    """QEMU, swtpm, smbd or anything else of the run still alive: by pid, and by run-directory name."""
    left = [f"{pid} {command_line(pid)}" for pid in wait_until_gone(pids, timeout)]
    if run_dir is not None:
        deadline = time.monotonic() + timeout
        while (found := processes_mentioning(run_dir.name)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left += [f"{pid} {line}" for pid, line in found]
    return left


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """The TCP (v4 and v6) sockets of ``pid`` in state LISTEN, as (address, port)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                found.append(decode_address(local))
    return found


def decode_address(text: str) -> tuple[str, int]:
    """An address of /proc/net/tcp (``0100007F:1F90``) or tcp6 as (dotted or hex address, port)."""
    address, port = text.split(":")
    if len(address) == 8:
        octets = bytes.fromhex(address)[::-1]
        return ".".join(str(octet) for octet in octets), int(port, 16)
    return address, int(port, 16)


def connections_to(address: str) -> list[str]:
    """Lines of the host's TCP table (all network namespaces we can see: this one) with ``address``."""
    octets = address.split(".")
    wanted = "".join(f"{int(octet):02X}" for octet in reversed(octets))
    return [
        line.strip()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[2].split(":")[0] == wanted
    ]


def scrub(text: str, *prefixes: Path) -> str:
    """``text`` without what differs between machines and runs: temporary paths, run names, the home."""
    for prefix in sorted(prefixes, key=lambda path: len(str(path)), reverse=True):
        text = text.replace(str(prefix), "<tmp>")
    text = text.replace(str(ROOT), "<repo>")
    text = re.sub(r"/tmp/[^\s'\"|,):`]+", "<tmp>", text)
    text = re.sub(r"<tmp>/[^\s'\"|,):`]+", "<tmp>", text)
    text = re.sub(r"\b(run|faults)-\d{8}-\d{6}-[0-9a-f]{6}\b", r"\1-<id>", text)
    text = text.replace(str(Path.home()), "~")
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", text)
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class PhaseWindow:
    """How to be inside one phase of ``vmtest run`` when the fault strikes.

    ``mode`` is the test module's misbehaviour that widens the phase (``slowload``: insmod takes seconds),
    ``marker`` the stderr line that says the phase began, ``delay`` how long to wait after it.
    """

    phase: str
    mode: str
    marker: re.Pattern[str]
    delay: float
    faults: dict[str, object] | None = None
    padded: bool = False

    def describe(self) -> str:
        """How the window is made, for the table."""
        how = {
            "boot": "vmtest held 4 s in the boot phase (after the forwards, before the CPU runs)",
            "ready": "while the guest boots",
            "deploy": "while a 24 MiB module is copied in",
            "load": "insmod of a module whose init sleeps 5 s",
            "capture": "a module whose scenarios end 5 s after insmod returned",
            "unload": "rmmod of a module whose exit sleeps 5 s",
        }[self.phase]
        return f"{how}; {self.delay:g} s after `{self.phase}:` began"


PHASE_WINDOWS = (
    PhaseWindow("boot", "pass", re.compile(r"^faulty_vmtest: boot delayed"), 1.0, faults={"boot_delay": 4}),
    PhaseWindow("ready", "pass", phase_started("ready"), 2.0),
    PhaseWindow("deploy", "pass", phase_started("deploy"), 0.5, padded=True),
    PhaseWindow("load", "slowload", phase_started("load"), 1.5),
    PhaseWindow("capture", "slowcapture", phase_started("capture"), 1.0),
    PhaseWindow("unload", "slowunload", phase_started("unload"), 1.5),
)

RUN_DIR_LOGS = ("qemu.log", "serial-console.log", "capture.log", "vmtest.log", "verdicts.json")


@dataclass(frozen=True)
class Struck:
    """A run hit by a fault: how it ended, its QEMU's pid, and how long it took to end after the hit."""

    finished: Finished
    qemu_pid: int
    after_hit: float


def strike_in_phase(
    window: PhaseWindow,
    hit: Callable[[VmtestRun, int], None],
    *,
    workdir: Path,
    image_root: Path,
    driver: Path,
    scenarios: str = "fault_a,fault_b",
) -> Struck:
    """Run ``vmtest run`` with the faults module, and call ``hit(run, qemu_pid)`` inside ``window``."""
    config = workdir / f"{window.phase}.yaml"
    config.write_text(
        f"guest:\n  image: {image_root}\n"
        f"driver:\n  parameters:\n    mode: {window.mode}\n    delay_ms: 5000\n"
    )
    artifacts = workdir / f"runs-{window.phase}"
    args = ["run", str(config), "--driver", str(driver), "--scenario", scenarios]
    args += ["--artifacts", str(artifacts)]
    with vmtest_run(args, artifacts=artifacts, faults=window.faults) as run:
        run.wait_for_line(window.marker)
        qemu = run.qemu_pid()
        time.sleep(window.delay)
        hit_at = time.monotonic()
        hit(run, qemu)
        finished = run.finish(timeout=180)
    return Struck(finished, qemu, time.monotonic() - hit_at)


# ---------------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One fault or input tried, what was expected, and what was seen."""

    fault: str
    input: str
    expected: str
    observed: str = ""
    result: str = ""


@dataclass
class Table:
    """Every row of the session, in the order the tests ran, and what the session ran."""

    rows: list[Row] = field(default_factory=list)
    collected: set[str] = field(default_factory=set)
    reported: set[str] = field(default_factory=set)
    deselected: bool = False
    started: float = field(default_factory=time.monotonic)
    scrubbed: list[Path] = field(default_factory=list)

    def complete(self) -> bool:
        """Whether this session ran the whole suite: every file, every test, nothing deselected."""
        files = {path.name for path in FAULTS_DIR.glob("test_*.py")}
        seen_files = {nodeid.split("::")[0].rsplit("/", 1)[-1] for nodeid in self.collected}
        return (
            bool(self.collected)
            and not self.deselected
            and files <= seen_files
            and self.collected <= self.reported
        )

    def markdown(self) -> str:
        """``docs/RELIABILITY.md``."""
        failed = sum(1 for row in self.rows if row.result != "as expected")
        lines = [
            "# Reliability: faults and hostile inputs tried, and what vmtest did",
            "",
            "Generated by the fault-injection suite, only when asked, from a run of the whole suite:",
            "`.venv/bin/pytest tests/faults --vmtest-write-reliability` (other test runs leave this file",
            "alone); do not edit by hand. Each row is one fault or input, the outcome the suite asserts, and",
            "the outcome it observed (paths shortened: `<tmp>` is a temporary directory).",
            "The Linux self-test guest runs the real pipeline; KD faults use a scripted target, and the",
            "Windows driver lifecycle a scripted guest answering with documented `sc.exe` output.",
            "",
            f"Last full run: {len(self.rows)} rows, {len(self.rows) - failed} as expected, {failed} not.",
            "",
            "| # | fault or input | how it was injected | expected | observed | result |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for number, row in enumerate(self.rows, 1):
            cells = [str(number), row.fault, row.input, row.expected, row.observed or "(none)", row.result]
            lines.append("| " + " | ".join(_cell(cell, self.scrubbed) for cell in cells) + " |")
        return "\n".join(lines) + "\n"


def _cell(text: str, prefixes: list[Path]) -> str:
    return scrub(text, *prefixes).replace("|", "\\|")


Record = Callable[..., Row]
"""``record(fault, input, expected) -> Row``, the fixture that adds a row to the table."""
