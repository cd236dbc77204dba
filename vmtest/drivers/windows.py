r"""Installing, starting, stopping and removing a Windows kernel driver through a :class:`Transport`.

Two ways to load, chosen per package:

* **Service mode** (the default): the driver is a legacy/WDM service. ``sc create NAME type= kernel
  start= demand binPath= C:\vmtest\<run>\NAME.sys``, parameters into the service's ``Parameters`` key,
  ``sc start``, then ``sc query`` until RUNNING or STOPPED.
* **INF mode**: for a package whose INF installs a root-enumerated device (a ``root\...`` hardware id),
  or when the constructor says so. The service is the INF's ``AddService`` name. A root-enumerated
  driver only loads once its device exists; the documented way to create one is the WDK's
  ``devgen.exe``: pass ``devgen=`` (its guest path). In Microsoft's order, vmtest writes the parameters,
  runs ``devgen /add /hardwareid root\...`` when the service does not exist yet (so loading again does
  not add a second device), then ``pnputil /add-driver INF /install`` (exit status 259: "staged, no
  device matched"), then waits, with a deadline, for the service the device install creates. Without
  devgen the device must already exist in the image. A stopped service is started with ``sc start``.
  INF mode leaves the driver-store package, the device and its service in the guest (restore the VM
  snapshot to undo them); ``remove`` deletes the run's files only.

Every ``[SC] <API> FAILED <n>:`` becomes ``DriverError(<advice from SC_ERRORS>, code=n, output=<raw>)``;
a DriverEntry that fails inside ``sc start`` (``[SC] StartService FAILED 31:``) becomes
:class:`~vmtest.errors.EntryPointFailed`.
Output vmtest cannot make sense of, or a tool that cannot run at all, is the machinery's problem and
raises a :class:`GuestError` instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmtest.drivers import windows_commands as commands
from vmtest.drivers.lifecycle import DeployedDriver, DriverLifecycle, DriverParameters
from vmtest.drivers.windows_output import (
    SC_ERRORS,
    ScFailure,
    ServiceState,
    ServiceStatus,
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
from vmtest.errors import DriverError, EntryPointFailed, GuestCommandFailed, GuestError
from vmtest.guest.transport import CommandResult, ProgressCallback, Transport

__all__ = [
    "ENTRY_POINT_FAILURES",
    "DriverPackage",
    "WindowsDeployedDriver",
    "WindowsDriverLifecycle",
    "find_driver_package",
    "has_embedded_signature",
]

log = logging.getLogger(__name__)

DEFAULT_GUEST_ROOT = r"C:\vmtest"
_CERT_STORES: tuple[commands.CertStore, ...] = ("Root", "TrustedPublisher")
_NO_SERVICE = 1060
_NOT_RUNNING = 1062
_ALREADY_RUNNING = 1056
# "PnPUtil return values" (https://learn.microsoft.com/windows-hardware/drivers/devtest/pnputil-return-values):
# 0 ERROR_SUCCESS; 3010 ERROR_SUCCESS_REBOOT_REQUIRED; 259 ERROR_NO_MORE_ITEMS: "no devices match the
# supplied driver or the target device is already using a better or newer driver than the driver
# specified for installation" (the package is staged either way).
_PNPUTIL_OK = frozenset({0, 3010})
_PNPUTIL_NO_DEVICE = 259
_START_SERVICE = "StartService"
# A legacy driver's DriverEntry runs inside StartService: its failing NTSTATUS comes back from `sc start`
# itself, mapped to a Win32 error (RtlNtStatusToDosError), as "[SC] StartService FAILED 31:" and "A device
# attached to the system is not functioning." for STATUS_UNSUCCESSFUL (verbatim in crvvdev/MasterHide
# issue #10, https://github.com/crvvdev/MasterHide/issues/10), or 647 ERROR_FAILED_DRIVER_ENTRY "The driver
# was not loaded because it failed its initialization call." (Air14/airhv issue #10). The others are the
# mappings of the NTSTATUS values a DriverEntry commonly returns (ntstatus.h -> winerror.h): 1
# STATUS_NOT_IMPLEMENTED, 8 STATUS_NO_MEMORY, 50 STATUS_NOT_SUPPORTED, 87 STATUS_INVALID_PARAMETER, 1450
# STATUS_INSUFFICIENT_RESOURCES (a guess beyond 31 and 647: no transcript of these from sc start).
ENTRY_POINT_FAILURES = frozenset({1, 8, 31, 50, 87, 647, 1450})


@dataclass(frozen=True)
class DriverPackage:
    """The host files of one driver package: exactly one ``.sys``, at most one ``.inf`` and ``.cat``."""

    sys: Path
    inf: Path | None
    cat: Path | None
    certificates: tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file to copy into the guest."""
        optional = tuple(path for path in (self.inf, self.cat) if path is not None)
        return (self.sys, *optional, *self.certificates)


