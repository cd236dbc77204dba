"""Secure Boot is decided by the OVMF variable store, not the code file (Debian's ovmf README.Debian).

The stores are built here byte by byte in edk2's variable format (AUTHENTICATED_VARIABLE_HEADER, then the
UTF-16 name), the way an enrolled store (OVMF_VARS_4M.ms.fd) holds its Platform Key.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydantic import ValidationError

from vmtest.config.windows import OvmfConfig, secure_boot_keys_enrolled
from vmtest.drivers.windows_output import SC_ERRORS
from vmtest.images.windows11.host import preflight
from vmtest.images.windows11.options import WindowsImageOptions

GLOBAL_VARIABLE = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")  # {8BE4DF61-93CA-11D2-AA0D-00E098032B8C}


def variable(name: str, data: bytes, *, state: int = 0x3F) -> bytes:
    encoded = (name + "\0").encode("utf-16-le")
    header = struct.pack("<HBBIQ16sIII", 0x55AA, state, 0, 0x27, 0, bytes(16), 0, len(encoded), len(data))
    return header + GLOBAL_VARIABLE + encoded + data


def store(*variables: bytes) -> bytes:
    body = b"".join(variables)
    return b"\x00" * 0x48 + body + b"\xff" * (4096 - 0x48 - len(body))


def test_an_empty_store_has_secure_boot_off(tmp_path: Path) -> None:
    vars_file = tmp_path / "OVMF_VARS_4M.fd"
    vars_file.write_bytes(store())
    assert secure_boot_keys_enrolled(vars_file) is False


def test_a_store_with_a_platform_key_has_secure_boot_on(tmp_path: Path) -> None:
    vars_file = tmp_path / "enrolled.fd"
    vars_file.write_bytes(store(variable("KEK", b"k" * 40), variable("PK", b"p" * 40)))
    assert secure_boot_keys_enrolled(vars_file) is True


def test_a_deleted_platform_key_or_a_lookalike_name_does_not_count(tmp_path: Path) -> None:
    vars_file = tmp_path / "vars.fd"
    vars_file.write_bytes(store(variable("PK", b"p" * 40, state=0x3C), variable("PKX", b"x")))
    assert secure_boot_keys_enrolled(vars_file) is False


def test_a_qcow2_store_is_judged_by_its_name(tmp_path: Path) -> None:
    (tmp_path / "OVMF_VARS_4M.ms.qcow2").write_bytes(b"QFI\xfb" + bytes(100))
    (tmp_path / "efivars.qcow2").write_bytes(b"QFI\xfb" + bytes(100))
    assert secure_boot_keys_enrolled(tmp_path / "OVMF_VARS_4M.ms.qcow2") is True
    assert secure_boot_keys_enrolled(tmp_path / "efivars.qcow2") is None


def test_the_guest_config_refuses_an_enrolled_store(tmp_path: Path) -> None:
    enrolled = tmp_path / "OVMF_VARS_4M.ms.fd"
    enrolled.write_bytes(store(variable("PK", b"p" * 40)))
    with pytest.raises(ValidationError, match="Secure Boot keys enrolled"):
        OvmfConfig(vars=enrolled)
    empty = tmp_path / "OVMF_VARS_4M.fd"
    empty.write_bytes(store())
    assert OvmfConfig(vars=empty).vars == empty


def test_the_image_build_refuses_an_enrolled_store_whatever_the_code_file(tmp_path: Path) -> None:
    enrolled = tmp_path / "OVMF_VARS_4M.ms.fd"
    enrolled.write_bytes(store(variable("PK", b"p" * 40)))
    code = tmp_path / "OVMF_CODE_4M.fd"  # the code file without Secure Boot: still on, the store decides
    code.write_bytes(b"\xff" * 4096)
    options = WindowsImageOptions(iso=tmp_path / "x.iso", ovmf_code=code, ovmf_vars=enrolled)
    problems = preflight(options, ("xorriso",))
    assert any("Secure Boot keys enrolled" in problem for problem in problems)


def test_the_4421_advice_names_the_variable_store() -> None:
    advice = SC_ERRORS[4421].advice
    assert "variable store decides it, not the code file" in advice and "OVMF_VARS_4M.ms.fd" in advice


DEBIAN_OVMF = Path("/usr/share/OVMF")


@pytest.mark.skipif(
    not (DEBIAN_OVMF / "OVMF_VARS_4M.ms.fd").is_file(), reason="Debian's ovmf is not installed"
)
@pytest.mark.parametrize(
    ("name", "enrolled"),
    [("OVMF_VARS_4M.fd", False), ("OVMF_VARS_4M.ms.fd", True), ("OVMF_VARS_4M.snakeoil.fd", True)],
)
def test_debians_own_variable_stores(name: str, enrolled: bool) -> None:
    # README.Debian: the .ms store has the Microsoft keys enrolled and Secure Boot on; the plain one is empty.
    assert secure_boot_keys_enrolled(DEBIAN_OVMF / name) is enrolled
