"""The sha256 of an image file (disks and ISOs of many GB), read in 1 MiB pieces."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]

_PIECE = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for piece in iter(lambda: file.read(_PIECE), b""):
            digest.update(piece)
    return digest.hexdigest()
