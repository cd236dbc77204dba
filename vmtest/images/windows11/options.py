"""What the user asks a Windows image build for: :class:`WindowsImageOptions`, the CLI's options.

They are checked when the build is planned (:func:`~vmtest.images.windows11.plan.plan_windows_image`).
The crash dumps the provisioning can set up in the guest are listed here, beside the option that
chooses one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmtest.config.models import Accelerator
from vmtest.config.windows import DEFAULT_OVMF_CODE, DEFAULT_OVMF_VARS
from vmtest.images.windows11.answer import DEFAULT_COMPUTER_NAME, DEFAULT_USER

__all__ = ["CRASH_DUMPS", "DEFAULT_PASSWORD_ENV", "CrashDump", "WindowsImageOptions"]

DEFAULT_PASSWORD_ENV = "VMTEST_WINDOWS_PASSWORD"
CRASH_DUMPS: Mapping[str, tuple[int, bool]] = {  # CrashDumpEnabled, FilterPages
    "complete": (1, False),
    "kernel": (2, False),
    "small": (3, False),
    "automatic": (7, False),
    "active": (1, True),
}
CrashDump = Literal["complete", "kernel", "small", "automatic", "active"]


@dataclass(frozen=True)
class WindowsImageOptions:
    """What the user asked for (the CLI's options); :func:`plan_windows_image` validates them."""

    iso: Path
    openssh_zip: Path | None = None
    output: Path | None = None
    artifacts: Path = Path("vmtest-artifacts")
    image_name: str | None = None
    image_index: int | None = None
    product_key: str | None = None
    user: str = DEFAULT_USER
    password_env: str = DEFAULT_PASSWORD_ENV
    computer_name: str = DEFAULT_COMPUTER_NAME
    language: str = "en-US"
    input_locale: str = "0409:00000409"
    disk_size_gib: int = 64
    memory_mib: int = 4096
    cpus: int = 4
    tpm: bool = False
    tpm_model: Literal["tpm-crb", "tpm-tis"] = "tpm-crb"
    kernel_debug: bool = True
    accel: Accelerator = "auto"
    allow_tcg: bool = False
    qemu: str = "qemu-system-x86_64"
    qemu_extra_args: tuple[str, ...] = ()
    ovmf_code: Path = DEFAULT_OVMF_CODE
    ovmf_vars: Path = DEFAULT_OVMF_VARS
    hyperv_flags: tuple[str, ...] | None = None
    sshd_start: Literal["auto", "delayed-auto"] = "auto"
    crash_dump: CrashDump = "kernel"
    tools: tuple[Path, ...] = ()
    timeout: float = 7200.0
    key_press_window: float = 60.0
    key_press_interval: float = 1.0
    screenshot_interval: float = 60.0
    poweroff_timeout: float = 600.0
    force: bool = False