def _one(paths: list[Path], kind: str, folder: Path) -> Path | None:
    if len(paths) > 1:
        names = ", ".join(sorted(path.name for path in paths))
        raise DriverError(f"the driver package {folder} holds more than one {kind} file ({names}): keep one")
    return paths[0] if paths else None


_PE_MACHINES = {0x14C: "x86 (32-bit)", 0x1C4: "ARM (32-bit)", 0xAA64: "ARM64", 0xA641: "ARM64EC"}
_AMD64 = 0x8664


def _check_image(sys_file: Path) -> None:
    """Refuse a .sys that is not a PE image, or whose PE header names a machine other than x64."""
    try:
        with sys_file.open("rb") as file:
            head = file.read(4096)
    except OSError as error:
        raise DriverError(f"cannot read {sys_file}: {error.strerror}") from None
    if head[:2] != b"MZ":
        raise DriverError(f"{sys_file.name} is not a PE image (no MZ header), so not a Windows driver")
    offset = int.from_bytes(head[0x3C:0x40], "little") if len(head) >= 0x40 else 0
    if offset and head[offset : offset + 4] == b"PE\0\0" and len(head) >= offset + 6:
        machine = int.from_bytes(head[offset + 4 : offset + 6], "little")
        if machine != _AMD64:
            built_for = _PE_MACHINES.get(machine, f"machine type {machine:#06x}")
            raise DriverError(
                f"{sys_file.name} is built for {built_for}, but the guest is x64: build the driver for"
                " x86_64-pc-windows-msvc"
            )


# PE format (https://learn.microsoft.com/windows/win32/debug/pe-format): the optional header follows the
# 20-byte COFF header; its magic is 0x10B (PE32) or 0x20B (PE32+), NumberOfRvaAndSizes sits at offset 92
# or 108 and the data directories (8 bytes each: address, size) at 96 or 112. Directory 4 is the
# Certificate Table (IMAGE_DIRECTORY_ENTRY_SECURITY), whose address is a file offset: an embedded
# Authenticode signature (what `signtool sign` adds to a .sys) lives there. Absent: no embedded signature.
_PE_OPTIONAL = {0x10B: (92, 96), 0x20B: (108, 112)}
_SECURITY_DIRECTORY = 4


def has_embedded_signature(sys_file: Path) -> bool | None:
    """Whether the PE's Certificate Table (security directory) is present; None if the headers are cut."""
    head = sys_file.read_bytes()[:4096]
    offset = int.from_bytes(head[0x3C:0x40], "little") if len(head) >= 0x40 else 0
    optional = offset + 24
    if not offset or head[offset : offset + 4] != b"PE\0\0" or len(head) < optional + 2:
        return None
    layout = _PE_OPTIONAL.get(int.from_bytes(head[optional : optional + 2], "little"))
    if layout is None:
        return None
    count_at, directories_at = (optional + position for position in layout)
    entry = directories_at + 8 * _SECURITY_DIRECTORY
    if len(head) < count_at + 4:
        return None
    if int.from_bytes(head[count_at : count_at + 4], "little") <= _SECURITY_DIRECTORY:
        return False
    if len(head) < entry + 8:
        return None
    address = int.from_bytes(head[entry : entry + 4], "little")
    size = int.from_bytes(head[entry + 4 : entry + 8], "little")
    return address != 0 and size != 0


