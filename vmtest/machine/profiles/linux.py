"""The ``linux`` profile: a Linux kernel and initramfs booted directly, such as the self-test guest."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from vmtest.images.linux import LinuxImage
from vmtest.machine.profiles.base import LaunchContext, Profile

__all__ = ["LinuxProfile"]

# Everything the kernel prints reaches the serial port (loglevel=8); /dev/console is the serial port
# (the last console= wins) while the screen shows the same log for screenshots; a panic reboots at
# once, which QEMU's -no-reboot turns into an exit, after pvpanic has reported it as GUEST_PANICKED.
# A big log buffer keeps a whole run in dmesg (a full wdk-mutex run prints ~20k lines; default: 128 KiB).
KERNEL_ARGS = (
    "console=tty0", "console=ttyS0,115200", "loglevel=8", "log_buf_len=8M", "panic=-1", "oops=panic",
)  # fmt: skip


class LinuxProfile(Profile):
    """Boots ``image`` with ``-kernel``/``-initrd`` on q35: virtio disk, e1000 NIC, pvpanic, VGA screen."""

    name: ClassVar[str] = "linux"

    def __init__(self, image: LinuxImage, *, append: str = "", ssh_port: int = 22) -> None:
        self.image = image
        self.append = append
        self.ssh_port = ssh_port

    @property
    def base_disks(self) -> tuple[Path, ...]:
        """The image's scratch disk."""
        return (self.image.disk,)

    @property
    def forwards(self) -> Mapping[str, int]:
        """SSH only."""
        return {"ssh": self.ssh_port}

    @property
    def ready_marker(self) -> str:
        """The line the image's init prints once SSH is started."""
        return self.image.ready_marker

    @property
    def probe_kernel(self) -> Path:
        """This guest's own kernel."""
        return self.image.kernel

    @property
    def snapshot_nodes(self) -> tuple[str, ...]:
        """The virtio disk's overlay (``node-name=disk0`` below), which also holds the RAM state."""
        return ("disk0",)

    def cpu_model(self, accel: str) -> str:
        """The host CPU under KVM; everything TCG can emulate otherwise."""
        return "host" if accel == "kvm" else "max"

    def kernel_command_line(self) -> str:
        """The kernel arguments, the user's ``append`` last so that it can override."""
        return " ".join([*KERNEL_ARGS, *shlex.split(self.append)])

    def qemu_args(self, context: LaunchContext) -> list[str]:
        """Machine type, firmware-less direct kernel boot, disk, NIC, panic device and display.

        Only what the pipeline uses: the disk (the guest's scratch space), the NIC (SSH), pvpanic (a
        panic reaches QMP) and the VGA screen (screenshots). q35 rather than ``pc``: no ISA floppy
        controller, no PIIX IDE; ``vmport=off`` drops the VMware backdoor port (docs/SECURITY.md).
        A failed disk write (the overlay reaching the file-size bound, a full host disk) pauses the
        guest (``werror=stop``) so that the run ends naming it.
        """
        files = context.files
        return [
            "-machine", "q35,vmport=off",
            "-cpu", self.cpu_model(context.accel),
            "-kernel", files.readable(self.image.kernel),
            "-initrd", files.readable(self.image.initrd),
            "-append", self.kernel_command_line(),
            "-drive", f"{self.overlay_file(context, 0)},if=virtio,format=qcow2,node-name=disk0,discard=unmap,"
                      "werror=stop",
            "-device", "e1000,netdev=net0,autonegotiation=off",  # link up at once: boots ~1 s faster
            "-device", "pvpanic",
            "-vga", "std",
        ]  # fmt: skip
