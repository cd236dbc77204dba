"""SSH connections dropped mid-copy and mid-command: copies are retried once, commands never.

The transport under test talks to the shared guest through a TCP proxy on 127.0.0.1 that the test
controls (it cuts connections after so many bytes, or at once); one case instead kills the guest's own
dropbear process serving the connection, from a second connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from conftest import SharedVm
from faultlib import Record

from vmtest.errors import GuestUnreachable
from vmtest.guest.ssh import SshTransport
from vmtest.machine.ports import LOOPBACK

pytestmark = pytest.mark.e2e

COPY_SIZE = 6 << 20


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that resets a connection once it has relayed ``cut_after`` bytes upstream.

    ``cuts`` is how many connections get cut (the later ones are relayed untouched); ``cut_now`` resets
    every open connection at once.
    """

    def __init__(self, target_port: int, *, cut_after: int | None = None, cuts: int = 0) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.connections = 0
        self.cut = 0
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="proxy-accept")]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((LOOPBACK, self.target_port))
            with self._lock:
                self.connections += 1
                cut = self.cut_after if self.cuts_left > 0 else None
                if cut is not None:
                    self.cuts_left -= 1
                self._open.append((client, upstream))
            for source, sink, limit in ((client, upstream, cut), (upstream, client, None)):
                thread = threading.Thread(target=self._relay, args=(source, sink, limit), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _relay(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        moved = 0
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if limit is not None and moved + len(data) >= limit:
                self._reset(source, sink)
                with self._lock:
                    self.cut += 1
                return
            moved += len(data)
            try:
                sink.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    @staticmethod
    def _reset(*sockets: socket.socket) -> None:
        # shutdown first: close alone neither wakes a relay thread blocked in recv nor tells the peer.
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def cut_now(self) -> None:
        """Reset every open connection."""
        with self._lock:
            pairs, self._open = self._open, []
            self.cut += len(pairs)
        for pair in pairs:
            self._reset(*pair)

    def close(self) -> None:
        """Stop listening and reset what is open."""
        self._listener.close()
        self.cut_now()


def transport_via(port: int, shared_vm: SharedVm) -> SshTransport:
    image = shared_vm.image
    return SshTransport(
        host=LOOPBACK,
        port=port,
        user="root",
        key=image.client_key,
        password=None,
        host_key=image.host_key,
        connect_timeout=10,
    )


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "payload.bin"
    data = os.urandom(COPY_SIZE)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_copy_cut_once_is_retried_and_arrives_whole(
    shared_vm: SharedVm, payload: tuple[Path, str], record: Record
) -> None:
    row = record(
        "SSH connection dropped mid-copy (once)",
        f"SFTP put of {COPY_SIZE >> 20} MiB through a proxy that resets the connection after 2 MiB",
        "reconnects and copies again; the file arrives whole (same SHA-256)",
    )
    path, digest = payload
    proxy = CuttingProxy(shared_vm.ssh_port, cut_after=2 << 20, cuts=1)
    transport = transport_via(proxy.port, shared_vm)
    try:
        transport.wait_ready(30)
        transport.put(path, "/tmp/faults-copy.bin", timeout=180)
        cuts = proxy.cut
    finally:
        transport.close()
        proxy.close()
    code, output = shared_vm.shell("sha256sum /tmp/faults-copy.bin; rm -f /tmp/faults-copy.bin")
    row.observed = (
        f"{proxy.connections} connections, {cuts} cut; copy completed; SHA-256 in the guest matches:"
        f" {digest in output}"
    )
    assert code == 0 and digest in output
    assert proxy.connections == 2 and cuts == 1


def test_copy_cut_twice_is_a_clear_guest_unreachable(
    shared_vm: SharedVm, payload: tuple[Path, str], record: Record
) -> None:
    row = record(
        "SSH connection dropped mid-copy (every attempt)",
        f"SFTP put of {COPY_SIZE >> 20} MiB through a proxy that resets every connection after 1 MiB",
        "one retry, then GuestUnreachable saying the connection dropped while copying",
    )
    path, _ = payload
    proxy = CuttingProxy(shared_vm.ssh_port, cut_after=1 << 20, cuts=10)
    transport = transport_via(proxy.port, shared_vm)
    try:
        transport.wait_ready(30)
        with pytest.raises(GuestUnreachable) as caught:
            transport.put(path, "/tmp/faults-copy.bin", timeout=180)
    finally:
        transport.close()
        proxy.close()
    shared_vm.shell("rm -f /tmp/faults-copy.bin")
    row.observed = f"{type(caught.value).__name__}: `{caught.value}` after {proxy.connections} connections"
    assert "dropped while copying" in str(caught.value)
    assert proxy.connections == 2


def test_command_cut_is_not_retried(shared_vm: SharedVm, record: Record) -> None:
    row = record(
        "SSH connection dropped mid-command",
        "a command that appends a line to a start file, sleeps 20 s and touches a marker, through a proxy"
        " that resets the connection 1 s in",
        "GuestUnreachable naming the command while the command still sleeps (its marker absent); started"
        " once, never run again (one line in the start file; one connection)",
    )
    token = secrets.token_hex(4)
    started_file, marker = f"/tmp/faults-started-{token}", f"/tmp/faults-ran-{token}"
    command = f"echo started >> {started_file}; sleep 20; touch {marker}"
    proxy = CuttingProxy(shared_vm.ssh_port)
    transport = transport_via(proxy.port, shared_vm)
    timer = threading.Timer(1.0, proxy.cut_now)
    try:
        transport.wait_ready(30)
        timer.start()
        with pytest.raises(GuestUnreachable) as caught:
            transport.run(["sh", "-c", command], timeout=60)
    finally:
        timer.cancel()
        transport.close()
        proxy.close()
    _, seen = shared_vm.shell(f"wc -l < {started_file}; ls {marker} 2>/dev/null || echo no-marker")
    starts, marker_state = (seen.split() + ["?", "?"])[:2]
    row.observed = (
        f"{type(caught.value).__name__}: `{caught.value}`; starts: {starts}; marker:"
        f" {'absent' if marker_state == 'no-marker' else 'created'}; connections: {proxy.connections}"
    )
    assert "dropped while running `sh -c" in str(caught.value)
    assert marker_state == "no-marker", "the error waited for the command to end"
    assert starts == "1", "the command ran again"
    assert proxy.connections == 1


def test_guest_side_session_killed_mid_command(shared_vm: SharedVm, record: Record) -> None:
    row = record(
        "guest's dropbear session killed mid-command",
        "`sleep 37` over SSH; from a second connection, SIGKILL to the dropbear process serving it",
        "GuestUnreachable naming the command, well before the command's deadline",
    )
    transport = transport_via(shared_vm.ssh_port, shared_vm)
    outcome: dict[str, BaseException | float] = {}

    def run_sleep() -> None:
        started = time.monotonic()
        try:
            transport.run(["sleep", "37"], timeout=60)
        except BaseException as error:
            outcome["error"] = error
        outcome["elapsed"] = time.monotonic() - started

    transport.wait_ready(30)
    worker = threading.Thread(target=run_sleep)
    worker.start()
    try:
        killer = (
            "for i in $(seq 100); do for d in /proc/[0-9]*; do"
            " [ \"$(tr '\\0' ' ' <$d/cmdline 2>/dev/null)\" = 'sleep 37 ' ] && p=${d#/proc/}; done;"
            ' [ -n "$p" ] && break; usleep 100000; done; [ -n "$p" ] || exit 3;'
            ' n=0; while [ "$(cat /proc/$p/comm)" != dropbear ]; do'
            " p=$(cut -d' ' -f4 /proc/$p/stat); n=$((n + 1)); [ $n -gt 10 ] && exit 4; done;"
            " kill -9 $p && echo killed dropbear session $p"
        )
        code, output = shared_vm.shell(killer, timeout=30)
        worker.join(60)
    finally:
        transport.close()
    error = outcome.get("error")
    row.observed = (
        f"{type(error).__name__}: `{error}` after {outcome.get('elapsed', 0):.0f} s ({output.strip()})"
    )
    assert code == 0, output
    assert isinstance(error, GuestUnreachable)
    assert "dropped while running `sleep 37`" in str(error)