def find_driver_package(package: Path) -> DriverPackage:
    """Find the .sys, .inf, .cat and .cer files of a package folder (cargo make's), or take a lone .sys."""
    if package.is_file():
        if package.suffix.lower() != ".sys":
            raise DriverError(f"{package} is not a .sys file or a driver package folder")
        _check_image(package)
        return DriverPackage(sys=package, inf=None, cat=None, certificates=())
    if not package.is_dir():
        raise DriverError(f"the driver package {package} does not exist")
    by_suffix: dict[str, list[Path]] = {}
    for path in sorted(package.iterdir()):
        if path.is_file():
            by_suffix.setdefault(path.suffix.lower(), []).append(path)
    sys_file = _one(by_suffix.get(".sys", []), ".sys", package)
    if sys_file is None:
        raise DriverError(f"the driver package {package} holds no .sys file: build the driver first")
    _check_image(sys_file)
    return DriverPackage(
        sys=sys_file,
        inf=_one(by_suffix.get(".inf", []), ".inf", package),
        cat=_one(by_suffix.get(".cat", []), ".cat", package),
        certificates=tuple(by_suffix.get(".cer", [])),
    )


@dataclass(frozen=True)
class WindowsDeployedDriver(DeployedDriver):
    """A deployed Windows driver; ``inf`` is set when it loads through pnputil (INF mode)."""

    inf: str | None = None
    """The guest path of the package's INF, in INF mode."""
    hardware_id: str | None = None
    """The root-enumerated hardware id that devgen creates a device for, in INF mode."""


def _offset_progress(progress: ProgressCallback, base: int, total: int) -> ProgressCallback:
    def report(done: int, _file_total: int) -> None:
        progress(base + done, total)

    return report


