"""SmbPsexecTransport against a real, private Samba ``smbd`` on a loopback port (recipe: test-peers.md).

Only the file half has a real peer here. Samba serves a share named ``ADMIN$`` but has no Windows
service control manager, so the PsExec command half cannot run against it: ``run`` is covered by unit
tests of its argument building at the end of this file, with pypsexec's network calls replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex

import pytest
from pypsexec.client import Client
from pypsexec.paexec import get_unique_id

from vmtest.errors import AuthenticationFailed, CommandTimeout, GuestError, GuestUnreachable
from vmtest.guest import smb as smb_module
from vmtest.guest.smb import SmbPsexecTransport, guest_path_to_unc, psexec_command
from vmtest.machine.ports import free_loopback_port

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
TOOLS = ("smbd", "smbpasswd", "useradd", "userdel", "nologin")


@dataclass(frozen=True)
class Samba:
    """A running private smbd: where it listens, what backs ADMIN$, and its one user."""

    port: int
    share: Path
    username: str
    password: str


def _config(root: Path, port: int) -> str:
    folders = {
        key: root / name
        for key, name in [
            ("private dir", "private"),
            ("lock directory", "lock"),
            ("state directory", "state"),
            ("cache directory", "cache"),
            ("pid directory", "pid"),
            ("ncalrpc dir", "ncalrpc"),
        ]
    }
    for folder in folders.values():
        folder.mkdir()
    lines = [
        "[global]",
        f"smb ports = {port}",
        "interfaces = lo",
        "bind interfaces only = yes",
        *(f"{key} = {folder}" for key, folder in folders.items()),
        f"log file = {root / 'log.smbd'}",
        f"passdb backend = tdbsam:{root / 'passdb.tdb'}",
        "usershare path =",
        "server min protocol = SMB2",
        "map to guest = Never",
        "disable spoolss = yes",
        "load printers = no",
        "[ADMIN$]",
        f"path = {root / 'share'}",
        "read only = no",
        # The test's folders are root's and private; serve them as root instead of loosening them.
        "force user = root",
    ]
    return "\n".join(lines) + "\n"


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (smbd forks smbd-notifyd, smbd-cleanupd and per-client smbds)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"smbd exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket() as probe:
            if probe.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"smbd did not listen on {port} within {START_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop smbd by its pid, then any of its children that outlived it, by theirs."""
    children = _children(process.pid)
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)
    for child in children:
        try:
            if b"smbd" in Path(f"/proc/{child}/cmdline").read_bytes():
                os.kill(child, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


@pytest.fixture
def samba(tmp_path: Path) -> Iterator[Samba]:
    """A throwaway smbd with an ADMIN$ share and a throwaway system user, both gone after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root (useradd, and smbd)")
    tools = {name: shutil.which(name) for name in TOOLS}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    root = tmp_path / "samba"
    (root / "share").mkdir(parents=True)
    port = free_loopback_port()
    config = root / "smb.conf"
    config.write_text(_config(root, port))
    user = Samba(
        port=port, share=root / "share", username=f"vmtsmb{token_hex(3)}", password=f"Pw-{token_hex(8)}"
    )
    subprocess.run([str(tools["useradd"]), "-M", "-s", str(tools["nologin"]), user.username], check=True)
    try:
        subprocess.run(
            [str(tools["smbpasswd"]), "-c", str(config), "-s", "-a", user.username],
            input=f"{user.password}\n{user.password}\n".encode(),
            check=True,
            capture_output=True,
        )
        log = root / "smbd.out"
        with log.open("wb") as out:
            # smbd signals its whole process group when it shuts down (seen here with
            # --no-process-group): a session of its own keeps pytest out of that group.
            process = subprocess.Popen(
                [str(tools["smbd"]), "--foreground", "--no-process-group", "-s", str(config)]
                + ["--debug-stdout", "-d", "1 auth_audit:3"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_listening(port, process, log)
            yield user
        finally:
            _stop(process)
    finally:
        subprocess.run([str(tools["userdel"]), user.username], check=False, capture_output=True)


def transport_for(samba: Samba, *, password: str | None = None) -> SmbPsexecTransport:
    return SmbPsexecTransport(
        LOOPBACK,
        samba.username,
        samba.password if password is None else password,
        run_id="samba-test",
        port=samba.port,
    )


# ------------------------------------------------------------------------------------- against Samba


def test_put_and_get_round_trip_300_kb_through_admin_share(samba: Samba, tmp_path: Path) -> None:
    data = os.urandom(300 * 1024)
    source = tmp_path / "payload.bin"
    source.write_bytes(data)
    put_progress: list[tuple[int, int]] = []
    get_progress: list[tuple[int, int]] = []
    back = tmp_path / "back.bin"
    with transport_for(samba) as transport:
        transport.wait_ready(START_TIMEOUT)
        transport.put(
            source, r"C:\Windows\payload.bin", timeout=30, progress=lambda d, t: put_progress.append((d, t))
        )
        assert (samba.share / "payload.bin").read_bytes() == data
        transport.get(
            r"C:\Windows\payload.bin", back, timeout=30, progress=lambda d, t: get_progress.append((d, t))
        )
    assert back.read_bytes() == data
    for progress in (put_progress, get_progress):
        assert progress[0] == (0, len(data))
        assert progress[-1] == (len(data), len(data))
        assert len(progress) > 2
        assert [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_a_missing_guest_file_is_a_guest_error_naming_it(samba: Samba, tmp_path: Path) -> None:
    with transport_for(samba) as transport, pytest.raises(GuestError, match=r"nope\.bin") as caught:
        transport.get(r"C:\Windows\nope.bin", tmp_path / "nope.bin", timeout=10)
    assert not isinstance(caught.value, (GuestUnreachable, AuthenticationFailed))


def test_wrong_password_is_authentication_failed_at_once(samba: Samba) -> None:
    wrong = f"not-{samba.password}"
    with transport_for(samba, password=wrong) as transport, pytest.raises(AuthenticationFailed) as caught:
        transport.wait_ready(START_TIMEOUT)
    # smbd logs every authentication it refuses (auth_audit:3); bad credentials tried once make one line.
    refusals = samba_log_lines(samba, "status [NT_STATUS_WRONG_PASSWORD]", at_least=1)
    assert len(refusals) == 1, f"bad credentials must not be retried: {refusals}"
    assert samba.username in str(caught.value)
    assert wrong not in str(caught.value) and samba.password not in str(caught.value)


def test_closed_port_is_guest_unreachable_quickly(tmp_path: Path) -> None:
    port = free_loopback_port()  # nothing listens there
    source = tmp_path / "x.bin"
    source.write_bytes(b"x")
    with SmbPsexecTransport(LOOPBACK, "nobody", "secret-pw", run_id="closed", port=port) as transport:
        with pytest.raises(GuestUnreachable, match=str(port)) as caught:
            transport.wait_ready(0.5)
        # Each refusal is followed by the retry pause: until the 0.5 s deadline that is at most
        # 0.5 / pause + 1 attempts, and more than one (a refusal is retried).
        attempts = int(re.search(r"within 0.5 s \((\d+) attempts\)", str(caught.value)).group(1))  # type: ignore[union-attr]
        assert 1 < attempts <= 0.5 / smb_module._RETRY_PAUSE + 1, "retries a refusal until the deadline"
        assert "secret-pw" not in str(caught.value)
        # Outside wait_ready nothing is retried: a put tries one connection, to a listener that counts
        # them and closes each at once.
        with counting_listener(port) as accepted, pytest.raises(GuestUnreachable, match="cannot reach SMB"):
            transport.put(source, r"C:\Windows\x.bin", timeout=10)
        assert accepted == [1], "put retried the connection"


@contextlib.contextmanager
def counting_listener(port: int) -> Iterator[list[int]]:
    """A listener on ``port`` that closes every connection at once; yields ``[connections accepted]``."""
    accepted = [0]
    server = socket.create_server((LOOPBACK, port))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            accepted[0] += 1
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield accepted
    finally:
        stop.set()
        thread.join(5)
        server.close()


def samba_log_lines(samba: Samba, text: str, *, at_least: int) -> list[str]:
    """The lines of smbd's log containing ``text``, once there are ``at_least`` (or START_TIMEOUT passed)."""
    log = samba.share.parent / "smbd.out"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        found = [line for line in log.read_text(errors="replace").splitlines() if text in line]
        if len(found) >= at_least or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


# ---------------------------------------------------- unit tests: guest paths, and PsExec's arguments


@pytest.mark.parametrize(
    ("path", "unc"),
    [
        (r"C:\Windows\payload.bin", r"\\127.0.0.1\ADMIN$\payload.bin"),
        ("c:/windows/Temp/dbg.csv", r"\\127.0.0.1\ADMIN$\Temp\dbg.csv"),
        (r"C:\vmtest\run1\drv.sys", r"\\127.0.0.1\C$\vmtest\run1\drv.sys"),
        (r"C:\Windowsold\x", r"\\127.0.0.1\C$\Windowsold\x"),
        (r"d:\logs\k.txt", r"\\127.0.0.1\D$\logs\k.txt"),
    ],
)
def test_guest_paths_map_to_administrative_shares(path: str, unc: str) -> None:
    assert guest_path_to_unc(LOOPBACK, path) == unc


@pytest.mark.parametrize("path", ["relative\\x", r"\\server\share\x", r"C:\Windows", "C:\\", r"C:\a\..\b"])
def test_unmappable_guest_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match=r"guest path|'\.\.'|share root"):
        guest_path_to_unc(LOOPBACK, path)


