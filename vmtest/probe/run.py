"""Running the probe: against a logged-in guest, once per image before the first run, or on its own.

:func:`probe_guest` runs every check that applies to the guest (over its transport, each command with
a deadline) and the checks only the host can make (the KD link, hv-crash); :func:`ensure_probed` is
what ``vmtest run`` calls after logging in: once per image (by the digest of its ``image.json``) it
probes, keeps the report in the run directory, and stops the run before its scenarios when an
assumption the run depends on does not hold. :func:`run_probe` is ``vmtest probe``: boot, probe,
report, shut down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from vmtest.capture.debugview import DebugViewSource
from vmtest.capture.kd_source import KdSource
from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.config.windows import Windows11GuestConfig
from vmtest.errors import EXIT_CONFIG, InfraError
from vmtest.guest.quoting import ShellKind
from vmtest.guests import Guest
from vmtest.images.linux import default_cache_root
from vmtest.images.manifest import MANIFEST_NAME
from vmtest.machine.profiles.linux import LinuxProfile
from vmtest.probe.context import COMMAND_TIMEOUT, ProbeContext, ProbeSettings
from vmtest.probe.linux import LINUX_CHECKS
from vmtest.probe.model import Check, Observation, Status
from vmtest.probe.report import ProbeReport
from vmtest.probe.windows import WINDOWS_CHECKS, CheckFunction, windows_settings
from vmtest.progress import Progress
from vmtest.session import VmSession

__all__ = ["AssumptionsFailed", "ensure_probed", "new_image_config", "probe_guest", "run_probe"]

log = logging.getLogger(__name__)

PROBE_FOLDER = "probe"
COMMANDS_PER_CHECK = 8  # the most commands one check runs (sc-not-a-driver), for the overall deadline

KD_LINK = Check(
    "kd-link",
    "Kernel debugger link on COM1",
    "vmtest's KD host attached to the kernel on COM1 and saw its module list (DbgPrint and bugchecks "
    "arrive through it).",
    "modules reported by the kernel over KD",
    rows=("W-KD-LINK",),
    needed_by_run=True,
)
HV_CRASH = Check(
    "hv-crash",
    "Bugchecks reported by QEMU (hv-crash)",
    "With KVM and the hv-crash CPU flag, a bugcheck reaches vmtest as QMP GUEST_PANICKED with its stop "
    "code; under TCG only the KD host reports bugchecks.",
    "KVM with hv-crash",
    rows=("W-HV-CRASH",),
)


class AssumptionsFailed(InfraError):
    """The guest does not hold an assumption the run depends on; the fidelity report says which and why."""

    exit_code = EXIT_CONFIG


def image_key(session: VmSession) -> str:
    """The digest of the guest image's ``image.json``: a new image is probed again."""
    machine = session.machine
    profile = machine.profile if machine is not None else None
    image = getattr(profile, "image", None)
    root = getattr(image, "root", None)
    if not isinstance(root, Path):
        return ""
    try:
        return hashlib.sha256((root / MANIFEST_NAME).read_bytes()).hexdigest()[:32]
    except OSError:
        return ""


def _settings(session: VmSession) -> tuple[ProbeSettings, tuple[tuple[Check, CheckFunction], ...]]:
    guest = session.config.guest
    if isinstance(guest, Windows11GuestConfig):
        running = next((source for source in session.sources if isinstance(source, DebugViewSource)), None)
        settings = windows_settings(guest)
        if running is not None:
            settings = dataclasses.replace(settings, debugview_pid=running.pid)
        return settings, WINDOWS_CHECKS
    profile = session.machine.profile if session.machine is not None else None
    release = profile.image.kernel_release if isinstance(profile, LinuxProfile) else ""
    return ProbeSettings(kernel_release=release), LINUX_CHECKS


def _run_checks(context: ProbeContext, checks: tuple[tuple[Check, CheckFunction], ...]) -> list[Observation]:
    observations = []
    for check, function in checks:
        try:
            observations.append(function(context))
        except Exception as error:  # a check must never take the probe down: report what broke
            log.exception("probe check %s failed", check.id)
            observations.append(
                Observation(check, Status.FAILED, f"the check failed: {error}", "", context.take_raw())
            )
    return observations


