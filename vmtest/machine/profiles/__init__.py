"""Guest profiles: one per guest kind, chosen from the configuration."""

from __future__ import annotations

from vmtest.config.models import VmtestConfig
from vmtest.machine.profiles.base import LaunchContext, Profile

__all__ = ["LaunchContext", "Profile", "profile_for"]


def profile_for(config: VmtestConfig) -> Profile:
    """The profile for the configured guest, with its image located (raises ImageError if missing)."""
    from vmtest.images.linux import LinuxImage, find_linux_image
    from vmtest.machine.profiles.linux import LinuxProfile

    guest = config.guest
    image = LinuxImage.load(guest.image) if guest.image is not None else find_linux_image()
    return LinuxProfile(image, append=guest.append, ssh_port=guest.ssh.guest_port)
