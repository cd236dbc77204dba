"""Options and session-wide fixtures of this repository's test suite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vmtest.images.linux import build_linux_image

WRITE_RELIABILITY = "--vmtest-write-reliability"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--vmtest-write-reliability``: regenerate ``docs/RELIABILITY.md`` from a run of ``tests/faults``."""
    parser.addoption(
        WRITE_RELIABILITY,
        action="store_true",
        default=False,
        help="rewrite docs/RELIABILITY.md from this run of the whole fault suite (tests/faults); without it "
        "no test run touches the file",
    )


def sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def base_image_hash(request: pytest.FixtureRequest) -> str | None:
    """The Linux self-test guest's base disk hashed before any VM of the session boots.

    Autouse and session-scoped, so it is set up before the first test of the session (and so before
    any test's VM); None when the session has no test that boots a VM (``e2e``), so unit runs build
    nothing. ``tests/e2e/test_boot.py`` compares the disk with it at the end.
    """
    if not any(item.get_closest_marker("e2e") for item in request.session.items):
        return None
    return sha256(build_linux_image().disk)
