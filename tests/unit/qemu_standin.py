"""A stand-in for ``qemu-system-x86_64`` as the KVM probe runs it (``vmtest/machine/accel.py``).

It checks the command line the way the probe builds it (``-accel kvm``, and either ``-kernel`` with
``-serial stdio`` or the boot-sector disk with ``isa-debug-exit``), records its pid and arguments in
``$QEMU_STANDIN_RECORD``, then plays the guest named by ``$QEMU_STANDIN_GUEST``:

- ``boots``: a Linux kernel that runs under KVM: its first console lines on stdout (recorded from the
  self-test guest, ``tests/data/kvm-probe``), then it keeps running until it is killed;
- ``long-mode``: the boot sector that reached long mode: ``isa-debug-exit`` ends QEMU with status
  ``(0x2a << 1) | 1``;
- ``hangs``: a guest stuck in its decompressor under a nested hypervisor: no output, never ends;
- ``qemu-fails``: QEMU aborting on a KVM ioctl, with the message seen on this project's CI host.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

CONSOLE = Path(__file__).resolve().parents[1] / "data" / "kvm-probe" / "linux-console-under-kvm.txt"
KVM_FAILURE = (
    "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion"
    " `ret == cpu->kvm_msr_buf->nmsrs' failed.\n"
)


def option(args: list[str], name: str) -> str | None:
    """The value after ``name`` on the command line, or None."""
    return args[args.index(name) + 1] if name in args else None


def host_file(args: list[str], name: str | None) -> str | None:
    """The host file a path of the command line stands for: ``/dev/fdset/N`` is an ``-add-fd`` set and
    ``/proc/self/fd/N`` a descriptor QEMU inherited (how vmtest hands files to a confined QEMU)."""
    if name is None:
        return None
    if name.startswith("/dev/fdset/"):
        number = name.removeprefix("/dev/fdset/")
        for position, arg in enumerate(args[:-1]):
            fields = dict(item.split("=", 1) for item in args[position + 1].split(",") if "=" in item)
            if arg == "-add-fd" and fields.get("set") == number:
                return os.readlink(f"/proc/self/fd/{fields['fd']}")
        return None
    if name.startswith("/proc/self/fd/"):
        return os.readlink(name)
    return name


def main(args: list[str]) -> int:
    """Check the command line, record it, and play the guest."""
    kernel = host_file(args, option(args, "-kernel"))
    disk = host_file(args, (option(args, "-drive") or "").split(",")[0].removeprefix("file=") or None)
    record = {"pid": os.getpid(), "args": args, "kernel": kernel, "disk": disk}
    Path(os.environ["QEMU_STANDIN_RECORD"]).write_text(json.dumps(record))
    if option(args, "-accel") != "kvm":
        sys.stderr.write("qemu-system-x86_64: the probe must ask for -accel kvm\n")
        return 1
    if kernel is not None and not (Path(kernel).is_file() and option(args, "-serial") == "stdio"):
        sys.stderr.write(f"qemu-system-x86_64: -kernel {kernel} without a file or -serial stdio\n")
        return 1
    if kernel is None:
        sector = Path(disk).read_bytes() if disk and Path(disk).is_file() else b""
        if option(args, "-device") != "isa-debug-exit,iobase=0xf4,iosize=0x04" or sector[-2:] != b"\x55\xaa":
            sys.stderr.write("qemu-system-x86_64: no bootable disk and no isa-debug-exit device\n")
            return 1
    guest = os.environ["QEMU_STANDIN_GUEST"]
    if guest == "qemu-fails":
        sys.stdout.write(KVM_FAILURE)
        return 134
    if guest == "long-mode":
        return (0x2A << 1) | 1
    if guest == "boots":
        sys.stdout.buffer.write(CONSOLE.read_bytes().replace(b"\n", b"\r\n"))
        sys.stdout.flush()
    while True:  # a running (or stuck) guest ends only when QEMU is killed
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