def _host_checks(session: VmSession) -> list[Observation]:
    """What only the host sees: the KD link and whether QEMU reports bugchecks itself."""
    guest = session.config.guest
    if not isinstance(guest, Windows11GuestConfig):
        return []
    kd = next((source for source in session.sources if isinstance(source, KdSource)), None)
    if kd is None:
        link = Observation(KD_LINK, Status.NOT_RUN, "kernel debugging is off (guest.kd: false)")
    elif kd.modules():
        modules = kd.modules()
        link = Observation(KD_LINK, Status.AS_EXPECTED, f"{len(modules)} modules, first {modules[0]}")
    else:
        advice = (
            "the KD host saw no module list: check that the image was built with kernel debugging on COM1 "
            "(bcdedit /dbgsettings serial debugport:1 baudrate:115200) and see serial-kd.raw"
        )
        link = Observation(KD_LINK, Status.DIFFERS, "no modules seen over KD", advice)
    machine = session.machine
    accel = machine.accel if machine is not None else ""
    flags = guest.hyperv_flags
    has_flag = flags is None or "hv-crash" in flags
    if accel == "kvm" and has_flag:
        crash = Observation(HV_CRASH, Status.AS_EXPECTED, "KVM with hv-crash")
    else:
        advice = "bugchecks are reported by the KD host only" + ("" if guest.kd else ": turn guest.kd on")
        crash = Observation(
            HV_CRASH,
            Status.HANDLED if guest.kd else Status.DIFFERS,
            f"{accel or '?'}, hv-crash {'on' if has_flag else 'off'}",
            advice,
        )
    return [link, crash]


async def probe_guest(session: VmSession, guest: Guest) -> ProbeReport:
    """Run every check that applies to the logged-in guest; write the report to its run directory."""
    settings, checks = _settings(session)
    shell: ShellKind = "cmd" if isinstance(session.config.guest, Windows11GuestConfig) else "posix"
    context = ProbeContext(guest.transport, shell, settings)
    deadline = len(checks) * COMMANDS_PER_CHECK * COMMAND_TIMEOUT + settings.debugview_watch
    with session.step("probe", f"checking {len(checks)} assumptions about the guest"):
        observations = await session.call(
            _run_checks, context, checks, timeout=deadline, what="probing the guest"
        )
    observations += _host_checks(session)
    image = getattr(getattr(session.machine.profile if session.machine else None, "image", None), "root", "")
    report = ProbeReport(session.config.guest.kind, str(image), image_key(session), tuple(observations))
    paths = report.write(session.run_dir.path / PROBE_FOLDER)
    session.progress.note(f"probe report: {paths[1]}")
    return report


def _cache_file(key: str) -> Path:
    return default_cache_root() / "probe" / f"{key}.json"


async def ensure_probed(session: VmSession, guest: Guest) -> ProbeReport | None:
    """Probe a Windows image once (cached by its key); stop the run when an assumption it needs fails.

    Returns the new report, or None when the image was probed before (or the guest is Linux, whose
    image vmtest built itself: ``vmtest probe`` checks it on request).
    """
    if isinstance(session.config.guest, LinuxGuestConfig):
        return None
    key = image_key(session)
    if key and _cache_file(key).is_file():
        log.info("this image was probed before (%s)", _cache_file(key))
        return None
    report = await probe_guest(session, guest)
    folder = session.run_dir.path / PROBE_FOLDER
    if report.blocking:
        raise AssumptionsFailed(
            f"the guest does not hold what this run depends on:\n{report.summary()}\n"
            f"fidelity report: {folder / 'probe.md'} (attach it to an issue if the advice does not help)",
            phase="probe",
            artifacts=session.run_dir.path,
        )
    if key:
        _publish(_cache_file(key), report)
    return report


def _publish(path: Path, report: ProbeReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def new_image_config(
    image: Path,
    *,
    user: str,
    password: str,
    kernel_debug: bool,
    allow_tcg: bool,
    machine: dict[str, object],
    artifacts: Path,
) -> VmtestConfig:
    """The configuration that probes a Windows image just built: its own settings, nothing else."""
    return VmtestConfig.model_validate(
        {
            "guest": {
                "kind": "windows11",
                "image": image,
                "user": user,
                "password": password,
                "kd": kernel_debug,
                "allow_tcg": allow_tcg,
            },
            "machine": machine,
            "artifacts": artifacts,
        }
    )


async def run_probe(config: VmtestConfig, progress: Progress) -> ProbeReport:
    """``vmtest probe``: boot the configured guest, probe it, write the report, shut it down."""
    session = VmSession(config, progress, label="probe")
    async with session:
        guest = await session.connect()
        report = await probe_guest(session, guest)
    if report.image_key and not report.blocking:
        _publish(_cache_file(report.image_key), report)
    return report
