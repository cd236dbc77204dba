"""The Windows command builders: exact documented argument lists, validation, and cmd.exe quoting."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vmtest.drivers import windows_commands as commands
from vmtest.errors import DriverError
from vmtest.guest.quoting import cmd_join

SERVICE_KEY = r"HKLM\SYSTEM\CurrentControlSet\Services\wdk_mutex_tests\Parameters"


def test_sc_create_matches_the_documented_lifecycle() -> None:
    # windows11-vm.md §3.1: sc.exe create NAME type= kernel start= demand binPath= C:\path\x.sys
    argv = commands.sc_create("wdk_mutex_tests", r"C:\vmtest\run1\wdk_mutex_tests.sys")
    assert argv == [
        "sc.exe",
        "create",
        "wdk_mutex_tests",
        "type=",
        "kernel",
        "start=",
        "demand",
        "binPath=",
        r"C:\vmtest\run1\wdk_mutex_tests.sys",
    ]


def test_sc_options_and_values_are_separate_arguments() -> None:
    # "A space is required between an option and its value" (sc-create.md): `type=kernel` would fail.
    argv = commands.sc_create("drv", r"C:\d\drv.sys")
    for option in ("type=", "start=", "binPath="):
        assert option in argv
        assert argv[argv.index(option) + 1] and not argv[argv.index(option) + 1].endswith("=")
    assert cmd_join(argv) == r"sc.exe create drv type= kernel start= demand binPath= C:\d\drv.sys"


def test_bin_path_with_spaces_reaches_sc_as_one_argument() -> None:
    argv = commands.sc_create("drv", r"C:\my drivers\drv.sys")
    assert (
        cmd_join(argv) == r'sc.exe create drv type= kernel start= demand binPath= ^"C:\my drivers\drv.sys^"'
    )


@pytest.mark.parametrize(
    ("builder", "verb"),
    [
        (commands.sc_start, "start"),
        (commands.sc_query, "query"),
        (commands.sc_stop, "stop"),
        (commands.sc_delete, "delete"),
    ],
)
def test_sc_verbs(builder: Callable[[str], list[str]], verb: str) -> None:
    assert builder("wdk_mutex_tests") == ["sc.exe", verb, "wdk_mutex_tests"]


@pytest.mark.parametrize("store", ["Root", "TrustedPublisher"])
def test_certutil_addstore(store: str) -> None:
    # windows11-vm.md §3.6: certutil -addstore -f Root WDRLocalTestCert.cer (and TrustedPublisher)
    argv = commands.certutil_addstore(store, r"C:\vmtest\run1\WDRLocalTestCert.cer")  # type: ignore[arg-type]
    assert argv == ["certutil", "-addstore", "-f", store, r"C:\vmtest\run1\WDRLocalTestCert.cer"]


def test_certutil_refuses_other_stores() -> None:
    with pytest.raises(DriverError, match="store"):
        commands.certutil_addstore("My", r"C:\x\a.cer")  # type: ignore[arg-type]


def test_bcdedit_enum_current() -> None:
    argv = commands.bcdedit_enum_current()
    assert argv == ["bcdedit", "/enum", "{current}"]
    assert cmd_join(argv) == "bcdedit /enum {current}"


def test_pnputil_add_driver() -> None:
    # windows11-vm.md §3.4: pnputil.exe /add-driver sample_wdm_driver.inf /install
    argv = commands.pnputil_add_driver(r"C:\vmtest\run1\sample.inf")
    assert argv == ["pnputil.exe", "/add-driver", r"C:\vmtest\run1\sample.inf", "/install"]


def test_devgen_add() -> None:
    # windows11-vm.md §3.4: devgen.exe /add /hardwareid "root\SAMPLE_WDM_HW_ID"
    argv = commands.devgen_add(r"C:\tools\devgen.exe", r"root\SAMPLE_WDM_HW_ID")
    assert argv == [r"C:\tools\devgen.exe", "/add", "/hardwareid", r"root\SAMPLE_WDM_HW_ID"]


def test_integer_parameters_become_dwords() -> None:
    argv = commands.reg_add_parameter("wdk_mutex_tests", "Iterations", 500)
    assert argv == ["reg", "add", SERVICE_KEY, "/v", "Iterations", "/t", "REG_DWORD", "/d", "500", "/f"]


def test_booleans_become_dword_zero_or_one() -> None:
    assert commands.reg_add_parameter("drv", "Verbose", True)[-2] == "1"
    assert commands.reg_add_parameter("drv", "Verbose", False)[-2] == "0"


def test_string_parameters_become_reg_sz_and_are_quoted_by_the_transport() -> None:
    argv = commands.reg_add_parameter("wdk_mutex_tests", "Scenarios", "kmutex fast&grt")
    assert argv == [
        "reg",
        "add",
        SERVICE_KEY,
        "/v",
        "Scenarios",
        "/t",
        "REG_SZ",
        "/d",
        "kmutex fast&grt",
        "/f",
    ]
    assert cmd_join(argv).endswith(r'/d ^"kmutex fast^&grt^" /f')


@pytest.mark.parametrize("value", [-1, 2**32])
def test_dword_range_is_enforced(value: int) -> None:
    with pytest.raises(DriverError, match="REG_DWORD"):
        commands.reg_add_parameter("drv", "Count", value)


@pytest.mark.parametrize("value", ["two\nlines", "nul\x00", "tab\there"])
def test_strings_with_control_characters_are_refused(value: str) -> None:
    with pytest.raises(DriverError, match="control character"):
        commands.reg_add_parameter("drv", "Name", value)


def test_other_parameter_types_are_refused() -> None:
    with pytest.raises(DriverError, match="int or a str"):
        commands.reg_add_parameter("drv", "Ratio", 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["", "has space", "slash/ed", "back\\slash", 'quote"d', "amp&", "-dash-first", "x" * 257]
)
def test_bad_service_names_are_refused_by_every_sc_builder(name: str) -> None:
    for builder in (commands.sc_start, commands.sc_query, commands.sc_stop, commands.sc_delete):
        with pytest.raises(DriverError, match="service name"):
            builder(name)
    with pytest.raises(DriverError, match="service name"):
        commands.sc_create(name, r"C:\d\x.sys")


@pytest.mark.parametrize("name", ["", "with space", "a=b", "per%cent%"])
def test_bad_parameter_names_are_refused(name: str) -> None:
    with pytest.raises(DriverError, match="parameter name"):
        commands.reg_add_parameter("drv", name, 1)


@pytest.mark.parametrize(
    "path",
    ["relative\\x.sys", r"\\server\share\x.sys", 'C:\\a"b.sys', "C:\\a|b.sys", r"C:\a\..\b.sys", "C:\\a\nb"],
)
def test_bad_guest_paths_are_refused(path: str) -> None:
    with pytest.raises(DriverError, match="guest path"):
        commands.sc_create("drv", path)


def test_folders_are_created_and_removed_idempotently_with_cmd_builtins() -> None:
    assert commands.make_folder(r"C:\vmtest\run-1") == [
        "if",
        "not",
        "exist",
        r"C:\vmtest\run-1",
        "mkdir",
        r"C:\vmtest\run-1",
    ]
    assert (
        cmd_join(commands.remove_folder(r"C:\vmtest\run-1"))
        == r"if exist C:\vmtest\run-1 rmdir /s /q C:\vmtest\run-1"
    )


@pytest.mark.parametrize("path", [r"C:\my folder", "C:\\", r"C:\vmtest\..", r"C:\a&b", "vmtest", r"C:\a\.\b"])
def test_folder_paths_are_plain(path: str) -> None:
    with pytest.raises(DriverError, match="folder path"):
        commands.make_folder(path)
    with pytest.raises(DriverError, match="folder path"):
        commands.remove_folder(path)
