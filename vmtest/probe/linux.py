"""The probes that apply to the Linux self-test guest: the same plumbing, the assumptions of its lifecycle.

The Linux lifecycle loads with ``insmod``, unloads with ``rmmod`` and reads the kernel lines a step
caused with ``dmesg`` in the same SSH round trip (vmtest/drivers/linux.py); these checks confirm the
guest has what that needs.
"""

from __future__ import annotations

from vmtest.probe.context import ProbeContext
from vmtest.probe.model import Check, Observation, Status
from vmtest.probe.windows import CheckFunction

__all__ = ["LINUX_CHECKS"]

KERNEL = Check(
    "kernel",
    "Kernel release",
    "The guest runs the kernel the image was built with, so modules built against its headers load.",
    "uname -r = the image's kernel release",
    needed_by_run=True,
)


def check_kernel(ctx: ProbeContext) -> Observation:
    """``uname -r`` against the image's recorded release."""
    raw = ctx.run(["uname", "-r"])
    release = raw.output.strip()
    wanted = ctx.settings.kernel_release
    if raw.exit_code != 0 or not release:
        return Observation(KERNEL, Status.FAILED, f"uname -r exit status {raw.exit_code}", "", ctx.take_raw())
    if wanted and release != wanted:
        advice = f"the image says {wanted}: rebuild it with `vmtest image build linux`"
        return Observation(KERNEL, Status.DIFFERS, release, advice, ctx.take_raw())
    return Observation(KERNEL, Status.AS_EXPECTED, release, "", ctx.take_raw())


SHELL = Check(
    "shell",
    "POSIX shell",
    "Commands over SSH run in a POSIX sh, which is how vmtest quotes them.",
    "`printf %s $((6*7))` prints 42",
    needed_by_run=True,
)


def check_shell(ctx: ProbeContext) -> Observation:
    """Arithmetic expansion: a POSIX sh feature every command vmtest sends may rely on."""
    raw = ctx.run(["sh", "-c", "printf %s $((6*7))"])
    if raw.output.strip() == "42":
        return Observation(SHELL, Status.AS_EXPECTED, "sh: 42", "", ctx.take_raw())
    advice = "the guest's shell is not POSIX sh: vmtest's quoting assumes it"
    return Observation(SHELL, Status.DIFFERS, raw.output.strip()[:200], advice, ctx.take_raw())


MODULE_TOOLS = Check(
    "module-tools",
    "insmod, rmmod and the kernel log",
    "insmod and rmmod are on PATH, and the kernel log can be read with dmesg.",
    "command -v insmod rmmod dmesg: exit 0",
    needed_by_run=True,
)


def check_module_tools(ctx: ProbeContext) -> Observation:
    """The tools the Linux lifecycle runs."""
    raw = ctx.run(["sh", "-c", "command -v insmod && command -v rmmod && dmesg | tail -n 1 >/dev/null"])
    if raw.exit_code == 0:
        return Observation(MODULE_TOOLS, Status.AS_EXPECTED, "all present", "", ctx.take_raw())
    advice = "the guest lacks a module tool or cannot read the kernel log: rebuild the image"
    return Observation(MODULE_TOOLS, Status.DIFFERS, f"exit status {raw.exit_code}", advice, ctx.take_raw())


RMMOD_MISSING = Check(
    "rmmod-missing-module",
    "rmmod of a module that is not loaded",
    "rmmod fails with a non-zero exit status and says why, so a failed unload is seen.",
    "exit status non-zero, a message naming the module",
)


def check_rmmod_missing(ctx: ProbeContext) -> Observation:
    """``rmmod`` of a name no module has."""
    raw = ctx.run(["rmmod", "vmtest_probe_missing"])
    said = raw.output.strip().splitlines()[0] if raw.output.strip() else "(no output)"
    if raw.exit_code not in (0, None) and "vmtest_probe_missing" in raw.output:
        return Observation(
            RMMOD_MISSING, Status.AS_EXPECTED, f"exit {raw.exit_code}: {said}", "", ctx.take_raw()
        )
    advice = "rmmod did not report the failure: unload errors could go unnoticed"
    return Observation(RMMOD_MISSING, Status.DIFFERS, f"exit {raw.exit_code}: {said}", advice, ctx.take_raw())


LINUX_CHECKS: tuple[tuple[Check, CheckFunction], ...] = (
    (KERNEL, check_kernel),
    (SHELL, check_shell),
    (MODULE_TOOLS, check_module_tools),
    (RMMOD_MISSING, check_rmmod_missing),
)
"""Every Linux check, in the order it runs."""
