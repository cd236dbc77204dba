"""The host misbehaves: the forward's port is taken, the run directory's disk is full."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultlib import Record, leftovers, vmtest_run

from vmtest.images.linux import LinuxImage
from vmtest.machine.ports import LOOPBACK

pytestmark = pytest.mark.e2e


def occupied_port() -> socket.socket:
    """A listening socket on a free 127.0.0.1 port: a service that got there first."""
    return socket.create_server((LOOPBACK, 0))


def test_taken_forward_port_is_replaced_by_another(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    first, second = occupied_port(), occupied_port()
    taken = [first.getsockname()[1], second.getsockname()[1]]
    row = record(
        "forwarded port already taken",
        "free_loopback_port patched to hand out two ports a listening socket holds, then free ones",
        "QEMU's hostfwd_add refuses both; vmtest tries the next port; the run passes on it",
    )
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {image.root}\n")
    artifacts = tmp_path / "runs"
    args = ["run", str(config), "--driver", str(faults_ko), "--scenario", "fault_a"]
    try:
        with vmtest_run(
            [*args, "--artifacts", str(artifacts)], artifacts=artifacts, faults={"taken_ports": taken}
        ) as run:
            finished = run.finish()
    finally:
        first.close()
        second.close()
    assert finished.run_dir is not None
    log = (finished.run_dir / "vmtest.log").read_text()
    refused = [int(port) for port in re.findall(r"host port (\d+) was taken", log)]
    forward = re.search(r"forward ssh: 127\.0\.0\.1:(\d+) -> guest port 22", log)
    used = json.loads((finished.run_dir / "guest.json").read_text())["port"]
    row.observed = (
        f"exit {finished.returncode}; refused: {'both taken ports' if refused == taken else refused};"
        f" the forward went to a third port: {forward is not None and int(forward.group(1)) not in taken}"
    )
    assert finished.returncode == 0, finished.stderr
    assert refused == taken
    assert forward is not None and int(forward.group(1)) == used and used not in taken


def verdicts_status(verdicts: Path) -> str | None:
    """The status in ``verdicts.json``; None without the file, ``cut`` if it is not whole JSON."""
    if not verdicts.is_file():
        return None
    try:
        return str(json.loads(verdicts.read_text())["status"])
    except (ValueError, KeyError):
        return "cut"


@dataclass(frozen=True)
class FullDisk:
    """A run directory's disk that is full from one phase on, and what vmtest must say then."""

    phase: str
    size: str
    fill: dict[str, str] | None  # faulty_vmtest's fill_disk fault: when the rest of the disk is taken
    how: str
    says: re.Pattern[str]


FULL_DISKS = [
    FullDisk(
        "boot",
        "64k",
        None,
        "--artifacts on a 64k tmpfs (the overlay's qcow2 header does not fit)",
        re.compile(r"vmtest: boot: qemu-img create failed: .*No space left on device"),
    ),
    FullDisk(
        "ready",
        "16m",
        {"at": "ready", "when": "start"},
        "--artifacts on a 16m tmpfs, filled up as `ready:` begins (the guest's disk writes fail)",
        re.compile(
            r"\bready: QEMU paused the guest \(write error on its disk disk0: No space left on device"
        ),
    ),
    FullDisk(
        "report",
        "16m",
        {"at": "shutdown", "when": "end"},
        "--artifacts on a 16m tmpfs, filled up once `shutdown:` is done, before the reports",
        re.compile(r"^vmtest: report: cannot write the reports: No space left on device$", re.M),
    ),
]


@pytest.mark.parametrize("disk", FULL_DISKS, ids=[disk.phase for disk in FULL_DISKS])
def test_full_run_directory_disk_fails_in_its_phase_never_a_success(
    disk: FullDisk,
    tmp_path: Path,
    image: LinuxImage,
    faults_ko: Path,
    tmpfs: Callable[[str], Path],
    record: Record,
) -> None:
    row = record(
        f"run directory's disk full in {disk.phase}",
        disk.how,
        f"exit 3; the message names `{disk.phase}` and no space left; no report claims success; no QEMU left",
    )
    mount = tmpfs(disk.size)
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {image.root}\ntimeouts:\n  boot: 60\n")
    artifacts = mount / "runs"
    args = ["run", str(config), "--driver", str(faults_ko), "--scenario", "fault_a,fault_b"]
    faults = {"fill_disk": {"path": str(mount), **disk.fill}} if disk.fill else None
    with vmtest_run([*args, "--artifacts", str(artifacts)], artifacts=artifacts, faults=faults) as run:
        finished = run.finish()
    run_dir = finished.run_dir
    assert run_dir is not None
    verdicts = run_dir / "verdicts.json"
    status = verdicts_status(verdicts)
    html = run_dir / "report.html"
    claims = [
        name
        for name, text in (
            ("verdicts.json", verdicts.read_text() if verdicts.is_file() else ""),
            ("report.html", html.read_text() if html.is_file() else ""),
        )
        if re.search(r'"status": "passed"|<span class="passed">passed</span></h1>', text)
    ]
    left = leftovers(run_dir)
    messages = "\n".join(line for line in finished.stderr.splitlines() if line.startswith("vmtest: "))
    row.observed = (
        f"exit {finished.returncode}; `{finished.last_message()}`; verdicts.json status: {status};"
        f" reports claiming success: {claims or 'none'}; processes left: {len(left)}"
    )
    assert finished.returncode == 3, finished.stderr
    assert disk.says.search(messages), messages
    if disk.phase == "report":
        assert "already failed" not in messages, "the run itself should have passed"
    assert "Traceback" not in finished.stderr
    assert status in (None, "infrastructure")
    assert not claims
    assert not left