class WindowsDriverLifecycle(DriverLifecycle):
    r"""Deploys a driver package to ``C:\vmtest\<run id>\`` and drives it with sc.exe (or pnputil)."""

    def __init__(
        self,
        transport: Transport,
        run_id: str,
        *,
        inf_mode: bool | None = None,
        devgen: str | None = None,
        require_test_signing: bool = True,
        require_signature: bool = True,
        code_page: int | None = None,
        guest_root: str = DEFAULT_GUEST_ROOT,
        command_timeout: float = 60.0,
        copy_timeout: float = 300.0,
        state_timeout: float = 30.0,
        service_timeout: float = 60.0,
        poll_interval: float = 0.5,
    ) -> None:
        """Bind to a transport and a run id.

        ``inf_mode``: True forces INF mode, False forbids it, None chooses it when the package's INF has a
        root hardware id. ``devgen``: guest path of devgen.exe, used in INF mode to create the device.
        ``require_test_signing``: refuse to deploy while test signing is off (turn off only for
        production-signed drivers). ``require_signature``: refuse a .sys without an embedded signature
        before copying it (turn off when a kernel debugger is attached, which lets Windows load unsigned
        drivers). ``code_page``: the OEM code page the guest's console tools print in (default: read
        from the guest's registry once). ``state_timeout`` bounds each wait for RUNNING or STOPPED;
        ``service_timeout`` bounds the wait for the service a device install creates (INF mode).
        """
        self._transport = transport
        self._guest_dir = commands.check_folder_path(f"{guest_root}\\{run_id}")
        self._inf_mode = inf_mode
        self._devgen = None if devgen is None else commands.check_guest_path(devgen)
        self._require_test_signing = require_test_signing
        self._require_signature = require_signature
        self._codec = None if code_page is None else codec_for_code_page(code_page)
        self._command_timeout = command_timeout
        self._copy_timeout = copy_timeout
        self._state_timeout = state_timeout
        self._service_timeout = service_timeout
        self._poll_interval = poll_interval

    # ------------------------------------------------------------------------------------------ deploy

    def deploy(self, package: Path, *, progress: ProgressCallback | None = None) -> WindowsDeployedDriver:
        """Check test signing, copy the package into the guest folder, and trust its certificates."""
        files = find_driver_package(package)
        self._check_signature(files)
        if self._require_test_signing:
            self._check_test_signing()
        self._run(commands.make_folder(self._guest_dir)).check(f"creating {self._guest_dir}")
        self._copy(files.files, progress)
        for certificate in files.certificates:
            self._trust(self._guest_path(certificate))
        driver = self._describe(files)
        mode = "INF" if driver.inf else "service"
        log.info("deployed %s to %s (%s mode)", driver.name, driver.guest_dir, mode)
        return driver

    def _check_signature(self, files: DriverPackage) -> None:
        signed = has_embedded_signature(files.sys)
        if signed is not False:
            return
        if files.cat is not None and files.inf is not None and self._inf_mode is not False:
            # A package's signed catalog can sign the .sys instead (INF mode installs the catalog).
            log.info("%s carries no embedded signature; relying on %s", files.sys.name, files.cat.name)
            return
        message = (
            f"this .sys carries no signature: {files.sys.name} has no Authenticode certificate in its PE "
            "security directory, so Windows refuses the unsigned driver (sc start fails with 577). Sign it "
            "(cargo make signs it with WDRLocalTestCert)"
        )
        if self._require_signature:
            raise DriverError(message + "; if a kernel debugger is attached, turn require_signature off")
        log.warning("%s; loading anyway, as asked", message)

    def _check_test_signing(self) -> None:
        argv = commands.bcdedit_enum_current()
        result = self._run(argv).check("bcdedit /enum {current} (it needs administrator rights)")
        output = self._text(result)
        try:
            enabled = parse_bcdedit_testsigning(output)
        except ValueError as exc:
            raise GuestError(f"cannot tell whether test signing is on: {exc}") from None
        if not enabled:
            raise DriverError(
                "test signing is off in the guest (bcdedit /enum {current} shows no 'testsigning Yes'), so "
                "Windows refuses test-signed drivers (sc start fails with 577). Turn it on in the image: "
                "bcdedit /set testsigning on with Secure Boot off, then reboot.",
                output=output,
            )

    def _copy(self, files: Sequence[Path], progress: ProgressCallback | None) -> None:
        sizes = [path.stat().st_size for path in files]
        total = sum(sizes)
        done = 0
        for path, size in zip(files, sizes, strict=True):
            report = None if progress is None else _offset_progress(progress, done, total)
            self._transport.put(path, self._guest_path(path), timeout=self._copy_timeout, progress=report)
            done += size

    def _trust(self, certificate: str) -> None:
        for store in _CERT_STORES:
            result = self._run(commands.certutil_addstore(store, certificate))
            output = self._text(result)
            try:
                verdict = parse_certutil_addstore(output, result.exit_code)
            except ValueError as exc:
                raise GuestError(f"certutil -addstore {store} gave no verdict: {exc}") from None
            if not verdict.ok:
                raise DriverError(
                    f"could not trust the test certificate {certificate} in LocalMachine\\{store}: "
                    f"{verdict.message}",
                    code=verdict.hresult,
                    output=output,
                )
            log.info("trusted %s in LocalMachine\\%s", certificate, store)

    def _describe(self, files: DriverPackage) -> WindowsDeployedDriver:
        guest_binary = self._guest_path(files.sys)
        info = None if files.inf is None else parse_inf(decode_inf(files.inf.read_bytes()))
        use_inf = self._inf_mode if self._inf_mode is not None else bool(info and info.root_hardware_ids)
        if not use_inf:
            name = commands.check_service_name(files.sys.stem)
            return WindowsDeployedDriver(name=name, guest_dir=self._guest_dir, guest_binary=guest_binary)
        if files.inf is None or info is None:
            raise DriverError(f"INF mode needs an .inf in the driver package next to {files.sys.name}")
        if not info.service_names:
            raise DriverError(f"{files.inf.name} has no AddService directive, so no service to start")
        hardware_ids = info.root_hardware_ids or info.hardware_ids
        return WindowsDeployedDriver(
            name=commands.check_service_name(info.service_names[0]),
            guest_dir=self._guest_dir,
            guest_binary=guest_binary,
            inf=self._guest_path(files.inf),
            hardware_id=hardware_ids[0] if hardware_ids else None,
        )

    # -------------------------------------------------------------------------------------------- load

    def load(self, driver: DeployedDriver, parameters: DriverParameters) -> None:
        """Load the driver with ``parameters``; an existing service of the same name is replaced first."""
        inf = driver.inf if isinstance(driver, WindowsDeployedDriver) else None
        if inf is None:
            self._load_service(driver, parameters)
        else:
            self._load_inf(driver, inf, parameters)
        self._wait_after_start(driver.name)
        log.info("%s is running", driver.name)

    def _load_service(self, driver: DeployedDriver, parameters: DriverParameters) -> None:
        self._replace_existing(driver.name)
        self._sc(commands.sc_create(driver.name, driver.guest_binary))
        self._write_parameters(driver.name, parameters)
        self._sc(commands.sc_start(driver.name))

    def _load_inf(self, driver: DeployedDriver, inf: str, parameters: DriverParameters) -> None:
        """Device first, then the package, as Microsoft's driver samples do it.

        Windows-rust-driver-samples (``tools/dv/kmdf/fail_driver_pool_leak/README.md``) run
        ``devgen /add /bus ROOT /hardwareid ...`` and then ``pnputil /add-driver X.inf /install``, which
        installs the driver on that device; the device install creates the INF's service. The parameters
        go first: ``reg add`` creates the service's Parameters key, which AddService leaves in place, so
        DriverEntry already reads them when the device install starts it.
        """
        hardware_id = driver.hardware_id if isinstance(driver, WindowsDeployedDriver) else None
        self._write_parameters(driver.name, parameters)
        service_exists = self._service_exists(driver.name)
        added_device = False
        if not service_exists and self._devgen and hardware_id:
            # No service yet means no device yet: creating one only then keeps a second load from adding
            # a second device.
            self._run(commands.devgen_add(self._devgen, hardware_id)).check(f"devgen /add {hardware_id}")
            added_device = True
        result = self._run(commands.pnputil_add_driver(inf))
        if result.exit_code not in _PNPUTIL_OK | {_PNPUTIL_NO_DEVICE}:
            raise DriverError(
                f"pnputil could not add and install {inf} (exit status {result.exit_code}); see its output"
                r" and C:\Windows\INF\setupapi.dev.log in the guest",
                code=result.exit_code,
                output=self._text(result),
            )
        if result.exit_code == _PNPUTIL_NO_DEVICE and not service_exists and not added_device:
            device = hardware_id or "its device"
            raise DriverError(
                f"pnputil staged {inf}, but no device uses it (exit status 259, ERROR_NO_MORE_ITEMS), so "
                f"Windows created no {driver.name} service: a root-enumerated driver loads only once "
                f"{device} exists; pass devgen= (the WDK's devgen.exe in the guest) or create the device in "
                "the image",
                code=result.exit_code,
                output=self._text(result),
            )
        output = self._wait_for_service(driver.name)
        if self._parse_status(driver.name, output).state == ServiceState.STOPPED:
            self._sc(commands.sc_start(driver.name), ignore=(_ALREADY_RUNNING,))

    def _service_exists(self, name: str) -> bool:
        output, failure = self._sc_output(commands.sc_query(name))
        if failure is None:
            return True
        if failure.code == _NO_SERVICE:
            return False
        raise DriverError(describe_sc_failure(failure), code=failure.code, output=output)

    def _wait_for_service(self, name: str) -> str:
        """Poll ``sc query`` until the device install created the service; return its status output.

        devgen returns once the device node exists and pnputil once the install is under way; the
        service appears when the device install has run its AddService (windows11-vm.md §3.4, corrected).
        """
        deadline = time.monotonic() + self._service_timeout
        while True:
            output, failure = self._sc_output(commands.sc_query(name))
            if failure is None:
                return output
            if failure.code != _NO_SERVICE:
                raise DriverError(describe_sc_failure(failure), code=failure.code, output=output)
            if time.monotonic() >= deadline:
                raise DriverError(
                    f"the device install created no {name} service within {self._service_timeout:g} s: check"
                    r" the INF's AddService name and C:\Windows\INF\setupapi.dev.log in the guest",
                    code=failure.code,
                    output=output,
                )
            time.sleep(self._poll_interval)

    def _replace_existing(self, name: str) -> None:
        """Stop and delete a service left by an earlier load, so loading again is idempotent."""
        stopped = self._sc(commands.sc_stop(name), ignore=(_NO_SERVICE, _NOT_RUNNING))
        if stopped is not None and stopped.code == _NO_SERVICE:
            return
        if stopped is None:
            self._wait_for(name, {ServiceState.STOPPED}, "its unload routine has not returned")
        self._sc(commands.sc_delete(name), ignore=(_NO_SERVICE,))
        log.info("replaced the existing %s service", name)

    def _write_parameters(self, name: str, parameters: DriverParameters) -> None:
        for key, value in parameters.items():
            self._run(commands.reg_add_parameter(name, key, value)).check(f"writing driver parameter {key}")

    def _wait_after_start(self, name: str) -> None:
        states = {ServiceState.RUNNING, ServiceState.STOPPED}
        status, output = self._wait_for(name, states, "DriverEntry has not returned")
        if status.state == ServiceState.STOPPED:
            code = status.win32_exit_code
            known = SC_ERRORS.get(code)
            meaning = f" {known.name}" if known else ""
            raise EntryPointFailed(
                f"{name} stopped right after it started: its DriverEntry failed "
                f"(WIN32_EXIT_CODE {code}{meaning}, SERVICE_EXIT_CODE {status.service_exit_code})",
                code=code,
                output=output,
            )

    def is_loaded(self, driver: DeployedDriver) -> bool:
        """True if ``sc query`` shows the driver's service RUNNING; False if stopped or not installed."""
        output, failure = self._sc_output(commands.sc_query(driver.name))
        if failure is not None:
            if failure.code == _NO_SERVICE:
                return False
            raise DriverError(describe_sc_failure(failure), code=failure.code, output=output)
        return self._parse_status(driver.name, output).state == ServiceState.RUNNING

    # ------------------------------------------------------------------------------------------ unload

    def unload(self, driver: DeployedDriver) -> None:
        """Stop the driver and wait until it is STOPPED; a driver that is not running counts as unloaded."""
        failure = self._sc(commands.sc_stop(driver.name), ignore=(_NOT_RUNNING,))
        if failure is not None:
            log.info("%s was not running", driver.name)
            return
        self._wait_for(driver.name, {ServiceState.STOPPED}, "its unload routine has not returned")
        log.info("%s is stopped", driver.name)

    def remove(self, driver: DeployedDriver) -> None:
        """Delete the service entry (service mode only) and the run's guest folder."""
        if not (isinstance(driver, WindowsDeployedDriver) and driver.inf):
            self._sc(commands.sc_delete(driver.name), ignore=(_NO_SERVICE,))
        self._run(commands.remove_folder(driver.guest_dir)).check(f"removing {driver.guest_dir}")
        log.info("removed %s and %s", driver.name, driver.guest_dir)

    # ----------------------------------------------------------------------------------------- helpers

    def _text(self, result: CommandResult) -> str:
        """A console tool's output, decoded in the guest's OEM code page."""
        return decode_output(result.stdout + result.stderr, self._guest_codec())

    def _guest_codec(self) -> str:
        if self._codec is None:
            result = self._run(commands.reg_query_oem_code_page())
            code_page = parse_oem_code_page(result.stdout.decode("ascii", errors="replace"))
            try:
                if code_page is None:
                    raise ValueError(f"no OEMCP value in: {result.text().strip()[-300:]!r}")
                self._codec = codec_for_code_page(code_page)
            except ValueError as error:
                log.warning("cannot tell the guest's OEM code page (%s); reading output as UTF-8", error)
                self._codec = "utf-8"
            log.debug("the guest's console tools print in %s", self._codec)
        return self._codec

    def _guest_path(self, host_file: Path) -> str:
        return f"{self._guest_dir}\\{host_file.name}"

    def _run(self, argv: Sequence[str]) -> CommandResult:
        log.debug("guest: %s", " ".join(argv))
        return self._transport.run(argv, timeout=self._command_timeout)

    def _sc(self, argv: Sequence[str], *, ignore: Iterable[int] = ()) -> ScFailure | None:
        """Run sc.exe; raise DriverError for a FAILED code not in ``ignore``, return an ignored failure.

        A StartService failure whose code is a DriverEntry's mapped NTSTATUS raises EntryPointFailed.
        """
        output, failure = self._sc_output(argv)
        if failure is None:
            return None
        if failure.code in set(ignore):
            log.debug("%s: ignoring Win32 error %d", " ".join(argv[:2]), failure.code)
            return failure
        if failure.api == _START_SERVICE and failure.code in ENTRY_POINT_FAILURES:
            raise EntryPointFailed(
                f"{argv[2]}'s DriverEntry returned an error: sc start failed with Win32 error {failure.code}"
                f" ({failure.message or 'no message'}); see the driver's output for why",
                code=failure.code,
                output=output,
            )
        raise DriverError(describe_sc_failure(failure), code=failure.code, output=output)

    def _sc_output(self, argv: Sequence[str]) -> tuple[str, ScFailure | None]:
        result = self._run(argv)
        output = self._text(result)
        failure = parse_sc_failure(output, result.exit_code)
        if failure is None and not result.ok:
            raise GuestCommandFailed(
                f"{' '.join(argv[:2])} exited with status {result.exit_code} without an [SC] error line:\n"
                f"{output.strip()[-2000:]}"
            )
        return output, failure

    def _query(self, name: str) -> tuple[ServiceStatus, str]:
        output, failure = self._sc_output(commands.sc_query(name))
        if failure is not None:
            raise DriverError(describe_sc_failure(failure), code=failure.code, output=output)
        return self._parse_status(name, output), output

    @staticmethod
    def _parse_status(name: str, output: str) -> ServiceStatus:
        try:
            return parse_sc_query(output)
        except ValueError as exc:
            raise GuestError(f"unexpected sc query output for {name}: {exc}") from None

    def _wait_for(self, name: str, states: set[ServiceState], stuck: str) -> tuple[ServiceStatus, str]:
        """Poll ``sc query`` until the service is in one of ``states``; DriverError at the deadline."""
        deadline = time.monotonic() + self._state_timeout
        while True:
            status, output = self._query(name)
            if status.state in states:
                return status, output
            if time.monotonic() >= deadline:
                raise DriverError(
                    f"{name} is still {status.state_name} after {self._state_timeout:g} s: {stuck}",
                    output=output,
                )
            time.sleep(self._poll_interval)
