"""QEMU killed, and vmtest interrupted (SIGINT, SIGTERM) or killed, in each phase of ``vmtest run``.

Each case runs the real pipeline on the Linux self-test guest with the faults module, whose misbehaviour
widens the phase (an insmod that takes 5 s, ...), and strikes once the phase has begun: its progress
line on stderr, then a short wait.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from faultlib import (
    PHASE_WINDOWS,
    RUN_DIR_LOGS,
    PhaseWindow,
    Record,
    VmtestRun,
    alive,
    leftovers,
    phase_started,
    processes_mentioning,
    strike_in_phase,
    vmtest_run,
)

from vmtest.images.linux import LinuxImage

pytestmark = pytest.mark.e2e

WINDOWS = {window.phase: window for window in PHASE_WINDOWS}
STOPPED_BY_VMTEST = re.compile(r"QEMU stopped by (guest power-off|QMP quit|SIGTERM|SIGKILL) \(exit status")


def driver_for(window: PhaseWindow, faults_ko: Path, padded_ko: Path) -> Path:
    return padded_ko if window.padded else faults_ko


@pytest.mark.parametrize("phase", list(WINDOWS))
def test_qemu_killed_is_an_infrastructure_failure_naming_the_phase(
    phase: str, tmp_path: Path, image: LinuxImage, faults_ko: Path, padded_ko: Path, record: Record
) -> None:
    window = WINDOWS[phase]
    row = record(
        f"QEMU killed (SIGKILL) in {phase}",
        f"`vmtest run`, faults module; SIGKILL to the QEMU child, {window.describe()}",
        f"exit 3; message names `{phase}` and QEMU's death; logs kept; verdicts.json status infrastructure;"
        " no QEMU left",
    )

    def kill_qemu(_run: VmtestRun, qemu: int) -> None:
        os.kill(qemu, signal.SIGKILL)

    struck = strike_in_phase(
        window,
        kill_qemu,
        workdir=tmp_path,
        image_root=image.root,
        driver=driver_for(window, faults_ko, padded_ko),
    )
    finished = struck.finished
    run_dir = finished.run_dir
    assert run_dir is not None
    verdicts = finished.verdicts()
    message = str(verdicts["message"]).splitlines()[0]
    missing = [name for name in RUN_DIR_LOGS if not (run_dir / name).is_file()]
    left = leftovers(run_dir, [struck.qemu_pid])
    row.observed = (
        f"exit {finished.returncode} after {struck.after_hit:.0f} s; `{message}`; status"
        f" {verdicts['status']}, phase {verdicts['phase']}; logs missing: {missing or 'none'};"
        f" processes left: {len(left)}"
    )
    assert finished.returncode == 3, finished.stderr
    assert message.startswith(f"{phase}: ") and "killed by SIGKILL" in message
    assert f"vmtest: {phase}: " in finished.stderr
    assert verdicts["status"] == "infrastructure" and verdicts["phase"] == phase
    assert not missing
    assert "Traceback" not in finished.stderr
    assert not left


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", list(WINDOWS))
def test_interrupted_run_tears_down_and_reports_interrupted(
    phase: str,
    signum: signal.Signals,
    tmp_path: Path,
    image: LinuxImage,
    faults_ko: Path,
    padded_ko: Path,
    record: Record,
) -> None:
    window = WINDOWS[phase]
    row = record(
        f"{signum.name} to vmtest in {phase}",
        f"`vmtest run`, faults module; {signum.name} to vmtest only, {window.describe()}",
        "exit 130; QEMU shut down by vmtest (its log names the step), none left; partial report with"
        " verdicts.json status interrupted during the phase",
    )

    def interrupt(run: VmtestRun, _qemu: int) -> None:
        run.signal(signum)

    struck = strike_in_phase(
        window,
        interrupt,
        workdir=tmp_path,
        image_root=image.root,
        driver=driver_for(window, faults_ko, padded_ko),
    )
    finished = struck.finished
    run_dir = finished.run_dir
    assert run_dir is not None
    verdicts = finished.verdicts()
    left = leftovers(run_dir, [struck.qemu_pid])
    reports = [name for name in ("report.html", "junit.xml", "verdicts.json") if (run_dir / name).is_file()]
    stopped = STOPPED_BY_VMTEST.search((run_dir / "vmtest.log").read_text(errors="replace"))
    row.observed = (
        f"exit {finished.returncode} {struck.after_hit:.0f} s after the signal; status {verdicts['status']}"
        f" (`{verdicts['message']}`); QEMU stopped by {stopped.group(1) if stopped else 'nobody'};"
        f" reports: {', '.join(reports)}; processes left: {len(left)}"
    )
    assert finished.returncode == 130, finished.stderr
    assert verdicts["status"] == "interrupted" and verdicts["phase"] == phase
    assert verdicts["message"] == f"interrupted during {phase}"
    assert len(reports) == 3
    assert "Traceback" not in finished.stderr and "never retrieved" not in finished.stderr
    assert stopped, "vmtest did not stop QEMU itself (vmtest.log names no shutdown step)"
    assert not left


def test_vmtest_killed_leaves_no_qemu(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    row = record(
        "vmtest killed (SIGKILL) in load",
        "`vmtest run`, insmod of a module whose init sleeps 5 s; SIGKILL to vmtest 1.5 s after `load:`",
        "QEMU dies with it (parent-death signal); no process of the run left",
    )
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {image.root}\ndriver:\n  parameters:\n    mode: slowload\n")
    artifacts = tmp_path / "runs"
    args = [
        "run",
        str(config),
        "--driver",
        str(faults_ko),
        "--scenario",
        "fault_a",
        "--artifacts",
        str(artifacts),
    ]
    with vmtest_run(args, artifacts=artifacts) as run:
        run.wait_for_line(phase_started("load"))
        qemu = run.qemu_pid()
        time.sleep(1.5)
        run.signal(signal.SIGKILL)
        finished = run.finish(timeout=30)
    left = leftovers(finished.run_dir, [qemu])
    row.observed = (
        f"vmtest ended by signal {-finished.returncode}; QEMU alive: {alive(qemu)}; left: {left or 'none'}"
    )
    assert finished.returncode == -signal.SIGKILL
    assert not left


SWTPM_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from vmtest.machine.process import spawn_bound_to_parent

    async def main() -> None:
        state = Path(sys.argv[1])
        args = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                "--ctrl", f"type=unixio,path={state / 'ctrl.sock'}"]
        process = await spawn_bound_to_parent(args, log=state / "swtpm.log")
        print(process.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed")
def test_swtpm_started_like_qemu_dies_with_vmtest(tmp_path: Path, record: Record) -> None:
    row = record(
        "vmtest killed (SIGKILL) while a swtpm runs",
        "a process that starts swtpm the way vmtest starts QEMU and swtpm (spawn_bound_to_parent), then"
        " SIGKILL to that process",
        "swtpm dies with it",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", SWTPM_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        swtpm = int(child.stdout.readline())
        assert alive(swtpm)
    finally:
        child.kill()
        child.wait(10)
    left = leftovers(None, [swtpm], timeout=10)
    row.observed = f"swtpm alive after its parent's SIGKILL: {bool(left)}"
    assert not left
    assert not processes_mentioning(str(tmp_path / "ctrl.sock"))
