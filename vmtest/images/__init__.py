"""Guest images vmtest boots: how they are built, cached and found."""

from vmtest.images.linux import LinuxImage, build_linux_image, find_linux_image

__all__ = ["LinuxImage", "build_linux_image", "find_linux_image"]
