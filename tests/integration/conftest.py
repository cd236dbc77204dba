"""A real OpenSSH server on 127.0.0.1 for the SSH transport tests, started and stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmtest.machine.ports import free_loopback_port

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0


def make_key_pair(private_path: Path, comment: str) -> str:
    """Write an OpenSSH ed25519 private key (mode 0600) and return its public key line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, found through /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Sshd:
    """One running sshd: where it listens, how to log in, and its process."""

    port: int
    user: str
    host_key: str
    client_key: Path
    process: subprocess.Popen[bytes]
    log: Path

    def session_commands(self) -> list[list[str]]:
        """The argument vectors of every process below the listener."""
        commands = []
        for pid in descendants(self.process.pid):
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            commands.append(raw.decode(errors="replace").split("\0")[:-1])
        return commands

    def connections(self) -> list[str]:
        """The "Connection from" lines of the log: one per TCP connection sshd accepted (LogLevel VERBOSE)."""
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if "Connection from " in line]

    def kill_sessions(self) -> None:
        """SIGKILL every process serving a connection (and the commands they run); keep listening."""
        kill_pids(descendants(self.process.pid))

    def stop(self) -> None:
        """Kill the listener and everything below it, by pid."""
        below = descendants(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=10)
        kill_pids(below)


@dataclass
class SshdFactory:
    """Starts sshd instances sharing one host key and one authorized client key."""

    root: Path
    user: str
    host_key: str
    client_key: Path
    started: list[Sshd] = field(default_factory=list)

    def start(self, port: int | None = None, *, first: tuple[str, ...] = ()) -> Sshd:
        """Start an sshd; ``first`` are config lines placed before the defaults (sshd keeps the first)."""
        port = port if port is not None else free_loopback_port()
        config = self._write_config(port, first)
        log = self.root / f"sshd-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        sshd = Sshd(port, self.user, self.host_key, self.client_key, process, log)
        self.started.append(sshd)
        _wait_listening(sshd)
        return sshd

    def _write_config(self, port: int, first: tuple[str, ...]) -> Path:
        config = self.root / f"sshd-{port}.conf"
        config.write_text(
            "\n".join(
                [
                    *first,
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.root / 'host_ed25519'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    f"PidFile {self.root / f'sshd-{port}.pid'}",
                    "StrictModes no",  # the temporary directory lies under the world-writable /tmp
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication yes",  # so that a wrong password is answered, and refused
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    f"Subsystem sftp {SFTP_SERVER}",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        return config

    def stop_all(self) -> None:
        for sshd in self.started:
            sshd.stop()


def _wait_listening(sshd: Sshd) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if sshd.process.poll() is not None:
            raise RuntimeError(f"sshd exited with {sshd.process.returncode}:\n{sshd.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", sshd.port), timeout=1):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        # sshd logs this probe's connection from the process it forks: wait for that line, so that a
        # test counting connections (``Sshd.connections``) counts only its own.
        while not sshd.connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    sshd.stop()
    raise RuntimeError(f"sshd did not listen on port {sshd.port}:\n{sshd.log.read_text()}")


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFactory]:
    if not SSHD.exists() or not SFTP_SERVER.exists():
        pytest.skip("OpenSSH's server is not installed: run `./setup.sh --dev`")
    if os.geteuid() != 0:
        pytest.skip("the sshd peer runs as root (it logs in as root with a key)")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    root = tmp_path_factory.mktemp("sshd")
    host_key = make_key_pair(root / "host_ed25519", "test-host")
    client_key = root / "client_ed25519"
    (root / "authorized_keys").write_text(make_key_pair(client_key, "test-client") + "\n")
    factory = SshdFactory(root, pwd.getpwuid(os.geteuid()).pw_name, host_key, client_key)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def sshd(sshd_factory: SshdFactory) -> Sshd:
    return sshd_factory.start()


@pytest.fixture(scope="session")
def new_key_pair() -> Callable[[Path, str], str]:
    """``new_key_pair(private_path, comment)`` writes a fresh ed25519 key and returns its public line."""
    return make_key_pair
