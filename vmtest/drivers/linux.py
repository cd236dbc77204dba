"""The Linux driver lifecycle: a kernel module copied in, ``insmod`` with parameters, ``rmmod``.

Failures are reported with what the kernel said (``insmod``'s error and the tail of the kernel log)
and what to do about it, the way a module author would want to read them.

A failing ``insmod`` is the module's own init function (:class:`~vmtest.errors.EntryPointFailed`,
with the negative errno it returned) unless the loader itself refused the module. The loader's refusals,
as the guest's busybox ``insmod`` and the kernel print them: a bad file is ``invalid module format``
(ENOEXEC); an unknown symbol is ENOENT, which busybox words ``unknown symbol in module, or unknown
parameter``, with the kernel's ``<module>: Unknown symbol <name>`` in its log; a malformed parameter
value is EINVAL with ``<module>: `<value>' invalid for parameter `<name>'`` in the log; a module already
loaded is EEXIST. An init function may return ENOENT or EINVAL too: the kernel log tells them apart.
(An unknown parameter name does not fail ``insmod``: the kernel logs ``unknown parameter '<name>'
ignored``, which :meth:`LinuxDriverLifecycle.load` turns into an error of its own.)

busybox ``insmod`` (the self-test guest's) retries a failed ``finit_module`` with ``init_module``, so a
module whose init fails runs it twice and prints its results twice (seen in the guest's kernel log);
the text verdict takes a repeated line as the same result again.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Literal

from vmtest.drivers.lifecycle import DeployedDriver, DriverLifecycle, DriverParameters
from vmtest.errors import DriverError, EntryPointFailed
from vmtest.guest.transport import CommandResult, ProgressCallback, Transport

__all__ = ["INSMOD_ERRORS", "RMMOD_ERRORS", "LinuxDriverLifecycle", "module_name", "module_parameters"]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0
GUEST_ROOT = "/tmp/vmtest"
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# What insmod/rmmod print (busybox and kmod wordings, matched case-insensitively) -> what to do.
INSMOD_ERRORS: dict[str, str] = {
    "invalid module format": "the module was built for another kernel (vermagic or symbol versions "
    "differ), or is not a module: rebuild it against this guest's kernel headers",
    "unknown symbol": "the module uses a symbol this kernel does not export, or a module it depends on "
    "is not loaded: the kernel log names the symbol",
    "invalid parameters": "a module parameter's value is malformed: the kernel log names it",
    "invalid argument": "a module parameter's value is malformed, or the module's init returned -EINVAL",
    "file exists": "a module of that name is already loaded",
    "operation not permitted": "the kernel refused to load modules (signing enforced, lockdown, or "
    "modules disabled)",
    "key was rejected by service": "the module's signature was rejected: sign it with a trusted key",
    "no such file or directory": "the module file is missing in the guest",
}
RMMOD_ERRORS: dict[str, str] = {
    "resource temporarily unavailable": "the module is in use (its reference count is not zero)",
    "device or resource busy": "the module is in use, or its exit function refused to unload",
    "no such file or directory": "the module is not loaded",
    "operation not permitted": "the kernel refused to unload modules",
}
_INIT_FAILED = "the module's init function returned an error"
_INSMOD_REASON = re.compile(
    r"can't insert '[^']*': (?P<reason>.+)$|ERROR: could not insert module .*?: (?P<kmod>.+)$", re.M
)
# ELF e_machine numbers and the `uname -m` names of the machines a module may be built for.
_ELF_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64", 21: "ppc64", 22: "s390x"}
_UNAME_TO_ELF = {"x86_64": 62, "i686": 3, "aarch64": 183, "riscv64": 243, "ppc64le": 21, "s390x": 22}
# insmod failures that are always the loader's (busybox's wording first, then strerror's).
_LOADER_REASONS = (
    "invalid module format",
    "file exists",
    "operation not permitted",
    "key was rejected",
    "wrong symbol version",
    "kernel does not support",
    "no such file or directory",
)
# What the kernel logs when the loader (not the module's init) refused a module.
_LOADER_LOG = re.compile(
    r"Unknown symbol|invalid for parameter|disagrees about version|no symbol version|Unknown rela|"
    r"Invalid ELF|module has bad|is already loaded|Lockdown: .*unsigned module",
    re.I,
)
# busybox's own wordings of some errno values (modutils' moderror), then every strerror text.
_ERRNO_OF_REASON = {
    "unknown symbol in module, or unknown parameter": errno.ENOENT,
    "invalid module format": errno.ENOEXEC,
    "module has wrong symbol version": errno.ESRCH,
    "kernel does not support requested operation": errno.ENOSYS,
} | {os.strerror(number).lower(): number for number in sorted(errno.errorcode, reverse=True)}
_UNKNOWN_PARAMETER = re.compile(r"(?P<module>\w+): unknown parameter '(?P<name>[^']*)' ignored")
# Runs a step (insmod, rmmod) and reads the kernel log lines it caused in the same round trip: the
# step's own output goes to stderr; stdout gets the new kernel log lines, the last 40 if the step
# failed, else only the kernel's complaints about parameters.
_STEP_SCRIPT = (
    'before=$(dmesg | wc -l); "$@" >&2; status=$?; new() { dmesg | tail -n "+$((before + 1))"; }; '
    'if [ "$status" -ne 0 ]; then new | tail -n 40; else new | grep -F "unknown parameter"; fi; '
    'exit "$status"'
)


def module_name(ko: Path | str) -> str:
    """The kernel's name for a module file: the file stem with dashes as underscores."""
    return Path(ko).name.removesuffix(".ko").replace("-", "_")


