"""Security: private run directories, secrets that never leak, forwards on loopback, a guest that reaches
nothing of the host's and nothing outside."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SharedVm
from faultlib import Record, listening_sockets, vmtest_run

from vmtest.images.linux import LinuxImage

pytestmark = pytest.mark.e2e

PUBLIC_LOOKING = "203.0.113.7"  # TEST-NET-3: documentation only, routed nowhere


def test_canary_secret_never_reaches_an_artifact_or_the_output(
    tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    canary = f"canary-{secrets.token_hex(16)}"
    row = record(
        "a secret in the configuration",
        "guest.ssh.password: ${VMTEST_CANARY} (a random canary; the guest is key-only, so it is unused),"
        " `vmtest -v run --json`; every file of the run directory and stdout/stderr searched",
        "the canary appears nowhere; run directory and its subfolders 0700",
    )
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {image.root}\n  ssh:\n    password: ${{VMTEST_CANARY}}\n")
    artifacts = tmp_path / "runs"
    args = ["-v", "run", str(config), "--driver", str(faults_ko), "--scenario", "fault_a", "--json"]
    with vmtest_run(
        [*args, "--artifacts", str(artifacts)], artifacts=artifacts, env={"VMTEST_CANARY": canary}
    ) as run:
        finished = run.finish()
    run_dir = finished.run_dir
    assert run_dir is not None
    needle = canary.encode()
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    leaks = [str(path.relative_to(run_dir)) for path in files if needle in path.read_bytes()]
    leaks += [
        name for name, text in (("stdout", finished.stdout), ("stderr", finished.stderr)) if canary in text
    ]
    folders = [run_dir, *(path for path in run_dir.rglob("*") if path.is_dir())]
    loose = [str(path) for path in folders if path.stat().st_mode & 0o777 != 0o700]
    redacted = '"password": "<redacted>"' in (run_dir / "config.json").read_text()
    row.observed = (
        f"exit {finished.returncode}; {len(files)} files searched (incl. qcow2, PNG, logs) and the output:"
        f" canary found in {leaks or 'none'}; config.json password redacted: {redacted}; folders not 0700:"
        f" {loose or 'none'}"
    )
    assert finished.returncode == 0, finished.stderr
    assert not leaks
    assert redacted
    assert not loose


def test_forwards_listen_on_loopback_only(shared_vm: SharedVm, record: Record) -> None:
    row = record(
        "where QEMU listens",
        "the TCP sockets in LISTEN state owned by a running guest's QEMU (/proc/PID/fd against /proc/net/tcp"
        " and tcp6)",
        "only the forwards, each on 127.0.0.1",
    )
    sockets = listening_sockets(shared_vm.qemu_pid)
    row.observed = f"QEMU listens on: {', '.join(f'{a}:<port>' for a, _ in sockets)} (the SSH forward)"
    assert sockets == [("127.0.0.1", shared_vm.ssh_port)]


@contextlib.contextmanager
def host_service() -> Iterator[tuple[int, list[object]]]:
    """A TCP service on 0.0.0.0 that records who connected."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, peer = server.accept()
            except OSError:
                continue
            accepted.append(peer)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        server.close()


def outcome(output: str) -> str:
    """``exit N (what the command said)`` from the output of ``...; echo exit=$?``."""
    lines = output.strip().splitlines()
    code = next((line.split("=", 1)[1] for line in lines if line.startswith("exit=")), "?")
    said = [line for line in lines if not line.startswith("exit=") and line.strip()]
    return f"exit {code} ({said[-1].strip() if said else 'no output'})"


