"""``vmtest doctor``'s confinement checks: can this host confine QEMU the way docs/SECURITY.md says.

One check per confinement: QEMU's seccomp filter (does this QEMU accept ``-sandbox`` and does the
kernel apply it), the unprivileged user (when vmtest runs as root), ``/dev/kvm`` for that user, and
the resource bounds. Each says what is missing and how to fix it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from vmtest.config.models import VmtestConfig
from vmtest.doctor import Check, Severity
from vmtest.errors import ConfigError
from vmtest.machine.confine import DEFAULT_USER, KVM_DEVICE, SANDBOX, Confinement, can_open

__all__ = ["confinement_checks", "seccomp_applies"]

_SECCOMP_WAIT = 10.0


def seccomp_applies(qemu: str, confinement: Confinement) -> tuple[bool, str]:
    """Start ``qemu`` (no guest, CPU stopped) confined; whether it reached ``Seccomp: 2``, and what it saw."""
    args = [
        qemu, "-sandbox", SANDBOX, "-machine", "none", "-S", "-nodefaults", "-no-user-config",
        "-display", "none", "-monitor", "none", "-serial", "none",
    ]  # fmt: skip
    run_as = confinement.run_as
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            user=run_as.uid if run_as is not None else None,
            group=run_as.gid if run_as is not None else None,
            extra_groups=list(run_as.groups) if run_as is not None else None,
        )
    except OSError as error:
        return False, f"{qemu} does not start: {error}"
    try:
        deadline = time.monotonic() + _SECCOMP_WAIT
        while time.monotonic() < deadline and process.poll() is None:
            status = _seccomp_mode(process.pid)
            if status == "2":
                return True, "QEMU runs under its seccomp filter (Seccomp: 2)"
            time.sleep(0.05)
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace").strip() if process.stdout else ""
            return False, f"QEMU refused -sandbox: {output.splitlines()[-1] if output else 'no output'}"
        return False, f"QEMU did not reach Seccomp: 2 within {_SECCOMP_WAIT:.0f}s"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _seccomp_mode(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Seccomp:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _check_seccomp(config: VmtestConfig, confinement: Confinement) -> Check:
    if not config.machine.sandbox:
        return Check(
            "seccomp", False, "warning", "machine.sandbox is false: QEMU runs without its seccomp filter",
            "remove machine.sandbox: false (every run's report warns about it)",
        )  # fmt: skip
    qemu = shutil.which(config.machine.qemu)
    if qemu is None:
        return Check("seccomp", False, "error", f"{config.machine.qemu} is not installed", "")
    applied, detail = seccomp_applies(qemu, confinement)
    if applied:
        return Check("seccomp", True, "info", detail)
    return Check(
        "seccomp", False, "error", detail,
        "use a QEMU built with libseccomp (Debian's qemu-system-x86 is), or set machine.sandbox: false",
    )  # fmt: skip


def _check_user(confinement: Confinement, wanted: str) -> Check:
    run_as = confinement.run_as
    if run_as is None:
        return Check("qemu user", True, "info", f"vmtest is not root: QEMU runs as uid {os.geteuid()}")
    detail = f"vmtest is root: QEMU and swtpm run as {run_as.name} (uid {run_as.uid})"
    if run_as.name != wanted:
        return Check(
            "qemu user", False, "warning", f"{detail}, shared with other services, not {wanted!r}",
            f"create a dedicated user: useradd --system --no-create-home --shell /usr/sbin/nologin {wanted}"
            " (./setup.sh does)",
        )  # fmt: skip
    return Check("qemu user", True, "info", detail)


def _check_kvm_for_user(config: VmtestConfig, confinement: Confinement) -> Check:
    severity: Severity = "warning" if config.guest.kind == "linux" else "error"
    if not KVM_DEVICE.exists():
        return Check("kvm for qemu's user", True, "info", f"{KVM_DEVICE} does not exist (see the kvm check)")
    who = confinement.run_as.name if confinement.run_as is not None else "this user"
    if can_open(KVM_DEVICE, confinement.run_as, write=True):
        groups = confinement.group_names()
        via = f" (through group {groups})" if groups else ""
        return Check("kvm for qemu's user", True, "info", f"{who} may open {KVM_DEVICE}{via}")
    return Check(
        "kvm for qemu's user", False, severity, f"{who} may not open {KVM_DEVICE}: guests run under TCG",
        f"chgrp kvm {KVM_DEVICE} && chmod 0660 {KVM_DEVICE} (or a udev rule); vmtest adds that group to QEMU",
    )  # fmt: skip


def _check_bounds(confinement: Confinement) -> Check:
    return Check("resource bounds", True, "info", f"QEMU is bounded: {confinement.bounds.describe()}")


def confinement_checks(config: VmtestConfig) -> list[Check]:
    """Every confinement check for ``config``'s machine."""
    try:
        confinement = Confinement.from_config(config.machine)
    except ConfigError as error:
        return [Check("qemu user", False, "error", str(error), "")]
    return [
        _check_seccomp(config, confinement),
        _check_user(confinement, config.machine.user if config.machine.user else DEFAULT_USER),
        _check_kvm_for_user(config, confinement),
        _check_bounds(confinement),
    ]
