"""A built Windows 11 image: :class:`WindowsImage`, its manifest ``image.json``, and finding the newest.

An image lives in ``<cache_root>/windows11/<name>/`` (``current`` points at the newest) unless its
build was given a folder; the manifest is what makes a folder an image, and says what it holds.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtest.errors import ImageError
from vmtest.images.linux import default_cache_root
from vmtest.images.manifest import MANIFEST_NAME, read_json_manifest

__all__ = [
    "IMAGE_KIND",
    "MANIFEST_FORMAT",
    "WindowsImage",
    "find_windows_image",
    "read_manifest",
    "resolve_windows_image",
    "windows_dir",
]

logger = logging.getLogger(__name__)

BUILD_COMMAND = "vmtest image build windows11"
MANIFEST_FORMAT = 1
IMAGE_KIND = "windows11"
EXPIRY_WARNING_DAYS = 7


@dataclass(frozen=True)
class WindowsImage:
    """A sealed Windows 11 golden image: its disk and UEFI variables, and what it was built with."""

    root: Path
    disk: Path
    efivars: Path
    tpm_state: Path | None
    client_key: Path | None
    host_key: str | None
    user: str
    ready_marker: str
    kernel_debug: bool
    tpm: bool
    openssh: bool
    ovmf_code: Path
    licence_expires: datetime.date | None
    sha256: dict[str, str] = field(default_factory=dict)  # path in the folder -> sha256 at sealing

    @classmethod
    def load(cls, path: Path) -> WindowsImage:
        """Read the image in folder ``path`` (or whose disk ``path`` is); ImageError if it is not one."""
        root = path.parent if path.is_file() else path
        manifest = read_manifest(root)
        try:
            paths = manifest["paths"]
            configured = manifest["configured"]
            expires = manifest["licence"].get("expires")
            image = cls(
                root=root,
                disk=root / paths["disk"],
                efivars=root / paths["efivars"],
                tpm_state=root / paths["tpm_state"] if paths.get("tpm_state") else None,
                client_key=root / paths["client_key"] if paths.get("client_key") else None,
                host_key=manifest.get("host_key"),
                user=str(manifest["user"]),
                ready_marker=str(manifest["ready_marker"]),
                kernel_debug=bool(configured["kernel_debugging"]["enabled"]),
                tpm=bool(configured["tpm"]["enabled"]),
                openssh=configured["openssh"] is not None,
                ovmf_code=Path(manifest["firmware"]["ovmf_code"]),
                licence_expires=datetime.date.fromisoformat(expires) if expires else None,
                sha256={str(k): str(v) for k, v in (manifest.get("sha256") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ImageError(
                f"{root / MANIFEST_NAME} is incomplete ({exc}); rebuild with `{BUILD_COMMAND}`"
            ) from exc
        for needed in (image.disk, image.efivars):
            if not needed.is_file():
                raise ImageError(
                    f"the Windows image {root} lacks {needed.name}; rebuild with `{BUILD_COMMAND}`"
                )
        image.warn_if_expiring(datetime.date.today())
        return image

    def warn_if_expiring(self, today: datetime.date) -> None:
        """Log a warning when the evaluation licence has expired or expires within a week."""
        if self.licence_expires is None:
            return
        days = (self.licence_expires - today).days
        if days < 0:
            logger.warning(
                "the Windows image %s: its licence expired on %s; rebuild it", self.root, self.licence_expires
            )
        elif days <= EXPIRY_WARNING_DAYS:
            logger.warning(
                "the Windows image %s: its licence expires in %d days (%s)",
                self.root,
                days,
                self.licence_expires,
            )


def read_manifest(root: Path) -> dict[str, Any]:
    """The parsed ``image.json`` of the Windows image in ``root``; ImageError if absent or not one."""
    data = read_json_manifest(root, what="Windows image", build=BUILD_COMMAND, rebuild=BUILD_COMMAND)
    if data.get("format") != MANIFEST_FORMAT or data.get("kind") != IMAGE_KIND:
        raise ImageError(
            f"{root / MANIFEST_NAME} is not a Windows 11 image manifest of format {MANIFEST_FORMAT}"
        )
    return data


def windows_dir(cache_root: Path | None) -> Path:
    """The folder of the Windows images in ``cache_root`` (None: vmtest's cache), resolved."""
    return ((cache_root if cache_root is not None else default_cache_root()) / IMAGE_KIND).resolve()


def find_windows_image(cache_root: Path | None = None) -> WindowsImage:
    """The newest Windows image built into the cache; ImageError telling how to build one if none."""
    current = windows_dir(cache_root) / "current"
    if not (current / MANIFEST_NAME).is_file():
        raise ImageError(
            f"no Windows 11 image is built in {current.parent}; run `{BUILD_COMMAND} --iso WINDOWS.iso "
            "--openssh-zip OpenSSH-Win64.zip` or set guest.image"
        )
    return WindowsImage.load(current.resolve())


def resolve_windows_image(configured: Path | None, cache_root: Path | None = None) -> WindowsImage:
    """The image a run uses: ``guest.image`` when set, else the newest built; ImageError if unusable.

    The one place that decides which Windows image is meant and whether it is one: ``vmtest run`` (the
    guest profile) and ``vmtest doctor`` both call it.
    """
    return WindowsImage.load(configured) if configured is not None else find_windows_image(cache_root)