@dataclass
class FakePsexec:
    """Replaces pypsexec Client's network calls; records what the transport asked for."""

    delay: float = 0.0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
        calls: list[tuple[str, object]] = []
        fake = self

        def connect(client: Client, timeout: int = 60) -> None:
            calls.append(("connect", timeout))

        def create_service(client: Client) -> None:
            calls.append(("create_service", client.service_name))

        def run_executable(client: Client, executable: str, **options: object) -> tuple[bytes, bytes, int]:
            calls.append(
                ("run", (executable, options["arguments"], options["timeout_seconds"], options["stdin"]))
            )
            time.sleep(fake.delay)
            return b"out\r\n", b"", 3

        def remove_service(client: Client) -> None:
            calls.append(("remove_service", client.service_name))

        def disconnect(client: Client) -> None:
            calls.append(("disconnect", None))

        def cleanup(client: Client) -> None:
            raise AssertionError("cleanup() deletes every PAExec service on the guest, other runs' too")

        for name, function in [
            ("connect", connect),
            ("create_service", create_service),
            ("run_executable", run_executable),
            ("remove_service", remove_service),
            ("disconnect", disconnect),
            ("cleanup", cleanup),
        ]:
            monkeypatch.setattr(Client, name, function)
        return calls


SC_CREATE = [
    "sc.exe",
    "create",
    "drv",
    "type=",
    "kernel",
    "start=",
    "demand",
    "binPath=",
    r"C:\my drivers\drv.sys",
]


