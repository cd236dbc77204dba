"""The SSH transport, on paramiko: commands and SFTP copies for Linux guests and Windows OpenSSH.

The guest's host key is always checked against a pinned public key (the one recorded when the image was
built), held in an in-memory ``HostKeys`` and never written to a ``known_hosts`` file. The only way
around it is an explicit opt-out for throwaway VMs, which warns once.

paramiko logs every failed banner read with a traceback at ERROR level, and a guest that boots fails many
of them. Every paramiko object made here logs to ``vmtest.guest.ssh.paramiko`` instead of ``paramiko``,
where its records are demoted to DEBUG: they reach the run's log file, never the user's terminal, whatever
the ``paramiko`` logger is set to. vmtest raises its own, clearer errors.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import paramiko
from paramiko.pkey import UnknownKeyType
from paramiko.ssh_exception import IncompatiblePeer, NoValidConnectionsError

from vmtest.config.models import SshConfig
from vmtest.errors import AuthenticationFailed, CommandTimeout, GuestError, GuestUnreachable, HostKeyMismatch
from vmtest.guest.quoting import ShellKind, join_for
from vmtest.guest.transport import CommandResult, ProgressCallback, Transport
from vmtest.images.linux import LinuxImage
from vmtest.machine.ports import LOOPBACK

__all__ = ["SshTransport", "sftp_path"]

logger = logging.getLogger(__name__)

_PARAMIKO_LOG = f"{__name__}.paramiko"
_RETRY_PAUSE = 0.25  # seconds between connection attempts while the guest boots
_MIN_WAIT = 0.1  # the shortest timeout handed to paramiko, so that a spent deadline still tries once
_CHANNEL_RETRY = 0.2  # seconds between asks for a channel the server refused
_CHUNK = 65536
_DROP_SETTLE = 1.0  # how long a failed copy waits to learn whether the connection died
_MAX_IDLE = 0.02  # the longest sleep of the command loop when no stream moved
_DRIVE = re.compile(r"^[A-Za-z]:")

# What a failed connection attempt can raise; AuthenticationException and BadHostKeyException are among
# the SSHExceptions, and are singled out before anything is retried.
_CONNECT_ERRORS = (paramiko.SSHException, EOFError, OSError)

# paramiko's messages for a login that timed out or lost its connection: both heal with a retry.
_INTERRUPTED_LOGIN = ("Authentication timeout.", "transport shut down or saw EOF")

Direction = Literal["put", "get"]


class _DemoteToDebug(logging.Filter):
    """Turns every record into a DEBUG record: paramiko's errors are vmtest's to report, not its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the level; keep the record."""
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return True


def _quiet_paramiko_logs() -> None:
    """Demote the records of the log channel given to paramiko; drop its DEBUG chatter (kex details).

    A logger's filters see only the records logged on it, so each name paramiko derives gets one: its
    transport and channels log on the channel's name, its SFTP client on ``.sftp`` below it.
    """
    for name in (_PARAMIKO_LOG, f"{_PARAMIKO_LOG}.sftp"):
        logging.getLogger(name).addFilter(_DemoteToDebug())
    logging.getLogger(_PARAMIKO_LOG).setLevel(logging.INFO)


_quiet_paramiko_logs()


def sftp_path(remote: str, shell: ShellKind) -> str:
    r"""The form of the guest path ``remote`` that the guest's SFTP server accepts.

    Windows OpenSSH (``shell == "cmd"``) wants ``/C:/dir/file``: ``C:\dir\file`` and ``C:/dir/file`` are
    rewritten to it, and backslashes become slashes. POSIX paths are returned unchanged.
    """
    if shell == "posix":
        return remote
    path = remote.replace("\\", "/")
    return f"/{path}" if _DRIVE.match(path) else path


class _AcceptAnyHostKey(paramiko.MissingHostKeyPolicy):
    """Accepts whatever host key the guest offers, and warns about it once: for throwaway VMs only."""

    def __init__(self) -> None:
        self._warned = False

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        """Accept ``key`` without pinning it; warn the first time."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        logger.log(
            level,
            "not checking the SSH host key of %s (it offered %s %s): insecure_accept_any_host_key is set,"
            " which is safe only for throwaway VMs",
            hostname,
            key.get_name(),
            key.fingerprint,
        )


class _CopyDeadline(Exception):
    """Raised from the SFTP progress callback to stop a copy that ran past its deadline."""


