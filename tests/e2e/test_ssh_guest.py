"""SshTransport against the real Linux self-test guest (dropbear) under real QEMU, booted once.

The VM session lives in an event loop on its own thread for the whole module, while the tests use the
(blocking) transport from the main thread; the fixture always shuts the VM down.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.errors import AuthenticationFailed, HostKeyMismatch
from vmtest.facade import BackgroundSession
from vmtest.guest.ssh import SshTransport
from vmtest.images.linux import LinuxImage, build_linux_image
from vmtest.progress import PlainProgress

pytestmark = pytest.mark.e2e

T = TypeVar("T")
PASSWORD = "canary-e2e-Pw9-not-for-printing"


@pytest.fixture(scope="module")
def image() -> LinuxImage:
    return build_linux_image()


@pytest.fixture(scope="module")
def guest(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VmtestConfig, int]]:
    config = VmtestConfig(artifacts=tmp_path_factory.mktemp("runs"), guest=LinuxGuestConfig(image=image.root))
    booted = BackgroundSession(config, PlainProgress(), label="ssh-e2e")
    try:
        booted.start(connect=False)  # these tests make their own connections
        machine = booted.session.machine
        assert machine is not None
        yield config, machine.forwards["ssh"]
    finally:
        booted.close()


@pytest.fixture
def ssh(guest: tuple[VmtestConfig, int], image: LinuxImage) -> Iterator[SshTransport]:
    config, port = guest
    transport = SshTransport.for_guest(config.guest.ssh, port, image)
    transport.wait_ready(60)
    try:
        yield transport
    finally:
        transport.close()


def test_uname_matches_the_image_kernel(ssh: SshTransport, image: LinuxImage) -> None:
    result = ssh.run(["uname", "-r"], timeout=30).check("uname -r")
    assert result.stdout.decode().strip() == image.kernel_release


def test_put_and_get_a_megabyte(ssh: SshTransport, tmp_path: Path) -> None:
    source = tmp_path / "one-megabyte.bin"
    source.write_bytes(os.urandom(1024 * 1024))
    remote = "/tmp/vmtest-e2e/one megabyte.bin"
    ssh.run(["mkdir", "-p", "/tmp/vmtest-e2e"], timeout=30).check("mkdir")
    calls: list[tuple[int, int]] = []
    ssh.put(source, remote, timeout=60, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (1024 * 1024, 1024 * 1024)
    in_guest = ssh.run(["sha256sum", remote], timeout=30).check("sha256sum")
    assert in_guest.stdout.decode().split()[0] == hashlib.sha256(source.read_bytes()).hexdigest()
    back = tmp_path / "back.bin"
    ssh.get(remote, back, timeout=60)
    assert back.read_bytes() == source.read_bytes()


def test_both_streams_at_once_against_dropbear(ssh: SshTransport) -> None:
    script = "head -c 3000000 /dev/zero >&2 & head -c 4000000 /dev/zero; wait; exit 3"
    result = ssh.run(["sh", "-c", script], timeout=120)
    assert (result.exit_code, len(result.stdout), len(result.stderr)) == (3, 4_000_000, 3_000_000)


def test_a_wrong_pinned_host_key_fails_at_once(
    guest: tuple[VmtestConfig, int], image: LinuxImage, caplog: pytest.LogCaptureFixture
) -> None:
    config, port = guest
    wrong = config.guest.ssh.model_copy(update={"host_key": public_line(Ed25519PrivateKey.generate())})
    transport = SshTransport.for_guest(wrong, port, image)
    with caplog.at_level(logging.DEBUG, logger="vmtest.guest.ssh"), pytest.raises(HostKeyMismatch) as caught:
        transport.wait_ready(60)
    assert retries(caplog) == [], "a wrong host key is retried"
    assert image.host_key.split()[0] in str(caught.value)


def test_a_password_is_refused_at_once_by_the_key_only_guest(
    guest: tuple[VmtestConfig, int], image: LinuxImage, caplog: pytest.LogCaptureFixture
) -> None:
    _, port = guest
    transport = SshTransport(
        host="127.0.0.1", port=port, user="root", key=None, password=PASSWORD, host_key=image.host_key
    )
    with (
        caplog.at_level(logging.DEBUG, logger="vmtest.guest.ssh"),
        pytest.raises(AuthenticationFailed) as caught,
    ):
        transport.wait_ready(60)
    assert retries(caplog) == [], "a refused login is retried"
    assert PASSWORD not in str(caught.value)


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    """wait_ready's "not ready (attempt N)" lines: each one is a connection attempt that was retried."""
    return [record.getMessage() for record in caplog.records if "not ready (attempt" in record.getMessage()]


def public_line(key: Ed25519PrivateKey) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()
