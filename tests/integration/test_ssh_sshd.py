"""SshTransport against a real OpenSSH server on 127.0.0.1 (see conftest.py): no mock of paramiko."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vmtest.config.models import SshConfig
from vmtest.errors import AuthenticationFailed, CommandTimeout, GuestError, GuestUnreachable, HostKeyMismatch
from vmtest.guest import ssh as ssh_module
from vmtest.guest.ssh import SshTransport
from vmtest.images.linux import LinuxImage
from vmtest.machine.ports import free_loopback_port

if TYPE_CHECKING:
    from conftest import Sshd, SshdFactory

KeyMaker = Callable[[Path, str], str]
PARAMIKO_LOG = "vmtest.guest.ssh.paramiko"

HOST = "127.0.0.1"
PASSWORD = "not-the-password-7Qx"  # never valid: root may only log in with a key


def transport_for(sshd: Sshd, **overrides: object) -> SshTransport:
    options: dict[str, object] = {
        "host": HOST,
        "port": sshd.port,
        "user": sshd.user,
        "key": sshd.client_key,
        "password": None,
        "host_key": sshd.host_key,
    }
    options.update(overrides)
    return SshTransport(**options)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line, computed without paramiko."""
    digest = hashlib.sha256(base64.b64decode(public_line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@pytest.fixture
def ssh(sshd: Sshd) -> Iterator[SshTransport]:
    transport = transport_for(sshd)
    transport.wait_ready(10)
    try:
        yield transport
    finally:
        transport.close()


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        "head -c 8000000 /dev/zero >&2 & head -c 10000000 /dev/zero; wait",
        "head -c 8000000 /dev/zero >&2; head -c 10000000 /dev/zero",
    ],
    ids=["together", "stderr-first"],
)
def test_large_output_on_both_streams_does_not_deadlock(ssh: SshTransport, script: str) -> None:
    result = ssh.run(["sh", "-c", script], timeout=60)
    assert result.exit_code == 0
    assert len(result.stdout) == 10_000_000
    assert len(result.stderr) == 8_000_000


def test_exit_status_is_reported(ssh: SshTransport) -> None:
    assert ssh.run(["sh", "-c", "echo out; echo err >&2; exit 7"], timeout=10).exit_code == 7
    result = ssh.run(["true"], timeout=10)
    assert result.ok and result.stdout == b"" and result.stderr == b""


def test_stdin_is_fed_while_output_is_drained(ssh: SshTransport) -> None:
    data = os.urandom(5_000_000)  # more than the channel window, echoed back as it is read
    result = ssh.run(["cat"], timeout=60, stdin=data)
    assert result.ok
    assert result.stdout == data


def test_without_stdin_the_command_reads_eof(ssh: SshTransport) -> None:
    assert ssh.run(["wc", "-c"], timeout=10).stdout.strip() == b"0"


def test_arguments_arrive_verbatim(ssh: SshTransport) -> None:
    arguments = [
        "two words",
        'it\'s "quoted"',
        "$HOME",
        "a; echo injected",
        "`id` $(id)",
        "*",
        "~",
        "back\\slash",
        "",
        "-n",
        "tab\there",
        "line\nbreak",
        "ünïcödé & | > <",
    ]
    result = ssh.run(["printf", "%s\\n", *arguments], timeout=10)
    assert result.ok, result.text()
    assert result.stdout.decode() == "".join(f"{argument}\n" for argument in arguments)
    assert result.command.startswith("printf ")


def test_concurrent_commands_share_one_connection_made_on_first_use(sshd: Sshd) -> None:
    transport = transport_for(sshd)  # not connected: every thread races to connect first
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            script = f"head -c 2000000 /dev/zero; echo {index}"
            results[index] = transport.run(["sh", "-c", script], timeout=30).stdout
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        transport.close()
    assert errors == []
    assert {index: (len(out), out[-2:]) for index, out in results.items()} == {
        index: (2_000_002, f"{index}\n".encode()) for index in range(6)
    }


