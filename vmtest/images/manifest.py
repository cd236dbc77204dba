"""An image's ``image.json``: what was built, read back with errors that say how to rebuild."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vmtest.errors import ImageError

__all__ = ["MANIFEST_NAME", "read_json_manifest"]

MANIFEST_NAME = "image.json"


def read_json_manifest(root: Path, *, what: str, build: str, rebuild: str) -> dict[str, Any]:
    """The JSON object in ``root``'s ``image.json``; ImageError if absent or unreadable.

    ``what`` names the image ("Linux image"), ``build`` the command that makes one and ``rebuild`` the
    one that replaces a damaged one; the caller checks the fields.
    """
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageError(f"{root} is not a built {what} (no {MANIFEST_NAME}); run `{build}`") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {path}: {exc}; run `{rebuild}`") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{path} is not a {what} manifest; run `{rebuild}`")
    return data
