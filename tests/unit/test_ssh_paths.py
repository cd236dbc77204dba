"""Guest paths as the guest's SFTP server wants them: Windows OpenSSH needs ``/C:/...``."""

from __future__ import annotations

import pytest

from vmtest.guest.ssh import sftp_path


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("C:\\vmtest\\x.sys", "/C:/vmtest/x.sys"),
        ("C:/vmtest/x.sys", "/C:/vmtest/x.sys"),
        ("c:\\Windows\\Temp\\a b.txt", "/c:/Windows/Temp/a b.txt"),
        ("D:\\", "/D:/"),
        ("/C:/vmtest/x.sys", "/C:/vmtest/x.sys"),  # already in the SFTP form
        ("vmtest\\x.sys", "vmtest/x.sys"),  # relative: lands in the user's home
        ("x.sys", "x.sys"),
    ],
)
def test_windows_paths_take_the_sftp_form(remote: str, expected: str) -> None:
    assert sftp_path(remote, "cmd") == expected


@pytest.mark.parametrize(
    "remote",
    ["/tmp/vmtest/x.ko", "relative/x.ko", "/tmp/odd\\name", "C:\\not-a-drive-on-linux", "/"],
)
def test_posix_paths_are_unchanged(remote: str) -> None:
    assert sftp_path(remote, "posix") == remote


def test_conversion_is_idempotent() -> None:
    once = sftp_path("C:\\vmtest\\drivers\\x.inf", "cmd")
    assert sftp_path(once, "cmd") == once
