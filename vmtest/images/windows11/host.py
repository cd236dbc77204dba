"""What a Windows image build needs from the host: the tools it checks for, and running them.

:func:`preflight` lists what is missing (QEMU, qemu-img, an ISO writer, OVMF, swtpm) with the package
to install, :func:`find_iso_tool` picks the ISO 9660 writer, and :func:`run` runs a tool in the C
locale, turning a failure into an ImageError that names the command and shows its output.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from vmtest.config.windows import secure_boot_keys_enrolled
from vmtest.errors import ImageError
from vmtest.images.windows11.options import WindowsImageOptions

__all__ = ["SLOW", "find_iso_tool", "preflight", "run"]

logger = logging.getLogger(__name__)

QUICK = 60.0
SLOW = 1800.0  # committing a ~20 GB install, hashing a 7 GB ISO


def find_iso_tool() -> tuple[str, ...] | None:
    """The ISO 9660 writer to use: ``xorriso -as mkisofs``, else genisoimage or mkisofs; None if none."""
    if shutil.which("xorriso"):
        return ("xorriso", "-as", "mkisofs")
    for name in ("genisoimage", "mkisofs"):
        if shutil.which(name):
            return (name,)
    return None


def preflight(options: WindowsImageOptions, iso_tool: tuple[str, ...] | None) -> list[str]:
    """What is missing on this host for a real build (KVM is probed when the build starts)."""
    problems = []
    if shutil.which(options.qemu) is None:
        problems.append(f"QEMU ({options.qemu}) is not installed: apt-get install qemu-system-x86")
    if shutil.which("qemu-img") is None:
        problems.append("qemu-img is not installed: apt-get install qemu-utils")
    if iso_tool is None:
        problems.append("no ISO writer: apt-get install xorriso (or genisoimage)")
    for what, path in (("OVMF code", options.ovmf_code), ("OVMF variables", options.ovmf_vars)):
        if not path.is_file():
            problems.append(f"{what} {path} does not exist: apt-get install ovmf")
    if options.ovmf_vars.is_file() and secure_boot_keys_enrolled(options.ovmf_vars):
        problems.append(
            f"OVMF variables {options.ovmf_vars} have Secure Boot keys enrolled: Secure Boot would be on and "
            "test signing refused (the variable store decides, not the code file); use an empty store such "
            "as /usr/share/OVMF/OVMF_VARS_4M.fd"
        )
    if options.tpm and shutil.which("swtpm") is None:
        problems.append("swtpm is not installed: apt-get install swtpm swtpm-tools")
    return problems


def run(argv: Sequence[str | Path], *, timeout: float = QUICK, fix: str | None = None) -> str:
    """Run a command in the C locale; its stdout, or ImageError naming the command and its output."""
    args = [str(a) for a in argv]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}
    advice = f"; {fix}" if fix else ""
    logger.debug("running %s", " ".join(args))
    try:
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ImageError(f"`{args[0]}` is not installed{advice}") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"`{' '.join(args)}` timed out after {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ImageError(f"`{' '.join(args)}` failed (exit {result.returncode}){advice}\n{tail}")
    return result.stdout
