"""Confinement of QEMU's processes: the user, the bounds and the parent-death signal really reach the
child; host files reach it as descriptors only; the reports and the doctor say what is missing."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from vmtest.config.models import MachineConfig, MachineLimits, VmtestConfig
from vmtest.doctor_confinement import confinement_checks
from vmtest.errors import ConfigError
from vmtest.images.linux import default_cache_root
from vmtest.machine import accel
from vmtest.machine import machine as machine_module
from vmtest.machine.confine import SANDBOX, Bounds, Confinement, RunAs, can_open, confinement_warnings
from vmtest.machine.hostfiles import HostFiles
from vmtest.machine.process import spawn_bound_to_parent
from vmtest.report.html import render_html
from vmtest.report.junit import write_junit
from vmtest.report.model import RunReport

MIB = 1 << 20
AS_ROOT = os.geteuid() == 0
QEMU = shutil.which("qemu-system-x86_64")
# The child must be a program QEMU's user may run: the system's Python, not this virtualenv's (which may
# live in a home folder only root can enter).
SYSTEM_PYTHON = Path("/usr/bin/python3")
needs_system_python = pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3")

# The child reports what it was given: user, limits, parent-death signal, SIGXFSZ, and what a write past
# RLIMIT_FSIZE does.
CHILD = r"""
import ctypes, errno, json, os, resource, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
sig = ctypes.c_int()
libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
report = {
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pdeathsig": sig.value,
    "as": resource.getrlimit(resource.RLIMIT_AS)[0], "cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
    "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
    "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
    "sigxfsz_ignored": signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN,
}
try:
    with open(sys.argv[1], "wb") as big:
        big.write(b"x" * (resource.getrlimit(resource.RLIMIT_FSIZE)[0] + 4096))
    report["write"] = "ok"
except OSError as error:
    report["write"] = errno.errorcode[error.errno]
for path in sys.argv[2:]:
    try:
        with open(path, "rb") as handle:
            report[path] = handle.read().decode()
    except OSError as error:
        report[path] = errno.errorcode[error.errno]
