"""The host files QEMU uses, handed over as descriptors that vmtest opened, never as paths.

QEMU runs as an unprivileged user that can reach none of vmtest's folders (the run directory is 0700,
the image cache lives in vmtest's home), and it should open nothing but what it was given. So vmtest
opens every file itself and passes the descriptors:

* **block images** (overlays, base disks, firmware, ISOs) go into an fd set (``-add-fd``) and are named
  ``/dev/fdset/N``; QEMU dups the descriptor whose access mode matches its open, so a writable image's
  set holds a read-write and a read-only descriptor (QEMU opens read-only first to probe), and a base
  image's set holds only a read-only one: QEMU cannot write it whatever it tries. An overlay's backing
  image is named explicitly (``backing.file.filename``) instead of the path in its header;
* **outputs** (the console file, serial logs) are opened for appending and passed the same way;
* **plain reads** (``-kernel``, ``-initrd``, which QEMU reads with ``fopen``) are named
  ``/proc/self/fd/N``: re-opening through that link checks the file's own mode but not the folders
  above it. A file that its mode keeps from QEMU's user is copied into a sealed memfd first.

:meth:`HostFiles.described` names files by path instead, for keys and the human-readable command line.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

__all__ = ["HostFiles", "qemu_path"]

_COPY_CHUNK = 1 << 20


def qemu_path(path: Path | str) -> str:
    """A path as a QEMU option value: commas are doubled so they cannot start another option."""
    return str(path).replace(",", ",,")


class HostFiles:
    """Opens the files a QEMU command line names and remembers the descriptors to pass and close."""

    def __init__(self, *, pass_descriptors: bool) -> None:
        self.pass_descriptors = pass_descriptors
        self._fds: list[int] = []
        self._add_fd: list[str] = []
        self._sets: dict[tuple[str, bool], int] = {}
        self.legend: dict[str, str] = {}
        """What each ``/dev/fdset/N`` or ``/proc/self/fd/N`` of the command line is, for people."""

    @classmethod
    def described(cls) -> HostFiles:
        """Files named by their paths (nothing opened): for warm keys and descriptions."""
        return cls(pass_descriptors=False)

    @property
    def fds(self) -> tuple[int, ...]:
        """The descriptors QEMU must inherit."""
        return tuple(self._fds)

    def add_fd_args(self) -> list[str]:
        """The ``-add-fd`` options declaring the fd sets."""
        return list(self._add_fd)

    def close(self) -> None:
        """Close vmtest's copies of the descriptors (once QEMU has inherited them)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def _open(self, path: Path, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        self._fds.append(fd)
        return fd

    def _fdset(self, path: Path, modes: tuple[int, ...], key: tuple[str, bool]) -> str:
        if key in self._sets:
            return f"/dev/fdset/{self._sets[key]}"
        number = len(self._sets) + 1
        self._sets[key] = number
        for flags in modes:
            fd = self._open(path, flags)
            self._add_fd += ["-add-fd", f"fd={fd},set={number},opaque={qemu_path(path.name)}"]
        name = f"/dev/fdset/{number}"
        self.legend[name] = f"{path} ({'read-write' if key[1] else 'read-only'})"
        return name

    def image(self, path: Path, *, writable: bool) -> str:
        """A block image: ``/dev/fdset/N`` (read-only unless ``writable``), or its path."""
        if not self.pass_descriptors:
            return qemu_path(path)
        modes = (os.O_RDWR, os.O_RDONLY) if writable else (os.O_RDONLY,)
        return self._fdset(path, modes, (str(path.resolve()), writable))

    def output(self, path: Path) -> str:
        """A file QEMU appends to (created 0600 if missing): ``/dev/fdset/N``, or its path."""
        if not self.pass_descriptors:
            return qemu_path(path)
        return self._fdset(path, (os.O_WRONLY | os.O_APPEND | os.O_CREAT,), (str(path.resolve()), True))

    def overlay(self, overlay: Path, backing: Path, backing_format: str) -> str:
        """The ``file=...`` part of a ``-drive`` for a qcow2 overlay of ``backing`` (read-only).

        By descriptor, the backing image is named explicitly, so QEMU never opens the path stored in
        the overlay's header.
        """
        if not self.pass_descriptors:
            return f"file={qemu_path(overlay)}"
        base = self.image(backing, writable=False)
        return (
            f"file={self.image(overlay, writable=True)},"
            f"backing.driver={backing_format},backing.file.filename={base}"
        )

    def readable(self, path: Path, *, readable_by_others: bool | None = None) -> str:
        """A file QEMU reads by ``open`` (``-kernel``, ``-initrd``): ``/proc/self/fd/N``, or its path.

        ``readable_by_others`` (default: from the file's mode) says whether QEMU's user may re-open it;
        if not, its content is copied into a sealed memfd, which anyone holding it may read.
        """
        if not self.pass_descriptors:
            return str(path)
        if readable_by_others is None:
            readable_by_others = bool(path.stat().st_mode & stat.S_IROTH)
        fd = self._open(path, os.O_RDONLY) if readable_by_others else self._sealed_copy(path)
        name = f"/proc/self/fd/{fd}"
        self.legend[name] = str(path)
        return name

    def memory(self, path: Path) -> str:
        """A guest-memory file (``memory-backend-file``): ``/proc/self/fd/N`` of a read-write descriptor.

        QEMU re-opens it through that link read-write (QEMU 7.2 does even for a private mapping), so the
        file's own mode must let QEMU's user write it: see :mod:`vmtest.machine.mapped`.
        """
        if not self.pass_descriptors:
            return qemu_path(path)
        name = f"/proc/self/fd/{self._open(path, os.O_RDWR | os.O_CREAT)}"
        self.legend[name] = f"{path} (guest memory)"
        return name

    def _sealed_copy(self, path: Path) -> int:
        fd = os.memfd_create(path.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self._fds.append(fd)
        with open(path, "rb") as source:
            while chunk := source.read(_COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        return fd

    def describe(self) -> str:
        """The legend, one ``name = path`` per line."""
        return "".join(f"{name} = {what}\n" for name, what in self.legend.items())
