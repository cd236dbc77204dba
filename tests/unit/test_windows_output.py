"""The Windows output parsers against every documented sample in tests/data/windows (CRLF, as printed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtest.drivers.windows_output import (
    SC_ERRORS,
    ScFailure,
    ServiceState,
    codec_for_code_page,
    decode_inf,
    decode_output,
    describe_sc_failure,
    parse_bcdedit_testsigning,
    parse_certutil_addstore,
    parse_inf,
    parse_oem_code_page,
    parse_sc_failure,
    parse_sc_query,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "windows"


def sample(name: str) -> str:
    raw = (DATA / name).read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b""), f"{name} must be CRLF throughout"
    return raw.decode("ascii")


def test_every_sample_is_replayed_by_a_test() -> None:
    covered = {
        *FAILURES,
        *SUCCESSES,
        *(name for name, *_ in STATUSES),
        *BCDEDIT,
        *CERTUTIL_OK,
        *CERTUTIL_FAILED,
        "root_enumerated.inf",
    }
    replaying = [*Path(__file__).parent.glob("test_windows_*.py"), Path(__file__).parent / "test_probe.py"]
    elsewhere = "\n".join(path.read_text() for path in replaying)
    on_disk = {path.name for path in DATA.iterdir() if path.suffix in (".txt", ".inf")}
    unused = sorted(name for name in on_disk - covered if name not in elsewhere)
    # A sample named through a pattern (f"sc_query_failed_1060{suffix}.txt") counts by its stem's start.
    unused = [name for name in unused if name.rsplit("_", 1)[0] not in elsewhere]
    assert unused == []


# ------------------------------------------------------------------------------------------ sc failures

FAILURES = {
    "sc_create_failed_1073.txt": ("CreateService", 1073, "The specified service already exists."),
    "sc_create_failed_1072.txt": (
        "CreateService",
        1072,
        "The specified service has been marked for deletion.",
    ),
    "sc_openscmanager_failed_5.txt": ("OpenSCManager", 5, "Access is denied."),
    "sc_start_failed_2.txt": ("StartService", 2, "The system cannot find the file specified."),
    "sc_start_failed_577.txt": ("StartService", 577, "Windows cannot verify the digital signature"),
    "sc_start_failed_1056.txt": ("StartService", 1056, "An instance of the service is already running."),
    "sc_start_failed_1058.txt": ("StartService", 1058, "The service cannot be started"),
    "sc_start_failed_1275.txt": ("StartService", 1275, "This driver has been blocked from loading"),
    "sc_query_failed_1060.txt": (
        "EnumQueryServicesStatus:OpenService",
        1060,
        "The specified service does not exist",
    ),
    "sc_stop_failed_1052.txt": (
        "ControlService",
        1052,
        "The requested control is not valid for this service.",
    ),
    "sc_stop_failed_1062.txt": ("ControlService", 1062, "The service has not been started."),
    "sc_stop_failed_1060.txt": ("OpenService", 1060, "The specified service does not exist"),
    "sc_delete_failed_1060.txt": ("OpenService", 1060, "The specified service does not exist"),
    "sc_delete_failed_1072.txt": (
        "DeleteService",
        1072,
        "The specified service has been marked for deletion.",
    ),
}

SUCCESSES = ["sc_create_success.txt", "sc_delete_success.txt"]


@pytest.mark.parametrize(("name", "expected"), sorted(FAILURES.items()))
def test_sc_failure_lines_give_api_code_and_message(name: str, expected: tuple[str, int, str]) -> None:
    api, code, message = expected
    failure = parse_sc_failure(sample(name))
    assert failure is not None
    assert (failure.api, failure.code) == (api, code)
    assert failure.message.startswith(message)
    assert "\r" not in failure.message


@pytest.mark.parametrize("name", SUCCESSES + ["sc_start_running.txt", "sc_query_running.txt"])
def test_success_outputs_are_not_failures(name: str) -> None:
    assert parse_sc_failure(sample(name)) is None


def test_sc_errors_cover_the_documented_codes() -> None:
    assert set(SC_ERRORS) == {2, 5, 577, 1052, 1056, 1058, 1060, 1062, 1072, 1073, 1275, 4421}
    assert SC_ERRORS[577].name == "ERROR_INVALID_IMAGE_HASH"
    assert SC_ERRORS[577].advice.startswith(
        "the image is unsigned, or its certificate is not trusted, or test signing is off: "
    )
    assert "no unload routine" in SC_ERRORS[1052].advice
    assert SC_ERRORS[4421].name == "ERROR_SECUREBOOT_POLICY_VIOLATION"


def test_describe_names_the_code_and_says_what_to_do() -> None:
    failure = parse_sc_failure(sample("sc_start_failed_577.txt"))
    assert failure is not None
    text = describe_sc_failure(failure)
    assert "StartService" in text and "577" in text and "ERROR_INVALID_IMAGE_HASH" in text
    assert "test signing is off" in text


def test_describe_falls_back_to_windows_message_for_unknown_codes() -> None:
    failure = ScFailure(
        api="StartService", code=31, message="A device attached to the system is not functioning."
    )
    assert describe_sc_failure(failure) == (
        "sc.exe StartService failed with Win32 error 31: A device attached to the system is not functioning."
    )


# ------------------------------------------------------------------------------------------ sc query

STATUSES = [
    # file, name, state, controls, win32 exit, checkpoint, wait hint
    ("sc_query_running.txt", "intelhaxm", ServiceState.RUNNING, 3, 0, 0, 0),
    ("sc_start_running.txt", "HEVD", ServiceState.RUNNING, 3, 0, 0, 0),
    ("sc_query_stopped.txt", "wdk_mutex_tests", ServiceState.STOPPED, 0, 0, 0, 0),
    ("sc_stop_stopped.txt", "wdk_mutex_tests", ServiceState.STOPPED, 0, 0, 0, 0),
    ("sc_query_stopped_driverentry_failed.txt", "wdk_mutex_tests", ServiceState.STOPPED, 0, 31, 0, 0),
    ("sc_query_start_pending.txt", "wdk_mutex_tests", ServiceState.START_PENDING, 3, 0, 1, 2000),
]


@pytest.mark.parametrize(
    ("name", "service", "state", "controls", "exit_code", "checkpoint", "hint"), STATUSES
)
def test_sc_query_fields(
    name: str, service: str, state: ServiceState, controls: int, exit_code: int, checkpoint: int, hint: int
) -> None:
    status = parse_sc_query(sample(name))
    assert status.name == service
    assert (status.type_code, status.type_name) == (1, "KERNEL_DRIVER")
    assert status.state is state
    assert status.state_name == state.name
    assert len(status.controls) == controls
    assert status.win32_exit_code == exit_code
    assert status.service_exit_code == 0
    assert (status.checkpoint, status.wait_hint) == (checkpoint, hint)


def test_sc_query_reads_the_continuation_line_of_state() -> None:
    status = parse_sc_query(sample("sc_query_running.txt"))
    assert status.controls == ("STOPPABLE", "NOT_PAUSABLE", "IGNORES_SHUTDOWN")


def test_sc_query_accepts_lf_as_well_as_crlf() -> None:
    text = sample("sc_query_running.txt").replace("\r\n", "\n")
    assert parse_sc_query(text) == parse_sc_query(sample("sc_query_running.txt"))


@pytest.mark.parametrize("name", ["sc_query_failed_1060.txt", "sc_create_success.txt"])
def test_sc_query_rejects_what_is_not_a_status(name: str) -> None:
    with pytest.raises(ValueError, match="not an sc query status"):
        parse_sc_query(sample(name))


def test_sc_query_rejects_an_unknown_state() -> None:
    text = sample("sc_query_running.txt").replace("4  RUNNING", "9  EXPLODED")
    with pytest.raises(ValueError, match="not a service state"):
        parse_sc_query(text)


# ------------------------------------------------------------------------------------------- bcdedit

BCDEDIT = {
    "bcdedit_enum_current_testsigning_yes.txt": True,
    "bcdedit_enum_current_testsigning_no.txt": False,
    "bcdedit_enum_current_without_testsigning.txt": None,
}


@pytest.mark.parametrize(("name", "expected"), sorted(BCDEDIT.items()))
def test_bcdedit_testsigning(name: str, expected: bool | None) -> None:
    assert parse_bcdedit_testsigning(sample(name)) is expected


def test_bcdedit_does_not_guess_an_unknown_value() -> None:
    text = sample("bcdedit_enum_current_testsigning_yes.txt").replace(
        "testsigning             Yes", "testsigning Kyllä"
    )
    with pytest.raises(ValueError, match="Kyllä"):
        parse_bcdedit_testsigning(text)


# ------------------------------------------------------------------------------------------ certutil

CERTUTIL_OK = ["certutil_addstore_root_success.txt", "certutil_addstore_trustedpublisher_success.txt"]
CERTUTIL_FAILED = {
    "certutil_addstore_failed_file_not_found.txt": (0x80070002, "The system cannot find the file specified."),
    "certutil_addstore_failed_access_denied.txt": (0x80070005, "Access is denied."),
}


@pytest.mark.parametrize("name", CERTUTIL_OK)
def test_certutil_success(name: str) -> None:
    result = parse_certutil_addstore(sample(name))
    assert result.ok
    assert result.certificates == ("WDRLocalTestCert",)
    assert result.hresult is None


@pytest.mark.parametrize(("name", "expected"), sorted(CERTUTIL_FAILED.items()))
def test_certutil_failure(name: str, expected: tuple[int, str]) -> None:
    result = parse_certutil_addstore(sample(name))
    assert not result.ok
    assert (result.hresult, result.message) == expected


def test_certutil_without_a_verdict_is_an_error() -> None:
    with pytest.raises(ValueError, match="no verdict"):
        parse_certutil_addstore("'certutil' is not recognized as an internal or external command,\r\n")


# ----------------------------------------------------------------------------------------------- INF


def test_inf_root_hardware_id_and_service() -> None:
    info = parse_inf(sample("root_enumerated.inf"))
    assert info.service_names == ("SampleDriverService",)
    assert info.hardware_ids == ("root\\SAMPLE_WDM_HW_ID",)
    assert info.root_hardware_ids == ("root\\SAMPLE_WDM_HW_ID",)


def test_inf_decoding_handles_utf16_with_bom() -> None:
    text = sample("root_enumerated.inf")
    assert decode_inf(text.encode("utf-16")) == text
    assert decode_inf(text.encode("utf-8")) == text


def test_inf_without_models_has_no_hardware_ids() -> None:
    info = parse_inf(
        '[Version]\r\nSignature = "$WINDOWS NT$"\r\n[Svc.Services]\r\nAddService = Legacy,,Svc\r\n'
    )
    assert info.service_names == ("Legacy",)
    assert info.root_hardware_ids == ()


def test_inf_string_tokens_are_expanded_from_the_strings_section() -> None:
    # Microsoft Learn, "INF Strings Section": %strkey% tokens, case-insensitive keys, %% is a literal %.
    info = parse_inf(
        "[Manufacturer]\r\n%Mfg% = Models, NTamd64\r\n"
        "[Models.NTamd64]\r\n%DeviceDesc% = Install, %HWID%\r\n"
        "[Install.NTamd64.Services]\r\nAddService = %ServiceName%, 0x00000002, Svc\r\n"
        "[Svc]\r\nServiceBinary = %13%\\mutex.sys\r\n"
        '[Strings]\r\nMfg = "vmtest"\r\nhwid = "root\\MUTEX_TESTS"\r\nSERVICENAME = "mutex_tests"\r\n'
        'DeviceDesc = "100%% a ""mutex"" device"\r\n'
    )
    assert info.hardware_ids == ("root\\MUTEX_TESTS",)
    assert info.service_names == ("mutex_tests",)


def test_an_unknown_string_token_stays_as_written() -> None:
    info = parse_inf("[Install.Services]\r\nAddService = %NoSuchKey%, 2, Svc\r\n")
    assert info.service_names == ("%NoSuchKey%",)


# ------------------------------------------------------------------------------------ localised output


def localised(name: str) -> str:
    raw = (DATA / name).read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b""), f"{name} must be CRLF throughout"
    return decode_output(raw, codec_for_code_page(850))


@pytest.mark.parametrize("name", ["sc_query_failed_1060_de.txt", "sc_query_failed_1060_fr.txt"])
def test_a_translated_failed_word_still_gives_the_code(name: str) -> None:
    failure = parse_sc_failure(localised(name), exit_code=1060)
    assert failure is not None
    assert (failure.api, failure.code) == ("EnumQueryServicesStatus:OpenService", 1060)
    assert failure.message.startswith(("Der angegebene Dienst", "Le service spécifié"))


def test_an_unreadable_sc_line_falls_back_to_the_exit_status() -> None:
    failure = parse_sc_failure("[SC] OpenService: Fehler beim Öffnen\r\n\r\nirgendwas\r\n", exit_code=1060)
    assert failure is not None and failure.code == 1060 and failure.message == "irgendwas"
    assert parse_sc_failure("'sc.exe' is not recognized\r\n", exit_code=9009) is None
    assert parse_sc_failure(sample("sc_query_running.txt"), exit_code=0) is None


def test_the_oem_code_page_comes_from_the_registry() -> None:
    assert parse_oem_code_page(sample("reg_query_oemcp_850.txt")) == 850
    assert parse_oem_code_page(sample("reg_query_oemcp_437.txt")) == 437
    assert parse_oem_code_page("ERROR: The system was unable to find the specified registry key\r\n") is None
    assert codec_for_code_page(850) == "cp850" and codec_for_code_page(65001) == "utf-8"
    with pytest.raises(ValueError, match="no Python codec"):
        codec_for_code_page(99999)
    assert "Überprüfen" in decode_output("Überprüfen".encode("cp850"), "cp850")


def test_certutil_exit_status_decides_before_its_text() -> None:
    german = localised("certutil_addstore_failed_access_denied_de.txt")
    with pytest.raises(ValueError):
        parse_certutil_addstore(german)  # the English verdict line is not there
    result = parse_certutil_addstore(german, exit_code=-2147024891)
    assert not result.ok and result.hresult == 0x80070005 and result.message == "CertUtil: Zugriff verweigert"
    assert parse_certutil_addstore("Zertifikat hinzugefügt\r\n", exit_code=0).ok


def test_bcdedit_in_german_reads_ja() -> None:
    assert parse_bcdedit_testsigning(localised("bcdedit_enum_current_testsigning_ja_de.txt")) is True