class SshTransport(Transport):
    """Commands and file copies over SSH, with the guest's host key pinned.

    ``run`` is never retried automatically (a command may not be idempotent); ``put`` and ``get`` are
    retried once, after reconnecting, when the connection drops mid-copy. Each method connects first
    (a single attempt) if there is no live connection; call ``wait_ready`` to wait for a booting guest.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        key: Path | None,
        password: str | None,
        host_key: str | None,
        accept_any_host_key: bool = False,
        shell: ShellKind = "posix",
        keepalive: float = 15.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if (host_key is not None) == accept_any_host_key:
            raise GuestError(_host_key_advice(host, port, both=accept_any_host_key))
        if key is None and password is None:
            raise GuestError(f"no SSH credentials for {user}@{host}:{port}: set ssh.key or ssh.password")
        self.host = host
        self.port = port
        self.user = user
        self.key = key
        self.shell: ShellKind = shell
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self._password = password
        self._pkey = _load_private_key(key) if key is not None else None
        self._host_key = _parse_host_key(host_key) if host_key is not None else None
        self._accept_any = _AcceptAnyHostKey()
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_guest(
        cls,
        ssh: SshConfig,
        port: int,
        image: LinuxImage | None,
        *,
        host: str = LOOPBACK,
        shell: ShellKind = "posix",
    ) -> SshTransport:
        """The transport to a guest whose SSH port is forwarded to ``host:port``.

        The client key and the pinned host key default to the image's (recorded when it was built);
        the configuration overrides either. With ``insecure_accept_any_host_key`` the image's host key
        is not pinned.
        """
        host_key = ssh.host_key
        if host_key is None and not ssh.insecure_accept_any_host_key and image is not None:
            host_key = image.host_key
        return cls(
            host=host,
            port=port,
            user=ssh.user,
            key=ssh.key if ssh.key is not None else (image.client_key if image is not None else None),
            password=ssh.password.get_secret_value() if ssh.password is not None else None,
            host_key=host_key,
            accept_any_host_key=ssh.insecure_accept_any_host_key,
            shell=shell,
        )

    @property
    def address(self) -> str:
        """``host:port``, for messages."""
        return f"{self.host}:{self.port}"

    # ----------------------------------------------------------------------------------------------
    # Connecting
    # ----------------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        """Connect, retrying only what heals while the guest boots, until ``timeout`` seconds pass.

        Refused connections, banner errors, resets, EOF and socket timeouts are retried. A refused login
        raises AuthenticationFailed and a wrong host key HostKeyMismatch at once; the deadline raises
        GuestUnreachable naming the address and the last error.
        """
        deadline = time.monotonic() + timeout
        attempts = 0
        while not self._connected():
            attempts += 1
            try:
                client = self._connect(max(min(self.connect_timeout, deadline - time.monotonic()), _MIN_WAIT))
            except _CONNECT_ERRORS as error:
                self._raise_if_fatal(error)
                logger.debug("SSH to %s not ready (attempt %d): %s", self.address, attempts, _describe(error))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestUnreachable(
                        f"no SSH connection to {self.address} within {timeout:g} s ({attempts} attempts);"
                        f" last error: {_describe(error)}"
                    ) from error
                time.sleep(min(_RETRY_PAUSE, remaining))
                continue
            self._adopt(client)
            logger.info("SSH connected to %s@%s after %d attempt(s)", self.user, self.address, attempts)

    def _connected(self) -> bool:
        with self._lock:
            return _live_transport(self._client) is not None

    def _adopt(self, client: paramiko.SSHClient) -> paramiko.Transport:
        """Keep ``client`` unless another thread connected meanwhile (then drop it); return the live one."""
        with self._lock:
            live = _live_transport(self._client)
            if live is None:
                stale, self._client = self._client, client
                live = client.get_transport()
            else:
                stale = client
        if stale is not None:
            stale.close()
        assert live is not None  # a connected client has a transport
        return live

    def _transport(self, timeout: float) -> paramiko.Transport:
        """The live connection, connecting once (no retries) if there is none."""
        with self._lock:
            transport = _live_transport(self._client)
            if transport is not None:
                return transport
        try:
            client = self._connect(max(min(self.connect_timeout, timeout), _MIN_WAIT))
        except _CONNECT_ERRORS as error:
            self._raise_if_fatal(error)
            raise GuestUnreachable(
                f"cannot connect to {self.address} over SSH: {_describe(error)}"
                " (if the guest is still booting, call wait_ready first)"
            ) from error
        return self._adopt(client)

    def _connect(self, timeout: float) -> paramiko.SSHClient:
        """One connection attempt, every step of it bounded by ``timeout``."""
        client = paramiko.SSHClient()
        client.set_log_channel(_PARAMIKO_LOG)
        if self._host_key is not None:
            name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
            client.get_host_keys().add(name, self._host_key.get_name(), self._host_key)
        else:
            client.set_missing_host_key_policy(self._accept_any)
        try:
            client.connect(
                self.host,
                self.port,
                username=self.user,
                password=self._password,
                pkey=self._pkey,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
            transport = client.get_transport()
            if transport is None:
                raise EOFError("the connection closed right after login")
        except BaseException:
            client.close()
            raise
        transport.set_keepalive(self.keepalive)
        return client

    def _raise_if_fatal(self, error: BaseException) -> None:
        """Raise the vmtest error for a failed connection that retrying cannot heal."""
        if isinstance(error, paramiko.BadHostKeyException):
            raise HostKeyMismatch(
                f"the SSH server at {self.address} offered the host key {_fingerprint(error.key)},"
                f" but {_fingerprint(error.expected_key)} is pinned. If the guest's host key really"
                " changed, pin the new one (ssh.host_key), or set `insecure_accept_any_host_key: true`"
                " for throwaway VMs"
            ) from None
        if isinstance(error, paramiko.AuthenticationException) and not _login_interrupted(error):
            raise AuthenticationFailed(
                f"the SSH server at {self.address} refused {self.user!r} {self._credentials()}:"
                f" {_describe(error)}; check ssh.user, ssh.key and ssh.password"
            ) from None
        if isinstance(error, IncompatiblePeer):
            raise GuestError(f"cannot negotiate SSH with {self.address}: {_describe(error)}") from None
        if isinstance(error, socket.gaierror):
            raise GuestUnreachable(f"cannot resolve {self.host!r}: {_describe(error)}") from None

    def _credentials(self) -> str:
        methods = []
        if self.key is not None:
            methods.append(f"with the key {self.key}")
        if self._password is not None:
            methods.append("with a password")
        return " or ".join(methods)

    # ----------------------------------------------------------------------------------------------
    # Commands
    # ----------------------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv``, quoted here for the guest's shell, within ``timeout`` seconds.

        stdout and stderr are read together (and ``stdin`` fed meanwhile), so no amount of output can
        stall the command. The deadline closes the channel and raises CommandTimeout; a dropped
        connection raises GuestUnreachable. Never retried: the command may not be idempotent. A command
        killed by a signal has exit code -1 (no exit status is sent for it).
        """
        command = join_for(self.shell, argv)
        started = time.monotonic()
        deadline = started + timeout
        transport = self._transport(timeout)
        try:
            channel = _open_channel(transport, deadline)
            channel.exec_command(command)
        except _CONNECT_ERRORS as error:
            kind = GuestUnreachable if _connection_lost(transport, error) else GuestError
            raise kind(f"cannot start `{command}` over SSH at {self.address}: {_describe(error)}") from error
        with channel:
            streams = _Streams(channel, stdin)
            finished = streams.pump(deadline)
            elapsed = time.monotonic() - started
            if not finished:
                raise CommandTimeout(
                    f"`{command}` did not finish within {timeout:g} s ({streams.received()})"
                )
            if streams.dropped(transport):
                raise GuestUnreachable(
                    f"the connection to {self.address} dropped while running `{command}`"
                    f" (after {elapsed:.1f} s; {streams.received()})"
                )
            exit_code = channel.recv_exit_status()
        logger.debug("`%s` exited with %d after %.2f s", command, exit_code, elapsed)
        return CommandResult(command, exit_code, bytes(streams.stdout), bytes(streams.stderr), elapsed)

    # ----------------------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------------------

    def put(
        self, local: Path, remote: str, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        r"""Copy the host file ``local`` to the guest path ``remote`` over SFTP within ``timeout`` seconds.

        ``remote`` may use Windows forms (``C:\dir\file``) with ``shell="cmd"``. A missing guest
        directory raises GuestError; if the connection drops mid-copy, it reconnects and copies once more.
        """
        self._copy("put", local, remote, timeout, progress)

    def get(
        self, remote: str, local: Path, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        """Copy the guest file ``remote`` to the host path ``local`` over SFTP within ``timeout`` seconds.

        ``local`` is written under a ``.part`` name and renamed when complete. A missing guest file raises
        GuestError; if the connection drops mid-copy, it reconnects and copies once more.
        """
        self._copy("get", local, remote, timeout, progress)

    def _copy(
        self,
        direction: Direction,
        local: Path,
        remote: str,
        timeout: float,
        progress: ProgressCallback | None,
    ) -> None:
        deadline = time.monotonic() + timeout
        path = sftp_path(remote, self.shell)
        # The host file is opened here, outside the SFTP error handling: its errors are the host's own.
        if direction == "put":
            with local.open("rb") as source:
                size = os.fstat(source.fileno()).st_size

                def upload(sftp: paramiko.SFTPClient, callback: ProgressCallback) -> None:
                    source.seek(0)
                    sftp.putfo(source, path, size, callback)

                self._sftp(upload, f"copying {local} to {remote}", remote, deadline, timeout, progress)
            return
        part = local.with_name(local.name + ".part")
        try:
            with part.open("wb") as target:

                def download(sftp: paramiko.SFTPClient, callback: ProgressCallback) -> None:
                    target.seek(0)
                    target.truncate()
                    sftp.getfo(path, target, callback)

                self._sftp(download, f"copying {remote} to {local}", remote, deadline, timeout, progress)
            part.replace(local)
        finally:
            part.unlink(missing_ok=True)

    def _sftp(
        self,
        transfer: Callable[[paramiko.SFTPClient, ProgressCallback], None],
        what: str,
        remote: str,
        deadline: float,
        timeout: float,
        progress: ProgressCallback | None,
    ) -> None:
        """Run ``transfer`` in an SFTP session; once more after reconnecting if the connection drops."""
        callback = _deadline_callback(deadline, progress)
        for attempt in (1, 2):
            transport = self._transport(deadline - time.monotonic())
            try:
                with _open_sftp(transport, deadline) as sftp:
                    transfer(sftp, callback)
                return
            except _CopyDeadline:
                raise CommandTimeout(f"{what} over SFTP did not finish within {timeout:g} s") from None
            except _CONNECT_ERRORS as error:
                if not _connection_lost(transport, error):
                    raise self._copy_error(what, remote, error, timeout) from error
                if attempt == 2 or time.monotonic() >= deadline:
                    raise GuestUnreachable(
                        f"the connection to {self.address} dropped while {what}: {_describe(error)}"
                    ) from error
                logger.warning(
                    "the connection to %s dropped while %s; reconnecting to copy again", self.address, what
                )

    def _copy_error(self, what: str, remote: str, error: BaseException, timeout: float) -> GuestError:
        if isinstance(error, socket.timeout):
            return CommandTimeout(f"{what} over SFTP did not finish within {timeout:g} s (the guest stalled)")
        if isinstance(error, FileNotFoundError):
            return GuestError(f"{what} failed: no such file or directory in the guest: {remote}")
        if isinstance(error, PermissionError):
            return GuestError(f"{what} failed: permission denied in the guest: {remote}")
        return GuestError(f"{what} failed: {_describe(error)}")

    def close(self) -> None:
        """Drop the connection; safe to call more than once (a later call connects again)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class _Streams:
    """Drains a channel's stdout and stderr together, and feeds its stdin, so no window ever fills."""

    def __init__(self, channel: paramiko.Channel, stdin: bytes | None) -> None:
        self.channel = channel
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._stdin = stdin or b""
        self._sent = 0
        if not self._stdin:
            channel.shutdown_write()

    def pump(self, deadline: float) -> bool:
        """Move data until the command is done (True) or the deadline passes (False, channel closed)."""
        idle = 0.0
        while not self._done():
            if time.monotonic() >= deadline:
                self.channel.close()
                return False
            if self._step():
                idle = 0.0
            else:
                idle = min(idle * 2 or 0.001, _MAX_IDLE)
                time.sleep(idle)
        return True

    def _done(self) -> bool:
        channel = self.channel
        return (
            bool(channel.eof_received or channel.closed)
            and channel.exit_status_ready()
            and not channel.recv_ready()
            and not channel.recv_stderr_ready()
        )

    def _step(self) -> bool:
        moved = False
        if self.channel.recv_ready():
            self.stdout += self.channel.recv(_CHUNK)
            moved = True
        if self.channel.recv_stderr_ready():
            self.stderr += self.channel.recv_stderr(_CHUNK)
            moved = True
        return self._feed() or moved

    def _feed(self) -> bool:
        """Send the next piece of stdin if the channel's window allows it; EOF after the last one."""
        if self._sent >= len(self._stdin) or self.channel.closed or not self.channel.send_ready():
            return False
        try:
            self._sent += self.channel.send(self._stdin[self._sent : self._sent + _CHUNK])
        except OSError:
            if not self.channel.closed:
                raise
            self._sent = len(self._stdin)  # the command exited without reading it all
            return False
        if self._sent >= len(self._stdin):
            self.channel.shutdown_write()
        return True

    def dropped(self, transport: paramiko.Transport) -> bool:
        """Whether the channel ended because the connection died rather than because the command ended.

        paramiko closes the channels of a dead connection before it marks the transport inactive, so a
        channel closed with neither an exit status nor the server's EOF counts as dropped too.
        """
        if self.channel.exit_status != -1:
            return False
        return not transport.is_active() or not self.channel.eof_received

    def received(self) -> str:
        """How much output came, for messages."""
        return f"{len(self.stdout)} bytes of stdout and {len(self.stderr)} bytes of stderr received"


def _live_transport(client: paramiko.SSHClient | None) -> paramiko.Transport | None:
    transport = client.get_transport() if client is not None else None
    return transport if transport is not None and transport.is_active() else None


def _connection_lost(transport: paramiko.Transport, error: BaseException) -> bool:
    """Whether ``error`` came from a dead connection rather than from the guest's answer.

    The caller's thread can see the socket fail a moment before paramiko's own thread marks the
    connection inactive, so give that thread a moment to end.
    """
    if isinstance(error, (FileNotFoundError, PermissionError, socket.timeout)):
        return False
    transport.join(_DROP_SETTLE)
    return not transport.is_active()


def _login_interrupted(error: paramiko.AuthenticationException) -> bool:
    """Whether paramiko reports a login cut short (slow or dropped connection), not refused credentials.

    paramiko raises these as plain AuthenticationExceptions, told apart only by their text.
    """
    return any(text in str(error) for text in _INTERRUPTED_LOGIN)


def _open_channel(transport: paramiko.Transport, deadline: float) -> paramiko.Channel:
    """A session channel; a refused open is retried until the deadline (no command has started then).

    A busy guest's SSH server can refuse a channel for a moment ("Unable to open channel"); since
    nothing ran yet, asking again is safe, unlike re-running a command.
    """
    while True:
        try:
            return transport.open_session(timeout=max(deadline - time.monotonic(), _MIN_WAIT))
        except paramiko.SSHException as error:
            refused = isinstance(error, paramiko.ChannelException) or "Unable to open channel" in str(error)
            if not refused or not transport.is_active() or time.monotonic() + _CHANNEL_RETRY >= deadline:
                raise
            time.sleep(_CHANNEL_RETRY)


def _open_sftp(transport: paramiko.Transport, deadline: float) -> paramiko.SFTPClient:
    """An SFTP session whose every wait is bounded by what is left until ``deadline``."""
    remaining = max(deadline - time.monotonic(), _MIN_WAIT)
    channel = transport.open_session(timeout=remaining)
    try:
        channel.settimeout(remaining)
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)
    except BaseException:
        channel.close()
        raise


def _deadline_callback(deadline: float, progress: ProgressCallback | None) -> Callable[[int, int], None]:
    """The per-block callback of paramiko's SFTP copies: report progress, stop at the deadline."""

    def callback(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)
        if time.monotonic() > deadline and done < total:
            raise _CopyDeadline

    return callback


def _load_private_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as error:
        raise GuestError(f"cannot use the SSH private key {path}: {_describe(error)}") from None


def _parse_host_key(line: str) -> paramiko.PKey:
    """The public key of a line like ``ssh-ed25519 AAAA... comment``."""
    fields = line.split()
    try:
        if len(fields) < 2:
            raise ValueError("expected '<type> <base64> [comment]'")
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1], validate=True))
    except (ValueError, binascii.Error, paramiko.SSHException, UnknownKeyType) as error:
        raise GuestError(
            f"the pinned SSH host key {line!r} is not a public key line like 'ssh-ed25519 AAAA...':"
            f" {_describe(error)}"
        ) from None


def _host_key_advice(host: str, port: int, *, both: bool) -> str:
    if both:
        return (
            f"SSH to {host}:{port}: a host key is pinned and insecure_accept_any_host_key is set;"
            " choose one (drop ssh.host_key, or unset insecure_accept_any_host_key)"
        )
    return (
        f"SSH to {host}:{port}: no host key to check the guest against; pin it with ssh.host_key"
        " ('ssh-ed25519 AAAA...'), or set `insecure_accept_any_host_key: true` for throwaway VMs"
    )


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _describe(error: BaseException) -> str:
    if isinstance(error, NoValidConnectionsError):
        return str(error.strerror)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