def module_parameters(ko: Path) -> frozenset[str]:
    """The parameters a module file declares (its ``.modinfo`` section's ``parmtype=NAME:TYPE`` strings).

    Empty when the file is not a readable ELF object or has no such section.
    """
    try:
        data = ko.read_bytes()
    except (OSError, ValueError):
        return frozenset()
    section = _elf_section(data, ".modinfo")
    if section is None:
        return frozenset()
    names = set()
    for entry in section.split(b"\0"):
        if entry.startswith(b"parmtype="):
            names.add(entry[len(b"parmtype=") :].split(b":", 1)[0].decode(errors="replace"))
    return frozenset(names)


def _elf_section(data: bytes, wanted: str) -> bytes | None:
    """The bytes of the ELF section named ``wanted``, or None (not an ELF file, or no such section)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] not in (1, 2):
        return None
    wide = data[4] == 2
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"

    def number(offset: int, size: int) -> int:
        return int.from_bytes(data[offset : offset + size], order)

    shoff, entsize, count, names_index = (
        (number(0x28, 8), number(0x3A, 2), number(0x3C, 2), number(0x3E, 2))
        if wide
        else (number(0x20, 4), number(0x2E, 2), number(0x30, 2), number(0x32, 2))
    )
    if shoff + entsize * count > len(data) or names_index >= count:
        return None

    def header(index: int) -> tuple[int, int, int]:  # name offset, file offset, size
        base = shoff + index * entsize
        if wide:
            return number(base, 4), number(base + 0x18, 8), number(base + 0x20, 8)
        return number(base, 4), number(base + 0x10, 4), number(base + 0x14, 4)

    _, names_offset, names_size = header(names_index)
    names = data[names_offset : names_offset + names_size]
    for index in range(count):
        name_at, offset, size = header(index)
        name = names[name_at : names.find(b"\0", name_at)]
        if name == wanted.encode():
            return data[offset : offset + size]
    return None


def _find_module(package: Path) -> Path:
    if package.is_file():
        if package.suffix != ".ko":
            raise DriverError(f"{package} is not a Linux kernel module (.ko)")
        return package
    if package.is_dir():
        modules = sorted(package.glob("*.ko"))
        if len(modules) == 1:
            return modules[0]
        found = ", ".join(m.name for m in modules) or "none"
        raise DriverError(f"{package} must hold exactly one .ko module (found: {found})")
    raise DriverError(f"driver package {package} does not exist")


def _elf_machine(module: Path) -> int | str:
    """The module's ELF machine number, or why it cannot be a kernel module at all."""
    try:
        with module.open("rb") as file:
            head = file.read(20)
    except OSError as error:
        return f"it cannot be read ({error.strerror})"
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return "it is not an ELF file at all"
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    if int.from_bytes(head[16:18], order) != 1:
        return "it is an ELF file but not a relocatable object (a .ko is one)"
    return int.from_bytes(head[18:20], order)


def _explain(result: CommandResult, table: dict[str, str], default: str) -> str:
    text = result.text()
    lowered = text.lower()
    for needle, meaning in table.items():
        if needle in lowered:
            return meaning
    match = _INSMOD_REASON.search(text)
    reason = (match.group("reason") or match.group("kmod")) if match else None
    return f"{default} ({reason.strip()})" if reason else default


def _init_failure(result: CommandResult, kernel_log: str) -> tuple[str, int] | None:
    """``(reason, errno)`` when a failed ``insmod`` is the module's init returning ``-errno``, else None."""
    match = _INSMOD_REASON.search(result.text())
    if match is None:
        return None
    reason = (match.group("reason") or match.group("kmod")).strip()
    lowered = reason.lower()
    if any(needle in lowered for needle in _LOADER_REASONS) or _LOADER_LOG.search(kernel_log):
        return None
    number = _ERRNO_OF_REASON.get(lowered)
    return (reason, number) if number is not None else None


