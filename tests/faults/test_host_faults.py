"""The host misbehaves: the forward's port is taken, the run directory's disk is full."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
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


@pytest.mark.parametrize("size", ["64k", "300k", "450k"])
def test_full_run_directory_disk_is_a_clear_error_never_a_success(
    size: str,
    tmp_path: Path,
    image: LinuxImage,
    faults_ko: Path,
    tmpfs: Callable[[str], Path],
    record: Record,
) -> None:
    row = record(
        f"run directory's disk full ({size})",
        f"--artifacts on a {size} tmpfs; a passing faults-module run needs about 600k",
        "exit 3 with a message saying no space is left; no report claims success; no QEMU left",
    )
    disk = tmpfs(size)
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {image.root}\ntimeouts:\n  boot: 60\n")
    artifacts = disk / "runs"
    args = ["run", str(config), "--driver", str(faults_ko), "--scenario", "fault_a,fault_b"]
    with vmtest_run([*args, "--artifacts", str(artifacts)], artifacts=artifacts) as run:
        finished = run.finish()
    run_dir = finished.run_dir
    assert run_dir is not None
    verdicts = run_dir / "verdicts.json"
    status = json.loads(verdicts.read_text())["status"] if verdicts.is_file() else None
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
    row.observed = (
        f"exit {finished.returncode}; `{finished.last_message()}`; verdicts.json status: {status};"
        f" reports claiming success: {claims or 'none'}; processes left: {len(left)}"
    )
    assert finished.returncode == 3, finished.stderr
    assert "No space left on device" in finished.last_message() or "disk" in finished.last_message()
    assert "Traceback" not in finished.stderr
    assert status in (None, "infrastructure")
    assert not claims
    assert not left