def wait_until_traced(pid: int, tracer: subprocess.Popen[bytes], timeout: float = 20.0) -> list[int]:
    """Wait until ``tracer`` traces every thread of ``pid``; the threads it does not trace at the deadline.

    A thread is traced when ``TracerPid`` in its ``/proc`` status names the tracer. Ends early, with the
    threads left, if the tracer exits (it could not attach).
    """
    deadline = time.monotonic() + timeout
    while True:
        untraced = []
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
                )
                if fields.get("TracerPid", "").strip() != str(tracer.pid):
                    untraced.append(int(status.parent.name))
        if not untraced or tracer.poll() is not None or time.monotonic() >= deadline:
            return untraced
        time.sleep(0.05)


def host_addresses() -> list[str]:
    """The host's own non-loopback IPv4 address, if it has a route anywhere (UDP connect sends nothing)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((PUBLIC_LOOKING, 9))
        address = probe.getsockname()[0]
    except OSError:
        return []
    finally:
        probe.close()
    return [address] if not address.startswith("127.") else []


def test_guest_cannot_reach_host_services(shared_vm: SharedVm, record: Record) -> None:
    row = record(
        "guest connects to the host",
        "a TCP service on 0.0.0.0 started by the test; from the guest, `nc` to it at 10.0.2.2 (the host as"
        " QEMU's user network shows it) and at the host's own address",
        "every connection fails in the guest; the service accepts nothing",
    )
    with host_service() as (port, accepted):
        results = []
        for address in ["10.0.2.2", *host_addresses()]:
            _, output = shared_vm.shell(f"nc -w 3 {address} {port} </dev/null; echo exit=$?", timeout=30)
            results.append((address, outcome(output), output))
        time.sleep(0.5)
    row.observed = "; ".join(f"{a}: {last}" for a, last, _ in results) + f"; accepted: {len(accepted)}"
    assert all(last.startswith("exit 1") for _, last, _ in results), results
    assert accepted == []


def test_guest_cannot_reach_outside_and_nothing_leaves(shared_vm: SharedVm, record: Record) -> None:
    row = record(
        "guest connects to a public-looking address",
        f"from the guest, `nc` to {PUBLIC_LOOKING}:80 and `ping` it, while strace watches QEMU's"
        " connect/sendto/sendmsg calls",
        "both fail in the guest; QEMU never addresses that host (restrict=on drops it inside QEMU)",
    )
    strace = shutil.which("strace")
    assert strace is not None, (
        "strace is not installed (./setup.sh --dev installs it): QEMU cannot be watched"
    )
    trace = shared_vm.background.session.run_dir.path.parent / "qemu-strace.txt"
    tracer = subprocess.Popen(
        [strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
         "-p", str(shared_vm.qemu_pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        untraced = wait_until_traced(shared_vm.qemu_pid, tracer)
        _, nc_output = shared_vm.shell(f"nc -w 3 {PUBLIC_LOOKING} 80 </dev/null; echo exit=$?")
        _, ping_output = shared_vm.shell(f"ping -c 1 -W 2 {PUBLIC_LOOKING}; echo exit=$?")
    finally:
        tracer.send_signal(signal.SIGINT)
        _, complaint = tracer.communicate(timeout=10)
    traced = trace.read_text().splitlines() if trace.exists() else []
    seen = [line for line in traced if PUBLIC_LOOKING in line]
    # The commands went over SSH through QEMU's forward: QEMU sent their output with sendto(2). A trace
    # without those calls watched nothing.
    forwarded = [line for line in traced if "sendto(" in line]
    row.observed = (
        f"nc: {outcome(nc_output)}; ping: {outcome(ping_output)}; strace of QEMU: {len(traced)} calls"
        f" ({len(forwarded)} sendto of the SSH forward), {len(seen)} to {PUBLIC_LOOKING}"
    )
    assert not untraced, f"strace did not attach to QEMU's threads {untraced}: {complaint.decode().strip()}"
    assert forwarded, f"strace saw none of QEMU's calls for the SSH forward: {complaint.decode().strip()}"
    assert outcome(nc_output).startswith("exit 1")
    assert outcome(ping_output).startswith("exit 1")
    assert not seen
