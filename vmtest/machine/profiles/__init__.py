"""Guest profiles: one per guest kind, chosen from the configuration."""

from __future__ import annotations

from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.machine.confine import Confinement
from vmtest.machine.profiles.base import LaunchContext, Profile

__all__ = ["LaunchContext", "Profile", "profile_for"]


def profile_for(config: VmtestConfig) -> Profile:
    """The profile for the configured guest, with its image located (raises ImageError if missing)."""
    # Imported here: the image builders drive a Machine themselves, so they import this package.
    from vmtest.images.linux import resolve_linux_image
    from vmtest.images.windows11 import resolve_windows_image
    from vmtest.machine.profiles.linux import LinuxProfile
    from vmtest.machine.profiles.windows11 import Windows11Profile

    guest = config.guest
    profile: Profile
    if isinstance(guest, LinuxGuestConfig):
        linux = resolve_linux_image(guest.image)
        profile = LinuxProfile(linux, append=guest.append, ssh_port=guest.ssh.guest_port)
    else:
        windows = resolve_windows_image(guest.image)
        profile = Windows11Profile.for_image(windows, guest)
    profile.confinement = Confinement.from_config(config.machine)  # its helpers start before the machine
    return profile
