"""KVM capabilities, asked of ``/dev/kvm`` with the ``KVM_CHECK_EXTENSION`` ioctl.

QEMU enables its Hyper-V enlightenments (``hv-*``, among them ``hv-crash``, which turns a Windows
bugcheck into a ``GUEST_PANICKED`` event carrying the stop code) only when the host kernel offers
``KVM_CAP_HYPERV``. Without it QEMU drops them (python-apis.md §2.3, verified on a nested KVM); on
this project's test host QEMU 7.2 even aborted (``failed to set MSR 0x40000073``) with ``hv-vapic``.
Linux >= 6.8 can be built without ``CONFIG_KVM_HYPERV``, so it is worth asking before starting.

Values from ``include/uapi/linux/kvm.h``: ``KVMIO`` = 0xAE, ``KVM_CHECK_EXTENSION`` = ``_IO(KVMIO, 0x03)``,
``KVM_CAP_HYPERV`` = 44. The ioctl returns 0 when the capability is missing, a positive value when
present.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

__all__ = ["KVM_CAP_HYPERV", "KVM_DEVICE", "kvm_check_extension", "kvm_has_hyperv"]

log = logging.getLogger(__name__)

KVM_DEVICE = Path("/dev/kvm")
KVM_CAP_HYPERV = 44
_KVMIO = 0xAE
_KVM_CHECK_EXTENSION = (_KVMIO << 8) | 0x03  # _IO(KVMIO, 0x03): no size, no direction bits


def kvm_check_extension(capability: int, device: Path = KVM_DEVICE) -> int | None:
    """``KVM_CHECK_EXTENSION(capability)`` on ``device``; None when the device cannot be asked."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        log.debug("cannot open %s to check KVM capability %d: %s", device, capability, error)
        return None
    try:
        return int(fcntl.ioctl(fd, _KVM_CHECK_EXTENSION, capability))
    except OSError as error:  # not a KVM device (ENOTTY), or the kernel refused
        log.debug("KVM_CHECK_EXTENSION(%d) on %s failed: %s", capability, device, error)
        return None
    finally:
        os.close(fd)


def kvm_has_hyperv(device: Path = KVM_DEVICE) -> bool | None:
    """Whether the host KVM offers Hyper-V enlightenments; None if ``device`` cannot be asked."""
    answer = kvm_check_extension(KVM_CAP_HYPERV, device)
    return None if answer is None else answer > 0