class LinuxDriverLifecycle(DriverLifecycle):
    """Loads kernel modules into a Linux guest over a transport with a POSIX shell."""

    def __init__(self, transport: Transport, run_id: str) -> None:
        self.transport = transport
        self.guest_dir = f"{GUEST_ROOT}/{run_id}"
        self._elf: dict[str, int | str] = {}  # guest path -> ELF machine (or what is wrong) of the host file

    def _run(self, *argv: str) -> CommandResult:
        return self.transport.run(argv, timeout=COMMAND_TIMEOUT)

    def deploy(self, package: Path, *, progress: ProgressCallback | None = None) -> DeployedDriver:
        """Copy the module into the run's guest folder."""
        module = _find_module(package)
        self._run("mkdir", "-p", self.guest_dir).check("creating the guest folder")
        remote = f"{self.guest_dir}/{module.name}"
        self.transport.put(module, remote, timeout=COMMAND_TIMEOUT, progress=progress)
        self._elf[remote] = _elf_machine(module)
        return DeployedDriver(name=module_name(module), guest_dir=self.guest_dir, guest_binary=remote)

    def is_loaded(self, driver: DeployedDriver) -> bool:
        """True if the kernel has a module of the driver's name loaded."""
        return self._run("test", "-d", f"/sys/module/{driver.name}").ok

    def load(self, driver: DeployedDriver, parameters: DriverParameters) -> None:
        """``insmod`` with ``parameters`` as module parameters; unloads a previous copy first."""
        if self.is_loaded(driver):
            log.info("module %s is already loaded; unloading it first", driver.name)
            self.unload(driver)
        arguments = [f"{key}={_parameter_value(key, value)}" for key, value in parameters.items()]
        result, kernel_log = self._step("insmod", driver.guest_binary, *arguments)
        if not result.ok:
            failed = _init_failure(result, kernel_log)
            if failed is not None:
                reason, number = failed
                returned = f"init returned -{errno.errorcode.get(number, number)} (-{number})"
                raise EntryPointFailed(
                    f"loading {driver.name} failed: {_INIT_FAILED} ({reason}): {returned}",
                    code=-number,
                    output=result.text().strip() + kernel_log,
                )
            meaning = _explain(result, INSMOD_ERRORS, _INIT_FAILED)
            if "invalid module format" in result.text().lower():
                meaning += self._format_detail(driver)
            raise DriverError(
                f"loading {driver.name} failed: {meaning}", output=result.text().strip() + kernel_log
            )
        ignored = [m["name"] for m in _UNKNOWN_PARAMETER.finditer(kernel_log) if m["module"] == driver.name]
        if ignored:
            self.unload(driver)
            raise DriverError(
                f"{driver.name} does not know the parameter(s) {', '.join(sorted(set(ignored)))}: the kernel "
                "ignored them, so the module was unloaded again",
                output=kernel_log,
            )

    def _format_detail(self, driver: DeployedDriver) -> str:
        """What is wrong with a module the kernel calls an invalid format, from its host file's ELF header."""
        machine = self._elf.get(driver.guest_binary)
        file = Path(driver.guest_binary).name
        if isinstance(machine, str):
            return f"; here {file} is not a module: {machine}"
        guest = self._run("uname", "-m").stdout.decode(errors="replace").strip()
        if machine is None or _UNAME_TO_ELF.get(guest, machine) == machine:
            return ""
        built_for = _ELF_MACHINES.get(machine, f"ELF machine {machine}")
        return f"; here {file} is built for {built_for}, but the guest runs {guest} modules"

    def unload(self, driver: DeployedDriver) -> None:
        """``rmmod`` the module."""
        result, kernel_log = self._step("rmmod", driver.name)
        if not result.ok:
            meaning = _explain(result, RMMOD_ERRORS, "rmmod failed")
            raise DriverError(
                f"unloading {driver.name} failed: {meaning}", output=result.text().strip() + kernel_log
            )

    def remove(self, driver: DeployedDriver) -> None:
        """Delete the run's guest folder."""
        self._run("rm", "-rf", driver.guest_dir).check("removing the guest folder")

    def _step(self, *argv: str) -> tuple[CommandResult, str]:
        """Run ``argv`` and read the kernel log lines it caused: its result, and those lines for a message."""
        raw = self.transport.run(["sh", "-c", _STEP_SCRIPT, "vmtest-step", *argv], timeout=COMMAND_TIMEOUT)
        result = CommandResult(" ".join(argv), raw.exit_code, b"", raw.stderr, raw.duration)
        lines = raw.stdout.decode(errors="replace").strip()
        return result, f"\nkernel log:\n{lines}" if lines else ""


def _parameter_value(key: str, value: str | int) -> str:
    if not _PARAMETER_NAME.match(key):
        raise DriverError(f"module parameter name {key!r} is not a valid C identifier")
    text = str(value)
    if any(ch in text for ch in "\n\0"):
        raise DriverError(f"module parameter {key} contains a line break or NUL")
    if any(ch.isspace() for ch in text) or '"' in text:
        if '"' in text:
            raise DriverError(f"module parameter {key} cannot contain a double quote")
        return f'"{text}"'  # the kernel's parameter parser honours double quotes around spaces
    return text