print(json.dumps(report))
"""


def run_child(
    confinement: Confinement, scratch: Path, *paths: str, pass_fds: tuple[int, ...] = ()
) -> dict[str, object]:
    """Run CHILD in ``scratch`` (entered before the change of user: its parents may be closed to it)."""

    async def main() -> bytes:
        process = await spawn_bound_to_parent(
            [str(SYSTEM_PYTHON), "-c", CHILD, "big", *paths],
            confinement=confinement,
            pass_fds=pass_fds,
            cwd=scratch,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, output
        return output

    result: dict[str, object] = json.loads(asyncio.run(main()).decode().strip().splitlines()[-1])
    return result


@needs_system_python
def test_the_child_gets_the_bounds_the_death_signal_and_efbig_past_the_file_bound(tmp_path: Path) -> None:
    confinement = Confinement.from_config(MachineConfig(memory_mib=512, limits=MachineLimits(disk_mib=16)))
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)
    report = run_child(confinement, scratch)
    assert report["as"] == (512 + 4096) * MIB
    assert report["cpu"] == 7200
    assert report["fsize"] == 16 * MIB
    assert report["core"] == 0
    assert report["pdeathsig"] == signal.SIGKILL  # set after the change of user, which clears it
    assert report["sigxfsz_ignored"] is True
    assert report["write"] == "EFBIG"
    assert (scratch / "big").stat().st_size == 16 * MIB


@needs_system_python
@pytest.mark.skipif(not AS_ROOT, reason="only root drops to another user")
def test_as_root_the_child_runs_as_an_unprivileged_user_that_cannot_reach_private_files(
    tmp_path: Path,
) -> None:
    confinement = Confinement.from_config(MachineConfig(limits=MachineLimits(disk_mib=16)))
    assert confinement.run_as is not None and confinement.run_as.uid != 0
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    files = HostFiles(pass_descriptors=True)
    handed = files.readable(secret)  # a 0600 file: copied into a sealed memfd
    try:
        report = run_child(confinement, scratch, str(secret), handed, pass_fds=files.fds)
    finally:
        files.close()
    assert report["uid"] == confinement.run_as.uid
    assert report["gid"] == confinement.run_as.gid
    assert 0 not in report["groups"]  # type: ignore[operator]
    assert report[str(secret)] == "EACCES"
    assert report[handed] == "root only"


def test_host_files_are_fd_sets_with_only_the_access_asked_for(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"base")
    overlay = tmp_path / "disk0.qcow2"
    overlay.write_bytes(b"overlay")
    files = HostFiles(pass_descriptors=True)
    try:
        drive = files.overlay(overlay, base, "qcow2")
        again = files.image(base, writable=False)
        assert drive == "file=/dev/fdset/2,backing.driver=qcow2,backing.file.filename=/dev/fdset/1"
        assert again == "/dev/fdset/1"  # the same file is handed over once
        modes = sorted(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE for fd in files.fds)
        assert modes == [os.O_RDONLY, os.O_RDONLY, os.O_RDWR]  # base: read-only; overlay: both
        assert files.add_fd_args()[::2] == ["-add-fd"] * 3
        assert "base.qcow2 (read-only)" in files.describe()
    finally:
        files.close()
    assert HostFiles.described().overlay(overlay, base, "qcow2") == f"file={overlay}"


def test_can_open_follows_the_mode_bits_for_another_user(tmp_path: Path) -> None:
    path = tmp_path / "device"
    path.write_text("")
    info = path.stat()
    stranger = RunAs("stranger", info.st_uid + 12345, info.st_gid + 12345)
    member = RunAs("member", info.st_uid + 12345, info.st_gid + 12345, (info.st_gid,))
    path.chmod(0o660)
    assert not can_open(path, stranger, write=True)
    assert can_open(path, member, write=True)
    path.chmod(0o644)
    assert can_open(path, stranger) and not can_open(path, stranger, write=True)


def test_the_configuration_sets_the_bounds_and_the_sandbox() -> None:
    bounds = Bounds.for_machine(1024, MachineLimits(memory_overhead_mib=1024, cpu_seconds=60, disk_mib=64))
    assert bounds == Bounds(2048 * MIB, 60, 64 * MIB)
    assert Confinement(True, None, bounds).qemu_args() == ["-sandbox", SANDBOX]
    assert Confinement(False, None, bounds).qemu_args() == []
    assert confinement_warnings(MachineConfig()) == []
    assert "seccomp" in confinement_warnings(MachineConfig(sandbox=False))[0]


@pytest.mark.skipif(not AS_ROOT, reason="users are chosen only when vmtest runs as root")
def test_an_unknown_configured_user_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Confinement.from_config(MachineConfig(user="no-such-user-here"))
    with pytest.raises(ConfigError, match="root"):
        Confinement.from_config(MachineConfig(user="root"))


def test_qemu_killed_by_a_bound_says_which() -> None:
    assert "seccomp" in machine_module._exit_reason(-signal.SIGSYS)
    assert "machine.limits.cpu_seconds" in machine_module._exit_reason(-signal.SIGXCPU)
    assert machine_module._exit_reason(-signal.SIGKILL) == "killed by SIGKILL"


def test_a_run_without_the_sandbox_is_flagged_in_html_and_junit(tmp_path: Path) -> None:
    warning = confinement_warnings(MachineConfig(sandbox=False))[0]
    report = RunReport(tmp_path, "drv", "linux", [], "passed", warnings=[warning])
    assert "Warning: QEMU ran without its seccomp filter" in render_html(report, [], [])
    junit = ET.parse(write_junit(report, tmp_path / "junit.xml")).getroot()
    assert [p.get("value") for p in junit.iter("property") if p.get("name") == "warning"] == [warning]


@pytest.mark.skipif(QEMU is None, reason="QEMU not installed")
def test_doctor_reports_each_confinement(tmp_path: Path) -> None:
    checks = {check.name: check for check in confinement_checks(VmtestConfig(artifacts=tmp_path))}
    assert list(checks) == ["seccomp", "qemu user", "kvm for qemu's user", "resource bounds"]
    assert checks["seccomp"].ok, checks["seccomp"].detail
    off = confinement_checks(VmtestConfig(artifacts=tmp_path, machine=MachineConfig(sandbox=False)))
    assert not off[0].ok and off[0].severity == "warning"


@pytest.mark.skipif(QEMU is None, reason="QEMU not installed")
def test_the_kvm_probes_run_confined(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both probes, confined and with their files passed as descriptors, under TCG (KVM may be absent)."""
    assert QEMU is not None
    kvm_args = accel._base_args

    def under_tcg(qemu: str, cpu_model: str, confinement: Confinement | None = None) -> list[str]:
        args = kvm_args(qemu, cpu_model, confinement)
        assert args[1:3] == ["-sandbox", SANDBOX]
        return [*args[:3], *["tcg" if arg == "kvm" else arg for arg in args[3:]]]

    monkeypatch.setattr(accel, "_base_args", under_tcg)
    confinement = Confinement.from_config(MachineConfig())
    sector = asyncio.run(accel._probe_with_boot_sector(QEMU, "max", 60, confinement))
    assert sector.usable, sector.reason
    kernels = sorted(Path(default_cache_root(), "linux").glob("*/kernel/vmlinuz"))
    if kernels:
        booted = asyncio.run(accel._probe_with_kernel(QEMU, "max", kernels[-1], 120, confinement))
        assert booted.usable, booted.reason
