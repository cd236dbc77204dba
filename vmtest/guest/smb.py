r"""A transport for Windows guests without OpenSSH: files over SMB, commands through PsExec (pypsexec).

Files go through the administrative shares with smbclient: ``C:\Windows\...`` maps to ``ADMIN$`` (which
*is* ``C:\Windows``) and any other ``X:\...`` to ``X$``. A UNC path cannot carry a port, so every
smbclient call passes ``port=`` (and a connection cache private to this transport).

Commands run as ``cmd.exe /c <argv quoted for cmd.exe>`` through pypsexec, which copies PAExec to
``ADMIN$`` and runs it as a temporary service. pypsexec derives the service, executable and pipe names
from the local PID and host name, so two clients in one process collide; here they are renamed to a
run-unique name. :meth:`SmbPsexecTransport.close` removes only this run's service with
``remove_service()``; pypsexec's ``cleanup()`` is never called, because it deletes every ``PAExec*``
service on the guest, other runs' included.

The password is kept for the SMB calls only; it is never logged or put in a message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import smbclient
from pypsexec.client import Client
from pypsexec.exceptions import PypsexecException, SCMRException
from pypsexec.paexec import get_unique_id
from pypsexec.scmr import Service
from smbprotocol.exceptions import (
    LogonFailure,
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
)

from vmtest.errors import AuthenticationFailed, CommandTimeout, GuestError, GuestUnreachable
from vmtest.guest.quoting import cmd_join
from vmtest.guest.transport import CommandResult, ProgressCallback, Transport

__all__ = ["SmbPsexecTransport", "guest_path_to_unc", "psexec_command"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
_RETRY_PAUSE = 0.5
_MIN_ATTEMPT = 1.0
_RUN_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DRIVE_PATH = re.compile(r"^(?P<drive>[A-Za-z]):\\(?P<rest>.*)$")
_ACCESS_DENIED = 5
_CLEANUP_ERRORS = (SMBException, PypsexecException, ValueError, OSError)


def guest_path_to_unc(host: str, path: str) -> str:
    r"""Map a guest path to its administrative share: ``C:\Windows\x`` -> ``\\host\ADMIN$\x``.

    Other paths on a drive go to the drive's share (``C:\vmtest\x`` -> ``\\host\C$\vmtest\x``).
    Forward slashes are accepted; relative paths, ``..`` and bare drive roots are not.
    """
    match = _DRIVE_PATH.match(path.replace("/", "\\"))
    if match is None:
        raise ValueError(f"{path!r} is not an absolute guest path like C:\\Windows\\file")
    parts = [part for part in match["rest"].split("\\") if part]
    if any(part in (".", "..") for part in parts):
        raise ValueError(f"{path!r} contains '.' or '..'")
    drive = match["drive"].upper()
    if drive == "C" and parts and parts[0].lower() == "windows":
        share, parts = "ADMIN$", parts[1:]
    else:
        share = f"{drive}$"
    if not parts:
        raise ValueError(f"{path!r} names a share root, not a file")
    return "\\\\" + "\\".join([host, share, *parts])


def psexec_command(argv: Sequence[str]) -> tuple[str, str]:
    """The executable and argument string PAExec is given for ``argv``: ``cmd.exe``, ``/c <quoted>``."""
    return "cmd.exe", "/c " + cmd_join(argv)


def _rename_client(client: Client, run_id: str) -> None:
    """Give a pypsexec Client run-unique service, executable and pipe names instead of PID+host ones.

    PAExec names its service pipe after its executable, and its stdio pipes ``PAExec{Out,Err,In}`` +
    the caller name + the caller PID taken from the start message, which pypsexec fills from
    ``current_host`` and ``pid``. Renaming all of them consistently keeps the protocol intact.
    (Attribute names as in pypsexec 0.3.0 and its main branch.)
    """
    tag = f"vmtest-{run_id}"
    client.current_host = tag
    client.service_name = f"{tag}-PAExec"
    client._exe_file = f"{client.service_name}.exe"
    client._stdout_pipe_name = f"PaExecOut{tag}{client.pid}"
    client._stderr_pipe_name = f"PaExecErr{tag}{client.pid}"
    client._stdin_pipe_name = f"PaExecIn{tag}{client.pid}"
    client._unique_id = get_unique_id(client.pid, tag)
    client._service = Service(client.service_name, client.session)


class SmbPsexecTransport(Transport):
    """Files over SMB (smbclient), commands through PsExec (pypsexec), both on one host:port."""

    def __init__(
        self,
        host: str,
        username: str,
        password: str,
        *,
        run_id: str,
        port: int = 445,
        encrypt: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        """Remember where and how to connect; nothing connects before :meth:`wait_ready` or first use.

        ``run_id`` (letters, digits, ``_ . -``) names this run's PsExec service. ``encrypt`` requires SMB 3
        encryption (Windows 8 and later; pass False only for older guests).
        """
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run id {run_id!r} must be 1-64 letters, digits, '_', '.' or '-'")
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._run_id = run_id
        self._encrypt = encrypt
        self._connect_timeout = connect_timeout
        self._cache: dict[str, Any] = {}
        self._client: Client | None = None

    def __repr__(self) -> str:
        return f"SmbPsexecTransport({self._username}@{self._host}:{self._port}, run {self._run_id})"

    # ---------------------------------------------------------------------------------------- errors

    @property
    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    def _guest_error(self, exc: Exception, what: str) -> GuestError:
        """Translate an smbprotocol/pypsexec exception into vmtest's GuestError family."""
        if isinstance(exc, (LogonFailure, SMBAuthenticationError)):
            return AuthenticationFailed(
                f"{what}: {self._where} refused the credentials of {self._username!r}"
            )
        if isinstance(exc, SCMRException) and exc.return_code == _ACCESS_DENIED:
            return AuthenticationFailed(
                f"{what}: {self._where} denied {self._username!r} the service manager (ERROR_ACCESS_DENIED): "
                "the account's token is filtered by UAC; set LocalAccountTokenFilterPolicy=1 or use the "
                "built-in Administrator"
            )
        if isinstance(exc, SMBOSError):
            if exc.errno == errno.ENOENT:
                return GuestError(f"{what}: no such file or share on {self._where}: {exc}")
            return GuestError(f"{what} failed on {self._where}: {exc}")
        if isinstance(exc, (ValueError, SMBConnectionClosed, ConnectionError, TimeoutError)):
            return GuestUnreachable(f"{what}: cannot reach SMB at {self._where}: {exc}")
        return GuestError(f"{what} failed on {self._where}: {exc}")

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Re-raise smbprotocol/pypsexec errors (and ValueError, a refused TCP connect) as GuestErrors."""
        try:
            yield
        except GuestError:
            raise
        except (SMBException, PypsexecException, ValueError, OSError) as exc:
            raise self._guest_error(exc, what) from exc

    def _smb(self, connect_timeout: float | None = None) -> dict[str, Any]:
        """Keyword arguments for every smbclient call: the port, credentials and this transport's cache."""
        return {
            "port": self._port,
            "username": self._username,
            "password": self._password,
            "encrypt": self._encrypt,
            "connection_timeout": self._connect_timeout if connect_timeout is None else connect_timeout,
            "connection_cache": self._cache,
        }

    # ----------------------------------------------------------------------------------------- ready

    def wait_ready(self, timeout: float) -> None:
        """Open the SMB session, retrying refusals and drops until ``timeout``; bad credentials fail now."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts += 1
            attempt_timeout = max(_MIN_ATTEMPT, min(self._connect_timeout, deadline - time.monotonic()))
            try:
                smbclient.register_session(self._host, **self._smb(attempt_timeout))
            except (LogonFailure, SMBAuthenticationError) as exc:
                raise self._guest_error(exc, "SMB logon") from exc
            except (SMBException, ValueError, OSError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestUnreachable(
                        f"no SMB session with {self._where} within {timeout:g} s ({attempts} attempts); "
                        f"last error: {exc}"
                    ) from exc
                log.debug("SMB at %s not ready yet: %s", self._where, exc)
                time.sleep(min(_RETRY_PAUSE, remaining))
            else:
                log.info("SMB session with %s open as %s", self._where, self._username)
                return

    # -------------------------------------------------------------------------------------- commands

    def _psexec(self) -> Client:
        """Connect pypsexec and install this run's PAExec service, once."""
        if self._client is None:
            client = Client(
                self._host, self._username, self._password, port=self._port, encrypt=self._encrypt
            )
            _rename_client(client, self._run_id)
            with self._mapped("starting PsExec"):
                client.connect(timeout=math.ceil(self._connect_timeout))
                try:
                    client.create_service()
                except BaseException:
                    with contextlib.suppress(*_CLEANUP_ERRORS):
                        client.disconnect()
                    raise
            log.info("PsExec service %s installed on %s", client.service_name, self._where)
            self._client = client
        return self._client

    def run(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` as ``cmd.exe /c <quoted argv>``; PAExec kills it after ``timeout`` seconds."""
        executable, arguments = psexec_command(argv)
        command = arguments[len("/c ") :]
        client = self._psexec()
        started = time.monotonic()
        with self._mapped(f"running {command!r}"):
            stdout, stderr, exit_code = client.run_executable(
                executable, arguments=arguments, timeout_seconds=max(1, math.ceil(timeout)), stdin=stdin
            )
        duration = time.monotonic() - started
        if duration >= timeout:
            raise CommandTimeout(f"{command!r} ran past its {timeout:g} s deadline on {self._where}")
        return CommandResult(
            command=command,
            exit_code=exit_code,
            stdout=stdout or b"",
            stderr=stderr or b"",
            duration=duration,
        )

    # ----------------------------------------------------------------------------------------- files

    def put(
        self, local: Path, remote: str, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        """Copy ``local`` to the guest path ``remote`` through its administrative share."""
        unc = guest_path_to_unc(self._host, remote)
        total = local.stat().st_size
        deadline = time.monotonic() + timeout
        what = f"copying {local.name} to {remote}"
        with (
            local.open("rb") as source,
            self._mapped(what),
            smbclient.open_file(unc, mode="wb", **self._smb()) as target,
        ):
            self._pump(source, target, total, deadline, progress, what)
        log.info("copied %s to %s (%d bytes)", local, remote, total)

    def get(
        self, remote: str, local: Path, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        """Copy the guest file ``remote`` to ``local`` through its administrative share."""
        unc = guest_path_to_unc(self._host, remote)
        deadline = time.monotonic() + timeout
        what = f"copying {remote} to {local.name}"
        with self._mapped(what):
            total = smbclient.stat(unc, **self._smb()).st_size
            with smbclient.open_file(unc, mode="rb", **self._smb()) as source, local.open("wb") as target:
                self._pump(source, target, total, deadline, progress, what)
        log.info("copied %s to %s (%d bytes)", remote, local, total)

    @staticmethod
    def _pump(
        source: BinaryIO,
        target: BinaryIO,
        total: int,
        deadline: float,
        progress: ProgressCallback | None,
        what: str,
    ) -> None:
        done = 0
        if progress is not None:
            progress(0, total)
        while chunk := source.read(CHUNK_SIZE):
            target.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
            if time.monotonic() > deadline and done < total:
                raise CommandTimeout(f"{what} did not finish before its deadline ({done} of {total} bytes)")

    # ----------------------------------------------------------------------------------------- close

    def close(self) -> None:
        """Remove this run's PsExec service (never anyone else's) and drop the SMB connections."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.remove_service()
            except _CLEANUP_ERRORS as exc:
                log.warning("could not remove PsExec service %s: %s", client.service_name, exc)
            try:
                client.disconnect()
            except _CLEANUP_ERRORS as exc:
                log.debug("PsExec disconnect: %s", exc)
        smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
