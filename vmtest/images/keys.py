"""The SSH client key pair a guest image is built with (its public half goes into the guest)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["CLIENT_KEY_PATH", "CLIENT_PUBLIC_KEY_PATH", "make_client_key"]

CLIENT_KEY_PATH = "keys/client_ed25519"
CLIENT_PUBLIC_KEY_PATH = "keys/client_ed25519.pub"


def make_client_key(folder: Path) -> str:
    """Write an OpenSSH ed25519 client key pair (private part 0600) under ``folder``; the public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode()} vmtest-client"
    path = folder / CLIENT_KEY_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    (folder / CLIENT_PUBLIC_KEY_PATH).write_text(line + "\n", encoding="utf-8")
    return line