def test_deadline_closes_the_channel_and_says_what_came(ssh: SshTransport, tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    script = f"echo $$ > {pid_file}; echo partial; exec sleep 30"
    sleeping_on = False
    try:
        with pytest.raises(CommandTimeout) as caught:
            ssh.run(["sh", "-c", script], timeout=1)
        # The deadline, not the command's end, ended the wait: the command still sleeps.
        sleeping_on = pid_file.exists() and alive(int(pid_file.read_text()))
    finally:
        # sshd leaves the command running when the channel closes: stop it here, by its pid.
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert sleeping_on
    message = str(caught.value)
    assert "sleep 30" in message and "within 1 s" in message
    assert "8 bytes of stdout" in message
    assert ssh.run(["echo", "still usable"], timeout=10).stdout == b"still usable\n"


def test_dropped_connection_mid_command_is_unreachable_quickly(ssh: SshTransport, sshd: Sshd) -> None:
    def kill_when_sleeping() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if ["sleep", "31"] in sshd.session_commands():
                sshd.kill_sessions()
                return

    killer = threading.Thread(target=kill_when_sleeping)
    killer.start()
    try:
        # A wait that ignored the drop would end at the deadline, as a CommandTimeout.
        with pytest.raises(GuestUnreachable) as caught:
            ssh.run(["sleep", "31"], timeout=60)
    finally:
        killer.join()
    assert "dropped while running `sleep 31`" in str(caught.value)
    # The next command connects again (run itself never retries).
    assert ssh.run(["echo", "back"], timeout=10).stdout == b"back\n"


# --------------------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------------------


def test_wrong_host_key_fails_at_once_with_both_fingerprints(
    sshd: Sshd, tmp_path: Path, new_key_pair: KeyMaker
) -> None:
    pinned = new_key_pair(tmp_path / "other_host_key", "impostor")
    transport = transport_for(sshd, host_key=pinned)
    before = len(sshd.connections())
    with pytest.raises(HostKeyMismatch) as caught:
        transport.wait_ready(timeout=30)
    assert len(sshd.connections()) - before == 1, "a wrong host key is retried"
    message = str(caught.value)
    assert fingerprint(pinned) in message
    assert fingerprint(sshd.host_key) in message
    assert "insecure_accept_any_host_key: true" in message


def test_wrong_password_fails_at_once_without_showing_it(sshd: Sshd) -> None:
    transport = transport_for(sshd, key=None, password=PASSWORD)
    before = len(sshd.connections())
    with pytest.raises(AuthenticationFailed) as caught:
        transport.wait_ready(timeout=30)
    assert len(sshd.connections()) - before == 1, "a refused password is retried"
    assert PASSWORD not in str(caught.value)
    assert "with a password" in str(caught.value)


def test_unauthorized_key_fails_at_once(sshd: Sshd, tmp_path: Path, new_key_pair: KeyMaker) -> None:
    new_key_pair(tmp_path / "stranger", "stranger")
    transport = transport_for(sshd, key=tmp_path / "stranger")
    before = len(sshd.connections())
    with pytest.raises(AuthenticationFailed, match="with the key"):
        transport.wait_ready(timeout=30)
    assert len(sshd.connections()) - before == 1, "a refused key is retried"


def test_wait_ready_waits_for_a_server_that_starts_later(
    sshd_factory: SshdFactory, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_loopback_port()
    late: list[Sshd] = []
    starter = threading.Timer(2.0, lambda: late.append(sshd_factory.start(port)))
    starter.start()
    try:
        transport = SshTransport(
            host=HOST,
            port=port,
            user=sshd_factory.user,
            key=sshd_factory.client_key,
            password=None,
            host_key=sshd_factory.host_key,
        )
        with caplog.at_level(logging.INFO, logger="vmtest.guest.ssh"):
            transport.wait_ready(timeout=30)
        connected = [record.getMessage() for record in caplog.records if "SSH connected" in record.message]
        attempts = int(re.search(r"after (\d+) attempt", connected[-1]).group(1))  # type: ignore[union-attr]
        assert attempts > 1, "connected at the first attempt, before the server started"
        assert len(late[0].connections()) == 2  # the factory's own check that it listens, then the login
        assert transport.run(["echo", "up"], timeout=10).stdout == b"up\n"
        transport.close()
    finally:
        starter.join()
        for server in late:
            server.stop()


def test_a_login_that_times_out_is_retried_not_refused(sshd_factory: SshdFactory) -> None:
    # Every public-key check takes 2 s (like a guest too busy to answer): paramiko's auth timeout is
    # an AuthenticationException too, but it must not end the wait as refused credentials.
    slow = sshd_factory.start(
        first=(
            "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand {shutil.which('sleep')} 2",
            "AuthorizedKeysCommandUser nobody",
        )
    )
    try:
        transport = transport_for(slow, connect_timeout=0.5)
        with pytest.raises(GuestUnreachable, match="Authentication timeout"):
            transport.wait_ready(timeout=2)
    finally:
        slow.stop()


def test_wait_ready_gives_up_naming_the_address_and_last_error() -> None:
    port = free_loopback_port()
    transport = SshTransport(
        host=HOST, port=port, user="root", key=None, password="x", host_key=None, accept_any_host_key=True
    )
    with pytest.raises(GuestUnreachable) as caught:
        transport.wait_ready(timeout=1)
    # Refused at once, each attempt is followed by the retry pause: within the 1 s deadline that is
    # at most 1 / pause + 1 attempts; a wait that overran its deadline would make more.
    attempts = int(re.search(r"within 1 s \((\d+) attempts\)", str(caught.value)).group(1))  # type: ignore[union-attr]
    assert 1 < attempts <= 1 / ssh_module._RETRY_PAUSE + 1, attempts
    assert f"{HOST}:{port}" in str(caught.value)
    assert "Unable to connect" in str(caught.value)


def test_banner_failures_while_polling_stay_out_of_the_terminal(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen()
    stop = threading.Event()

    def accept_and_hang_up() -> None:  # like QEMU's port forward before the guest's sshd listens
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    server = threading.Thread(target=accept_and_hang_up)
    server.start()
    caplog.set_level(logging.DEBUG, logger="vmtest.guest.ssh")
    transport = SshTransport(
        host=HOST,
        port=listener.getsockname()[1],
        user="root",
        key=None,
        password="x",
        host_key=None,
        accept_any_host_key=True,
    )
    try:
        with pytest.raises(GuestUnreachable, match="Error reading SSH protocol banner"):
            transport.wait_ready(timeout=1.5)
    finally:
        stop.set()
        server.join()
        listener.close()
    from_paramiko = [record for record in caplog.records if record.name.startswith(PARAMIKO_LOG)]
    assert from_paramiko, "paramiko's records should reach the debug log"
    assert all(record.levelno == logging.DEBUG for record in from_paramiko)
    assert "Traceback" not in capfd.readouterr().err


def test_accept_any_host_key_warns_once(sshd: Sshd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vmtest.guest.ssh")
    transport = transport_for(sshd, host_key=None, accept_any_host_key=True)
    try:
        transport.wait_ready(10)
        transport.close()
        assert transport.run(["true"], timeout=10).ok  # connects again
    finally:
        transport.close()
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "insecure_accept_any_host_key" in warnings[0].getMessage()
    assert fingerprint(sshd.host_key) in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("host_key", "accept_any", "expected"),
    [
        (None, False, "insecure_accept_any_host_key: true"),
        ("ssh-ed25519 AAAA", True, "choose one"),
        ("ssh-ed25519 not-base64!", False, "not a public key line"),
        ("just-one-field", False, "not a public key line"),
    ],
)
def test_host_key_settings_are_checked_up_front(
    sshd: Sshd, host_key: str | None, accept_any: bool, expected: str
) -> None:
    with pytest.raises(GuestError, match=expected):
        transport_for(sshd, host_key=host_key, accept_any_host_key=accept_any)


def test_credentials_are_required(sshd: Sshd) -> None:
    with pytest.raises(GuestError, match="no SSH credentials"):
        transport_for(sshd, key=None, password=None)


def fake_image(tmp_path: Path, client_key: Path, host_key: str) -> LinuxImage:
    return LinuxImage(
        root=tmp_path,
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        disk=tmp_path / "disk.qcow2",
        client_key=client_key,
        host_key=host_key,
        kernel_release="0.0.0-test",
        headers=tmp_path / "headers",
        ready_marker="READY",
    )


def test_for_guest_takes_the_keys_from_the_image(sshd: Sshd, tmp_path: Path) -> None:
    image = fake_image(tmp_path, sshd.client_key, sshd.host_key)
    with SshTransport.for_guest(SshConfig(user=sshd.user), sshd.port, image) as transport:
        assert isinstance(transport, SshTransport)
        assert transport.host == HOST and transport.key == sshd.client_key
        transport.wait_ready(10)
        assert transport.run(["echo", "pinned"], timeout=10).stdout == b"pinned\n"


def test_for_guest_configured_host_key_overrides_the_image(
    sshd: Sshd, tmp_path: Path, new_key_pair: KeyMaker
) -> None:
    other = new_key_pair(tmp_path / "other", "other")
    image = fake_image(tmp_path, sshd.client_key, sshd.host_key)
    transport = SshTransport.for_guest(SshConfig(user=sshd.user, host_key=other), sshd.port, image)
    with pytest.raises(HostKeyMismatch):
        transport.wait_ready(10)


def test_for_guest_insecure_flag_does_not_pin_the_image_key(
    sshd: Sshd, tmp_path: Path, new_key_pair: KeyMaker
) -> None:
    stale = new_key_pair(tmp_path / "stale", "stale")
    image = fake_image(tmp_path, sshd.client_key, stale)
    config = SshConfig(user=sshd.user, insecure_accept_any_host_key=True)
    with SshTransport.for_guest(config, sshd.port, image) as transport:
        transport.wait_ready(10)


def test_for_guest_without_image_needs_settings(sshd: Sshd) -> None:
    with pytest.raises(GuestError, match="no host key"):
        SshTransport.for_guest(SshConfig(user=sshd.user, key=sshd.client_key), sshd.port, None)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def test_put_and_get_round_trip_with_progress(
    ssh: SshTransport, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vmtest.guest.ssh")
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3_000_000))
    remote = tmp_path / "guest" / "copy.bin"
    remote.parent.mkdir()
    calls: list[tuple[int, int]] = []
    ssh.put(source, str(remote), timeout=30, progress=lambda done, total: calls.append((done, total)))
    assert remote.read_bytes() == source.read_bytes()
    assert len(calls) > 10 and calls[-1] == (3_000_000, 3_000_000)

    back = tmp_path / "back.bin"
    got: list[tuple[int, int]] = []
    ssh.get(str(remote), back, timeout=30, progress=lambda done, total: got.append((done, total)))
    assert back.read_bytes() == source.read_bytes()
    assert got[-1] == (3_000_000, 3_000_000)
    assert not (tmp_path / "back.bin.part").exists()
    from_sftp = [record for record in caplog.records if record.name == f"{PARAMIKO_LOG}.sftp"]
    assert from_sftp and all(record.levelno == logging.DEBUG for record in from_sftp)


def test_put_into_a_missing_directory_names_the_path(ssh: SshTransport, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    remote = str(tmp_path / "no-such-dir" / "file.bin")
    with pytest.raises(GuestError) as caught:
        ssh.put(source, remote, timeout=10)
    assert not isinstance(caught.value, GuestUnreachable)
    assert remote in str(caught.value) and "no such file" in str(caught.value)


def test_get_of_a_missing_file_leaves_nothing_behind(ssh: SshTransport, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    with pytest.raises(GuestError, match="no such file"):
        ssh.get(str(tmp_path / "absent.bin"), local, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_put_is_retried_once_when_the_connection_drops_mid_copy(
    ssh: SshTransport, sshd: Sshd, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(20_000_000))
    remote = tmp_path / "copy.bin"
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 5:
            sshd.kill_sessions()

    ssh.put(source, str(remote), timeout=60, progress=progress)
    assert remote.read_bytes() == source.read_bytes()
    restarts = [i for i in range(1, len(calls)) if calls[i] < calls[i - 1]]
    assert len(restarts) == 1, "the copy should have started over exactly once"