def test_psexec_runs_cmd_exe_with_the_argv_quoted_for_cmd() -> None:
    assert psexec_command(SC_CREATE) == (
        "cmd.exe",
        r'/c sc.exe create drv type= kernel start= demand binPath= ^"C:\my drivers\drv.sys^"',
    )


def test_run_uses_a_run_unique_service_and_removes_only_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = FakePsexec().install(monkeypatch)
    transport = SmbPsexecTransport(LOOPBACK, "Administrator", "secret-pw", run_id="run-7", port=10445)
    result = transport.run(SC_CREATE, timeout=29.5, stdin=b"y\r\n")
    transport.run(["ver"], timeout=5)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\r\n", b"")
    assert result.command == psexec_command(SC_CREATE)[1][len("/c ") :]
    client = transport._client
    assert client is not None
    assert client.service_name == "vmtest-run-7-PAExec"
    assert not client.service_name.lower().startswith("paexec"), "pypsexec's cleanup() would match it"
    assert client._exe_file == "vmtest-run-7-PAExec.exe"
    assert client._service.name == client.service_name
    assert client.current_host == "vmtest-run-7"
    assert client._stdout_pipe_name == f"PaExecOutvmtest-run-7{os.getpid()}"
    assert client._unique_id == get_unique_id(os.getpid(), "vmtest-run-7")
    transport.close()
    transport.close()
    assert calls == [
        ("connect", 10),
        ("create_service", "vmtest-run-7-PAExec"),
        ("run", ("cmd.exe", psexec_command(SC_CREATE)[1], 30, b"y\r\n")),
        ("run", ("cmd.exe", "/c ver", 5, None)),
        ("remove_service", "vmtest-run-7-PAExec"),
        ("disconnect", None),
    ]


def test_two_runs_in_one_process_do_not_share_names(monkeypatch: pytest.MonkeyPatch) -> None:
    FakePsexec().install(monkeypatch)
    first = SmbPsexecTransport(LOOPBACK, "a", "pw", run_id="one")
    second = SmbPsexecTransport(LOOPBACK, "a", "pw", run_id="two")
    first.run(["ver"], timeout=5)
    second.run(["ver"], timeout=5)
    assert first._client is not None and second._client is not None
    assert first._client.service_name != second._client.service_name
    assert first._client._stdout_pipe_name != second._client._stdout_pipe_name


def test_a_command_past_its_deadline_is_a_command_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    FakePsexec(delay=0.05).install(monkeypatch)
    with (
        SmbPsexecTransport(LOOPBACK, "a", "pw", run_id="slow") as transport,
        pytest.raises(CommandTimeout, match="deadline"),
    ):
        transport.run(["ping", "-n", "100", "127.0.0.1"], timeout=0.01)


@pytest.mark.parametrize("run_id", ["", "has space", "semi;colon", "x" * 65])
def test_run_ids_that_cannot_name_a_service_are_refused(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        SmbPsexecTransport(LOOPBACK, "a", "pw", run_id=run_id)
