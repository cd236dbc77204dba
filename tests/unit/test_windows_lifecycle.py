"""WindowsDriverLifecycle against a scripted guest that answers with the documented outputs.

The fake keeps just enough state (services and their states, files, registry values, folders) to pick
which sample file in tests/data/windows answers each command. The tests check outcomes: what the guest
ends up with, and what the developer is told.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmtest.drivers.windows import (
    WindowsDeployedDriver,
    WindowsDriverLifecycle,
    find_driver_package,
    has_embedded_signature,
)
from vmtest.errors import DriverError, EntryPointFailed, GuestCommandFailed
from vmtest.guest.transport import CommandResult, ProgressCallback, Transport

DATA = Path(__file__).resolve().parents[1] / "data" / "windows"
RUN_DIR = r"C:\vmtest\run1"
NAME = "wdk_mutex_tests"


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


@dataclass
class FakeWindows(Transport):
    """A scripted Windows guest. ``start`` picks what the driver does when started:

    ``running``; ``577`` (refused: signature); ``fails`` (DriverEntry returns STATUS_UNSUCCESSFUL: sc start
    itself fails with 31, tests/data/windows/sc_start_failed_31.txt); ``pending`` (DriverEntry never
    returns). ``unload`` is ``ok`` or ``1052`` (no unload routine).

    INF mode: ``devgen`` adds a device; ``pnputil /add-driver /install`` stages the package and installs it
    on a device that exists (the service appears ``service_delay`` queries later), else exits 259
    (ERROR_NO_MORE_ITEMS, "PnPUtil return values").
    """

    testsigning: str = "yes"
    language: str = "en"
    code_page: int = 437
    certutil: str = "ok"
    start: str = "running"
    unload: str = "ok"
    inf_service: str = "SampleDriverService"
    services: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)
    registry: dict[str, tuple[str, str]] = field(default_factory=dict)
    trusted: list[tuple[str, str]] = field(default_factory=list)
    staged: list[str] = field(default_factory=list)
    devices: int = 0
    service_delay: int = 0
    calls: list[str] = field(default_factory=list)
    _pending_service: int | None = None

    def wait_ready(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass

    def put(
        self, local: Path, remote: str, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        data = local.read_bytes()
        self.files[remote] = data
        if progress is not None:
            progress(len(data), len(data))

    def get(
        self, remote: str, local: Path, *, timeout: float, progress: ProgressCallback | None = None
    ) -> None:
        local.write_bytes(self.files[remote])

    def run(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        exit_code, output = self._answer(list(argv))
        return CommandResult(" ".join(argv), exit_code, output, b"", 0.01)

    def _answer(self, argv: list[str]) -> tuple[int, bytes]:
        program = argv[0].lower()
        self.calls.append(program.rsplit("\\", 1)[-1])
        if program == "bcdedit":
            variant = {"yes": "testsigning_yes", "no": "testsigning_no", "absent": "without_testsigning",
                       "ja": "testsigning_ja_de"}  # fmt: skip
            return 0, sample(f"bcdedit_enum_current_{variant[self.testsigning]}.txt")
        if argv[:2] == ["reg", "query"]:
            return 0, sample(f"reg_query_oemcp_{self.code_page}.txt")
        if program == "if":
            return self._folder(argv)
        if program == "certutil":
            if self.certutil == "denied_de":  # exit status: the HRESULT 0x80070005 as a DWORD
                return 0x80070005, sample("certutil_addstore_failed_access_denied_de.txt")
            self.trusted.append((argv[3], argv[4]))
            return 0, sample(f"certutil_addstore_{argv[3].lower()}_success.txt")
        if program == "reg":
            self.registry[f"{argv[2]}\\{argv[4]}"] = (argv[6], argv[8])
            return 0, sample("reg_add_success.txt")
        if program == "pnputil.exe":
            self.staged.append(argv[2])
            if not self.devices:
                return 259, b""
            if self.inf_service not in self.services:
                self._pending_service = self.service_delay
            return 0, b""
        if program.endswith("devgen.exe"):
            self.devices += 1
            return 0, b""
        if program == "sc.exe":
            return getattr(self, f"_sc_{argv[1]}")(argv[2])  # type: ignore[no-any-return]
        return 9009, f"'{argv[0]}' is not recognized as an internal or external command,\r\n".encode()

    def _folder(self, argv: list[str]) -> tuple[int, bytes]:
        path = argv[-1]
        if argv[1] == "not":
            self.folders.add(path)
        else:
            self.folders.discard(path)
            self.files = {name: data for name, data in self.files.items() if not name.startswith(path + "\\")}
        return 0, b""

    def _sc_create(self, name: str) -> tuple[int, bytes]:
        if name in self.services:
            return 1073, sample("sc_create_failed_1073.txt")
        self.services[name] = "STOPPED"
        return 0, sample("sc_create_success.txt")

    def _sc_start(self, name: str) -> tuple[int, bytes]:
        if name not in self.services:
            return 1060, sample("sc_stop_failed_1060.txt")
        if self.services[name] == "RUNNING":
            return 1056, sample("sc_start_failed_1056.txt")
        if self.start == "577":
            return 577, sample(
                "sc_start_failed_577_de.txt" if self.language == "de" else "sc_start_failed_577.txt"
            )
        if self.start == "fails":
            return 31, sample("sc_start_failed_31.txt")
        self.services[name] = {"running": "RUNNING", "pending": "START_PENDING"}[self.start]
        return 0, sample("sc_start_running.txt" if self.start == "running" else "sc_query_start_pending.txt")

    def _sc_query(self, name: str) -> tuple[int, bytes]:
        if name == self.inf_service and self._pending_service is not None:
            if self._pending_service == 0:
                self.services[name] = "RUNNING"
                self._pending_service = None
            else:
                self._pending_service -= 1
        files = {
            "RUNNING": "sc_query_running.txt",
            "STOPPED": "sc_query_stopped.txt",
            "FAILED": "sc_query_stopped_driverentry_failed.txt",
            "START_PENDING": "sc_query_start_pending.txt",
        }
        if name not in self.services:
            suffix = "" if self.language == "en" else f"_{self.language}"
            return 1060, sample(f"sc_query_failed_1060{suffix}.txt")
        return 0, sample(files[self.services[name]])

    def _sc_stop(self, name: str) -> tuple[int, bytes]:
        if name not in self.services:
            return 1060, sample("sc_stop_failed_1060.txt")
        if self.services[name] != "RUNNING":
            return 1062, sample("sc_stop_failed_1062.txt")
        if self.unload == "1052":
            return 1052, sample("sc_stop_failed_1052.txt")
        self.services[name] = "STOPPED"
        return 0, sample("sc_stop_stopped.txt")

    def _sc_delete(self, name: str) -> tuple[int, bytes]:
        if self.services.pop(name, None) is None:
            return 1060, sample("sc_delete_failed_1060.txt")
        return 0, sample("sc_delete_success.txt")


@pytest.fixture
def package(tmp_path: Path) -> Path:
    folder = tmp_path / "wdk_mutex_tests_package"
    folder.mkdir()
    (folder / f"{NAME}.sys").write_bytes(b"MZ" + b"\0" * 4000)
    (folder / f"{NAME}.cat").write_bytes(b"catalog")
    (folder / f"{NAME}.pdb").write_bytes(b"symbols, not copied")
    (folder / "WDRLocalTestCert.cer").write_bytes(b"certificate")
    return folder


@pytest.fixture
def inf_package(package: Path) -> Path:
    (package / f"{NAME}.inf").write_bytes(sample("root_enumerated.inf"))
    return package


def lifecycle(guest: FakeWindows, **options: object) -> WindowsDriverLifecycle:
    return WindowsDriverLifecycle(guest, "run1", state_timeout=2.0, poll_interval=0.0, **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- deploy


def test_deploy_copies_the_package_and_trusts_its_certificate(package: Path) -> None:
    guest = FakeWindows()
    progress: list[tuple[int, int]] = []
    driver = lifecycle(guest).deploy(package, progress=lambda done, total: progress.append((done, total)))
    assert driver == WindowsDeployedDriver(
        name=NAME, guest_dir=RUN_DIR, guest_binary=rf"{RUN_DIR}\{NAME}.sys"
    )
    assert RUN_DIR in guest.folders
    assert sorted(guest.files) == sorted(
        rf"{RUN_DIR}\{name}" for name in (f"{NAME}.sys", f"{NAME}.cat", "WDRLocalTestCert.cer")
    )
    assert guest.files[driver.guest_binary] == (package / f"{NAME}.sys").read_bytes()
    certificate = rf"{RUN_DIR}\WDRLocalTestCert.cer"
    assert sorted(guest.trusted) == [("Root", certificate), ("TrustedPublisher", certificate)]
    total = sum(
        (package / name).stat().st_size for name in (f"{NAME}.sys", f"{NAME}.cat", "WDRLocalTestCert.cer")
    )
    assert progress[-1] == (total, total)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_a_single_sys_file_is_a_package(package: Path) -> None:
    guest = FakeWindows()
    driver = lifecycle(guest).deploy(package / f"{NAME}.sys")
    assert list(guest.files) == [driver.guest_binary]
    assert guest.trusted == []


@pytest.mark.parametrize("testsigning", ["no", "absent"])
def test_test_signing_off_is_a_clear_error_before_anything_is_installed(
    package: Path, testsigning: str
) -> None:
    guest = FakeWindows(testsigning=testsigning)
    with pytest.raises(DriverError, match="test signing is off") as caught:
        lifecycle(guest).deploy(package)
    assert "bcdedit /set testsigning on" in str(caught.value)
    assert guest.services == {} and guest.files == {} and guest.trusted == []


def test_test_signing_check_can_be_skipped_for_production_signed_drivers(package: Path) -> None:
    guest = FakeWindows(testsigning="no")
    lifecycle(guest, require_test_signing=False).deploy(package)
    assert guest.files


def test_packages_without_exactly_one_sys_are_refused(package: Path, tmp_path: Path) -> None:
    (package / "second.sys").write_bytes(b"MZ")
    with pytest.raises(DriverError, match=r"more than one \.sys"):
        find_driver_package(package)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DriverError, match=r"no \.sys"):
        find_driver_package(empty)


def test_a_bad_run_id_is_refused() -> None:
    with pytest.raises(DriverError, match="folder path"):
        WindowsDriverLifecycle(FakeWindows(), "run 1 & more")


# --------------------------------------------------------------------------------------------- load


def test_load_succeeds_when_the_service_reaches_running(package: Path) -> None:
    guest = FakeWindows()
    windows = lifecycle(guest)
    driver = windows.deploy(package)
    windows.load(driver, {"Iterations": 500, "Scenarios": "kmutex fast_mutex"})
    assert guest.services == {NAME: "RUNNING"}
    key = rf"HKLM\SYSTEM\CurrentControlSet\Services\{NAME}\Parameters"
    assert guest.registry == {
        rf"{key}\Iterations": ("REG_DWORD", "500"),
        rf"{key}\Scenarios": ("REG_SZ", "kmutex fast_mutex"),
    }


def test_unsigned_or_untrusted_driver_says_so(package: Path) -> None:
    guest = FakeWindows(start="577")
    windows = lifecycle(guest)
    with pytest.raises(DriverError) as caught:
        windows.load(windows.deploy(package), {})
    message = str(caught.value)
    assert "unsigned" in message and "not trusted" in message and "test signing" in message
    assert caught.value.code == 577
    assert "[SC] StartService FAILED 577:" in caught.value.output


def test_loading_again_over_an_existing_service_is_idempotent(package: Path) -> None:
    guest = FakeWindows()
    windows = lifecycle(guest)
    driver = windows.deploy(package)
    windows.load(driver, {"Iterations": 1})
    windows.deploy(package)
    windows.load(driver, {"Iterations": 2})
    assert guest.services == {NAME: "RUNNING"}
    assert guest.registry[rf"HKLM\SYSTEM\CurrentControlSet\Services\{NAME}\Parameters\Iterations"][1] == "2"


def test_a_service_left_by_an_earlier_run_is_replaced(package: Path) -> None:
    guest = FakeWindows(services={NAME: "STOPPED"})
    windows = lifecycle(guest)
    windows.load(windows.deploy(package), {})
    assert guest.services == {NAME: "RUNNING"}


def test_a_failing_driverentry_fails_sc_start_itself(package: Path) -> None:
    # A legacy service's DriverEntry runs inside StartService: STATUS_UNSUCCESSFUL comes back as
    # "[SC] StartService FAILED 31:" (crvvdev/MasterHide issue #10), not as START_PENDING then STOPPED.
    guest = FakeWindows(start="fails")
    windows = lifecycle(guest)
    with pytest.raises(EntryPointFailed, match="DriverEntry returned an error") as caught:
        windows.load(windows.deploy(package), {})
    assert caught.value.code == 31
    assert "A device attached to the system is not functioning." in str(caught.value)
    assert "[SC] StartService FAILED 31:" in caught.value.output


def test_a_start_refused_before_driverentry_is_not_an_entry_point_failure(package: Path) -> None:
    windows = lifecycle(FakeWindows(start="577"))
    with pytest.raises(DriverError) as caught:
        windows.load(windows.deploy(package), {})
    assert not isinstance(caught.value, EntryPointFailed)


def test_start_pending_past_the_deadline_is_an_error(package: Path) -> None:
    guest = FakeWindows(start="pending")
    windows = WindowsDriverLifecycle(guest, "run1", state_timeout=0.05, poll_interval=0.01)
    with pytest.raises(DriverError, match=r"still START_PENDING after 0\.05 s: DriverEntry has not returned"):
        windows.load(windows.deploy(package), {})


def test_an_sc_that_cannot_run_is_the_machinery_failing_not_the_driver(package: Path) -> None:
    class NoSc(FakeWindows):
        def _answer(self, argv: list[str]) -> tuple[int, bytes]:
            if argv[0] == "sc.exe":
                return 9009, b"'sc.exe' is not recognized as an internal or external command,\r\n"
            return super()._answer(argv)

    windows = lifecycle(NoSc())
    with pytest.raises(GuestCommandFailed, match="not recognized"):
        windows.load(windows.deploy(package), {})


# ------------------------------------------------------------------------------------- unload, remove


def test_unload_waits_for_stopped(package: Path) -> None:
    guest = FakeWindows()
    windows = lifecycle(guest)
    driver = windows.deploy(package)
    assert not windows.is_loaded(driver)
    windows.load(driver, {})
    assert windows.is_loaded(driver)
    windows.unload(driver)
    assert guest.services == {NAME: "STOPPED"}
    assert not windows.is_loaded(driver)
    windows.unload(driver)  # already stopped: nothing to do


def test_unload_without_an_unload_routine_says_so(package: Path) -> None:
    guest = FakeWindows(unload="1052")
    windows = lifecycle(guest)
    driver = windows.deploy(package)
    windows.load(driver, {})
    with pytest.raises(DriverError, match="no unload routine") as caught:
        windows.unload(driver)
    assert caught.value.code == 1052


def test_remove_deletes_the_service_and_the_run_folder(package: Path) -> None:
    guest = FakeWindows()
    windows = lifecycle(guest)
    driver = windows.deploy(package)
    windows.load(driver, {})
    windows.unload(driver)
    windows.remove(driver)
    assert guest.services == {}
    assert RUN_DIR not in guest.folders and guest.files == {}
    windows.remove(driver)  # nothing left: still fine


# ------------------------------------------------------------------------------------------- INF mode


def test_a_root_enumerated_inf_selects_inf_mode(inf_package: Path) -> None:
    guest = FakeWindows()
    driver = lifecycle(guest).deploy(inf_package)
    assert isinstance(driver, WindowsDeployedDriver)
    assert driver.name == "SampleDriverService"
    assert driver.inf == rf"{RUN_DIR}\{NAME}.inf"
    assert driver.hardware_id == r"root\SAMPLE_WDM_HW_ID"


def test_inf_mode_can_be_turned_off(inf_package: Path) -> None:
    driver = lifecycle(FakeWindows(), inf_mode=False).deploy(inf_package)
    assert isinstance(driver, WindowsDeployedDriver)
    assert (driver.name, driver.inf) == (NAME, None)


def test_inf_mode_with_devgen_installs_and_starts_the_device(inf_package: Path) -> None:
    guest = FakeWindows(service_delay=3)
    windows = lifecycle(guest, devgen=r"C:\tools\devgen.exe")
    driver = windows.deploy(inf_package)
    guest.calls.clear()
    windows.load(driver, {"Iterations": 3})
    # Microsoft's samples: the device first (devgen), then pnputil /install; the parameters before both,
    # and the service polled for until the device install created it.
    assert guest.calls[:4] == ["reg", "sc.exe", "devgen.exe", "pnputil.exe"]
    assert guest.calls[4:] == ["sc.exe"] * 4 + ["sc.exe"]  # 3 x 1060, then RUNNING; then the state wait
    assert guest.staged == [rf"{RUN_DIR}\{NAME}.inf"]
    assert guest.services == {"SampleDriverService": "RUNNING"}
    assert (
        r"HKLM\SYSTEM\CurrentControlSet\Services\SampleDriverService\Parameters\Iterations" in guest.registry
    )


def test_inf_mode_loads_again_without_a_second_device(inf_package: Path) -> None:
    guest = FakeWindows()
    windows = lifecycle(guest, devgen=r"C:\tools\devgen.exe")
    driver = windows.deploy(inf_package)
    windows.load(driver, {})
    windows.unload(driver)
    windows.load(driver, {})
    assert guest.devices == 1
    assert guest.services == {"SampleDriverService": "RUNNING"}
    windows.unload(driver)
    windows.remove(driver)
    assert guest.files == {} and RUN_DIR not in guest.folders
    assert guest.services == {"SampleDriverService": "STOPPED"}, "the device's service stays with the device"


def test_inf_mode_without_a_device_explains_devgen(inf_package: Path) -> None:
    # pnputil /add-driver /install exits 259 (ERROR_NO_MORE_ITEMS) when no device matches: staged only.
    guest = FakeWindows()
    windows = lifecycle(guest)
    with pytest.raises(DriverError, match="devgen") as caught:
        windows.load(windows.deploy(inf_package), {})
    assert r"root\SAMPLE_WDM_HW_ID" in str(caught.value) and "259" in str(caught.value)
    assert caught.value.code == 259
    assert guest.staged == [rf"{RUN_DIR}\{NAME}.inf"]


def test_inf_mode_gives_up_on_a_service_that_never_appears(inf_package: Path) -> None:
    guest = FakeWindows(inf_service="SomethingElse")
    windows = WindowsDriverLifecycle(
        guest, "run1", devgen=r"C:\tools\devgen.exe", service_timeout=0.05, poll_interval=0.01
    )
    with pytest.raises(DriverError, match=r"created no SampleDriverService service within 0\.05 s"):
        windows.load(windows.deploy(inf_package), {})


# ------------------------------------------------------------------------------------------ signature


def pe_image(*, plus: bool = True, security: tuple[int, int] = (0, 0), directories: int = 16) -> bytes:
    """A PE header built byte by byte (PE Format, Microsoft Learn): MZ, e_lfanew, "PE\\0\\0", the COFF
    header (machine x64), the optional header's magic, NumberOfRvaAndSizes and the data directories
    (entry 4, IMAGE_DIRECTORY_ENTRY_SECURITY, holds the Authenticode certificate table)."""
    image = bytearray(1024)
    image[:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, 0x80)
    image[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", image, 0x84, 0x8664)
    optional = 0x80 + 24
    struct.pack_into("<H", image, optional, 0x20B if plus else 0x10B)
    count_at, directories_at = (108, 112) if plus else (92, 96)
    struct.pack_into("<I", image, optional + count_at, directories)
    struct.pack_into("<II", image, optional + directories_at + 8 * 4, *security)
    return bytes(image)


@pytest.mark.parametrize("plus", [True, False])
def test_the_security_directory_tells_a_signed_sys_from_an_unsigned_one(tmp_path: Path, plus: bool) -> None:
    sys_file = tmp_path / "driver.sys"
    sys_file.write_bytes(pe_image(plus=plus, security=(0x600, 0x2A0)))
    assert has_embedded_signature(sys_file) is True
    sys_file.write_bytes(pe_image(plus=plus))
    assert has_embedded_signature(sys_file) is False
    sys_file.write_bytes(pe_image(plus=plus, security=(0x600, 0x2A0), directories=4))
    assert has_embedded_signature(sys_file) is False  # the table stops before entry 4
    sys_file.write_bytes(b"MZ" + bytes(100))
    assert has_embedded_signature(sys_file) is None


def test_an_unsigned_sys_is_refused_before_anything_is_copied(package: Path) -> None:
    (package / f"{NAME}.sys").write_bytes(pe_image())
    guest = FakeWindows()
    with pytest.raises(DriverError, match=r"this \.sys carries no signature") as caught:
        lifecycle(guest).deploy(package)
    assert "unsigned" in str(caught.value)
    assert guest.files == {} and guest.calls == []


def test_an_unsigned_sys_loads_when_asked_and_a_signed_one_always(package: Path) -> None:
    (package / f"{NAME}.sys").write_bytes(pe_image())
    guest = FakeWindows()
    lifecycle(guest, require_signature=False).deploy(package)
    assert guest.files
    (package / f"{NAME}.sys").write_bytes(pe_image(security=(0x600, 0x2A0)))
    lifecycle(FakeWindows()).deploy(package)


def test_a_catalog_signs_the_sys_of_an_inf_package(inf_package: Path) -> None:
    (inf_package / f"{NAME}.sys").write_bytes(pe_image())
    guest = FakeWindows()
    lifecycle(guest).deploy(inf_package)
    assert guest.files


# ------------------------------------------------------------------------------------ localised guests


@pytest.mark.parametrize("language", ["de", "fr"])
def test_a_localised_missing_service_is_read_from_its_code(package: Path, language: str) -> None:
    # "[SC] ... FEHLER 1060:" / "ÉCHEC 1060 :", in code page 850 (tests/data/windows/SOURCES.md).
    guest = FakeWindows(language=language, code_page=850)
    windows = lifecycle(guest)
    driver = windows.deploy(package)
    assert not windows.is_loaded(driver)


def test_a_localised_failure_keeps_its_code_and_its_decoded_text(package: Path) -> None:
    guest = FakeWindows(language="de", code_page=850, start="577")
    windows = lifecycle(guest)
    with pytest.raises(DriverError) as caught:
        windows.load(windows.deploy(package), {})
    assert caught.value.code == 577 and "ERROR_INVALID_IMAGE_HASH" in str(caught.value)
    assert "Windows kann die digitale Signatur für diese Datei nicht überprüfen." in caught.value.output


def test_the_code_page_can_be_configured_instead_of_asked(package: Path) -> None:
    guest = FakeWindows(language="de", code_page=850, start="577")
    windows = lifecycle(guest, code_page=850)
    with pytest.raises(DriverError) as caught:
        windows.load(windows.deploy(package), {})
    assert "überprüfen" in caught.value.output
    assert "reg" not in guest.calls  # no parameters to write, and the code page was not asked


def test_wrongly_decoded_text_would_show(package: Path) -> None:
    # The same bytes read as UTF-8 lose the umlauts: what the code page is for.
    text = (DATA / "sc_start_failed_577_de.txt").read_bytes().decode("utf-8", errors="replace")
    assert "überprüfen" not in text


def test_certutil_fails_by_its_exit_status_whatever_its_language(package: Path) -> None:
    guest = FakeWindows(certutil="denied_de", code_page=850)
    with pytest.raises(DriverError, match="Zugriff verweigert") as caught:
        lifecycle(guest).deploy(package)
    assert caught.value.code == 0x80070005


def test_bcdedit_in_german_says_ja(package: Path) -> None:
    guest = FakeWindows(testsigning="ja", code_page=850)
    assert lifecycle(guest).deploy(package).name == NAME
