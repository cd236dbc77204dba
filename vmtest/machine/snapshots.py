"""RAM snapshots over QMP, and warm starts from a per-image snapshot of the ready guest.

The warm store here (copies of qcow2 files holding the RAM state) is the fallback: where QEMU can map
a RAM file, :mod:`vmtest.machine.mapped` is used instead. The QMP jobs serve both (``checkpoint()``).

The QMP side: :func:`save_snapshot`, :func:`load_snapshot` and :func:`delete_snapshot` run QEMU's
``snapshot-save``/``snapshot-load``/``snapshot-delete`` jobs with ``vmstate`` = the profile's first
:attr:`~vmtest.machine.profiles.base.Profile.snapshot_nodes` and ``devices`` = all of them. A job's
error appears nowhere but in ``query-jobs``, so each job is followed through ``JOB_STATUS_CHANGE``
events (re-reading ``query-jobs``, the authority, after each) to ``concluded``, its error is read there,
and it is always dismissed. Every wait has a deadline and goes through ``Machine.wait``.

The warm store: ``<cache>/warm/<image key>/<config hash>/`` holds a copy of every disk overlay of a
guest that reached *ready*, right after ``stop`` + ``snapshot-save``, with the snapshot inside, and
``warm.json`` saying what it was made from. The hash covers the QEMU binary (path, size, time,
``--version``), the whole QEMU command line with the run's own paths taken out (machine type, CPU,
memory, accelerator, kernel arguments, devices, extra arguments) and the size and time of every file it
names (kernel, initramfs, firmware) and of the base disks; anything that changes makes a new entry.
The first run that finds no entry boots cold, takes the entry's lock (``flock``, non-blocking: a
concurrent run that cannot have it just boots cold), saves the snapshot at ready, copies its overlays
into a temporary directory, repairs and checks them (``qemu-img check -r leaks``), marks them read-only
and renames the directory into place; then the run continues. Later runs copy the entry's files into
their run directory and boot on the copies: QEMU starts stopped, ``snapshot-load`` runs before ``cont``.
Entries are never written after they are published, and base images are only ever backing files.

Why copies, on QEMU 7.2 (each checked on this host):

* internal snapshots live in the qcow2 file that holds them: a new overlay made with
  ``qemu-img create -b warm.qcow2`` does not show them (``snapshot-load``: "Snapshot 'vmtest-warm' does
  not exist in one or more devices");
* ``snapshot=on`` on the warm file (writes to a temporary overlay) fails too ("Device 'disk0' is
  writable but does not support snapshots"), and ``-snapshot -loadvm`` cannot see them either;
* the ``vmstate`` node must be writable, and loading reverts every node in ``devices``, so the node
  QEMU loads from is written: it has to be the run's own file;
* ``-loadvm`` rejects a snapshot made by ``snapshot-save`` with a separate ``vmstate`` node ("This is a
  disk-only snapshot"), so a warm start is ``-S``, ``snapshot-load``, ``cont`` over QMP.

A copy of the Linux self-test guest's entry is ~110 MB (the RAM state of a 1 GiB guest; zero pages are
not stored) and takes ~0.1-0.2 s (``cp --reflink=auto``: instant on btrfs/XFS); ``snapshot-load`` then
takes ~0.2-0.4 s under TCG. Copies hold the RAM state, so they are removed from the run directory when
the VM has stopped (see :func:`remove_disk_copies`).

After a restore the guest's clock is the snapshot's, and TCP connections made after the snapshot are
gone: the session logs in again and sets the clock. The serial ports stay connected across
``snapshot-load`` (only the emulated UART's state is reloaded), so the capture keeps going.

A Windows guest uses the same path when its profile lists the system disk first and the qcow2 UEFI
variable store after it (a raw VARS cannot hold a snapshot), and starts a fresh swtpm from the same
state for every run: the TPM's state travels in the RAM state.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vmtest.errors import DeadlineExceeded, InfraError
from vmtest.machine.machine import Machine
from vmtest.machine.process import find_qemu

__all__ = [
    "WARM_TAG",
    "SnapshotError",
    "WarmKey",
    "WarmMachine",
    "WarmStart",
    "WarmStore",
    "delete_snapshot",
    "load_snapshot",
    "remove_disk_copies",
    "save_snapshot",
    "warm_key",
]

log = logging.getLogger(__name__)

WARM_TAG = "vmtest-warm"
"""The name of the snapshot of the ready guest, in warm entries and in the disks of runs made from them."""

FORMAT = 1
MANIFEST = "warm.json"
_COPY_TIMEOUT = 120.0
_CHECK_TIMEOUT = 60.0
_job_numbers = itertools.count(1)


class SnapshotError(InfraError):
    """A snapshot could not be saved, loaded or deleted; the message carries QEMU's own words."""


# ------------------------------------------------------------------------------------------ QMP jobs


async def save_snapshot(machine: Machine, tag: str, *, timeout: float) -> None:
    """Save the RAM, device and disk state as ``tag``; QEMU refuses if a snapshot has that name already."""
    nodes = _nodes(machine)
    await _run_job(
        machine, "snapshot-save", {"tag": tag, "vmstate": nodes[0], "devices": list(nodes)}, timeout
    )


async def load_snapshot(machine: Machine, tag: str, *, timeout: float) -> None:
    """Return the VM to snapshot ``tag``: RAM, devices and every snapshot node's disk.

    A running VM keeps running; a stopped one (``-S``) stays stopped until ``cont``. A failed load leaves
    the VM stopped in ``restore-vm``.
    """
    nodes = _nodes(machine)
    await _run_job(
        machine, "snapshot-load", {"tag": tag, "vmstate": nodes[0], "devices": list(nodes)}, timeout
    )


async def delete_snapshot(machine: Machine, tag: str, *, timeout: float) -> None:
    """Delete snapshot ``tag`` from every snapshot node."""
    await _run_job(machine, "snapshot-delete", {"tag": tag, "devices": list(_nodes(machine))}, timeout)


def _nodes(machine: Machine) -> tuple[str, ...]:
    nodes = machine.profile.snapshot_nodes
    if not nodes:
        raise SnapshotError(f"the {machine.profile.describe()} guest has no disk that can hold a snapshot")
    return nodes


async def _run_job(machine: Machine, command: str, arguments: dict[str, Any], timeout: float) -> None:
    """Start a snapshot job, follow it to ``concluded``, dismiss it, and raise its error if it has one."""
    job_id = f"vmtest-{command}-{next(_job_numbers)}"
    what = f"{command} {arguments['tag']!r}"
    deadline = asyncio.get_running_loop().time() + timeout
    started = time.monotonic()
    await machine.monitor.execute(command, {"job-id": job_id, **arguments})
    job = await _until_concluded(machine, job_id, what, deadline)
    await machine.monitor.execute("job-dismiss", {"id": job_id})
    error = job.get("error")
    if error:
        raise SnapshotError(f"QMP {what} failed: {error}")
    log.info("%s done in %.2fs", what, time.monotonic() - started)


async def _until_concluded(machine: Machine, job_id: str, what: str, deadline: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    while True:
        # The waiter is registered before query-jobs is read: a change after the read always wakes us.
        with machine.monitor.expect(("JOB_STATUS_CHANGE",)) as waiter:
            job = await _query_job(machine, job_id)
            if job is None:
                raise SnapshotError(f"QMP {what}: job {job_id} disappeared from query-jobs")
            if job.get("status") == "concluded":
                return job
            remaining = deadline - loop.time()
            changed = remaining > 0 and await _changed(machine, waiter.future, remaining, what)
        if not changed:
            raise SnapshotError(
                f"QMP {what}: still {job.get('status')} at its deadline (job {job_id} left in QEMU)"
            )


async def _changed(machine: Machine, change: asyncio.Future[Any], timeout: float, what: str) -> bool:
    try:
        await machine.wait(change, timeout, f"waiting for {what}")
    except DeadlineExceeded:
        return False
    return True


async def _query_job(machine: Machine, job_id: str) -> dict[str, Any] | None:
    jobs = await machine.monitor.execute("query-jobs")
    for job in jobs if isinstance(jobs, list) else []:
        if isinstance(job, dict) and job.get("id") == job_id:
            return job
    return None


# ------------------------------------------------------------------------------------------ the key


@dataclass(frozen=True)
class WarmKey:
    """What a warm entry was made from: ``image`` names the base disks, ``digest`` everything."""

    image: str
    digest: str
    material: dict[str, Any]


def warm_key(machine: Machine, setup: Mapping[str, object] | None = None) -> WarmKey:
    """The key of ``machine`` (not started): QEMU, its command line without the run's paths, their files."""
    profile = machine.profile
    run = machine.run_dir.path
    qemu = find_qemu(machine.config.qemu)
    overlays = tuple(machine.run_dir.overlay(index) for index in range(len(profile.base_disks)))
    args = machine.command_line(qemu, overlays, 0, dict.fromkeys(machine.raw_serial_roles, 0))[1:]
    bases = [base.resolve() for base in profile.base_disks]
    material: dict[str, Any] = {
        "format": FORMAT,
        "tag": WARM_TAG,
        "nodes": list(profile.snapshot_nodes),
        "qemu": _qemu_identity(Path(qemu).resolve()),
        "args": [arg.replace(str(run), "<run>").replace(run.name, "<run>") for arg in args],
        "files": {str(path): _stamp(path) for path in _named_files(args, run)},
        "base_disks": {str(path): _stamp(path) for path in bases},
    }
    if setup:
        material["setup"] = dict(setup)
    image = f"{profile.name}-{_digest([str(path) for path in bases])[:12]}"
    return WarmKey(image, _digest(material)[:16], material)


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _stamp(path: Path) -> list[int]:
    try:
        info = path.stat()
    except OSError:
        return [-1, -1]
    return [info.st_size, info.st_mtime_ns]


def _named_files(args: Iterable[str], run: Path) -> list[Path]:
    """Absolute paths of existing files named in the arguments (``-kernel X``, ``file=X,...``)."""
    found: set[Path] = set()
    for arg in args:
        for piece in re.split(r"[,=\s]", arg):
            if piece.startswith("/") and not piece.startswith(str(run)) and os.path.isfile(piece):
                found.add(Path(piece).resolve())
    return sorted(found)


@functools.lru_cache(maxsize=8)
def _qemu_version(binary: Path, stamp: tuple[int, ...]) -> str:
    try:
        output = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return output.strip().splitlines()[0] if output.strip() else "unknown"


def _qemu_identity(binary: Path) -> dict[str, Any]:
    stamp = _stamp(binary)
    return {"path": str(binary), "stamp": stamp, "version": _qemu_version(binary, tuple(stamp))}


# ------------------------------------------------------------------------------------------ the store


class WarmStore:
    """Warm entries under ``root`` (``<cache>/warm``): found, created under a lock, published, discarded."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, key: WarmKey) -> Path:
        """The directory of ``key``'s entry (which may not exist)."""
        return self.root / key.image / key.digest

    def find(self, key: WarmKey, disks: int) -> Path | None:
        """The published entry for ``key`` with ``disks`` disk copies, or None (saying why in the log)."""
        entry = self.entry(key)
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            log.info("no warm snapshot for this image and configuration yet (%s)", entry)
            return None
        except (OSError, ValueError) as error:
            log.warning("warm snapshot %s is unreadable (%s); it will be replaced", entry, error)
            return None
        if not isinstance(manifest, dict) or manifest.get("key") != key.material:
            log.warning("warm snapshot %s was made from other inputs; it will be replaced", entry)
            return None
        missing = [name for name in _disk_names(disks) if not (entry / name).is_file()]
        if missing:
            log.warning("warm snapshot %s lacks %s; it will be replaced", entry, ", ".join(missing))
            return None
        return entry

    def try_lock(self, key: WarmKey) -> IO[str] | None:
        """The entry's creation lock, or None if another run holds it (it is creating the entry)."""
        folder = self.root / key.image
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / f"{key.digest}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        for leftover in folder.glob(f".{key.digest}.tmp-*"):  # from runs killed while publishing
            shutil.rmtree(leftover, ignore_errors=True)
        return handle

    def discard(self, key: WarmKey) -> None:
        """Remove ``key``'s entry (call with its lock held); runs still copying it keep their open files."""
        entry = self.entry(key)
        if entry.exists():
            doomed = entry.with_name(f".{key.digest}.tmp-{secrets.token_hex(4)}")
            entry.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            log.info("removed the warm snapshot %s", entry)

    def publish(self, key: WarmKey, disks: Iterable[Path]) -> Path:
        """Copy ``disks`` (of a stopped VM, snapshot inside) into ``key``'s entry; call with the lock held."""
        entry = self.entry(key)
        work = entry.with_name(f".{key.digest}.tmp-{secrets.token_hex(4)}")
        work.mkdir(parents=True)
        try:
            for source, name in zip(disks, _disk_names(), strict=False):
                target = work / name
                _run(["cp", "--reflink=auto", "--sparse=always", str(source), str(target)], _COPY_TIMEOUT)
                _run(["qemu-img", "check", "-q", "-r", "leaks", str(target)], _CHECK_TIMEOUT)
                target.chmod(0o444)
            manifest = {"key": key.material, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            self.discard(key)
            work.rename(entry)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return entry


def _disk_names(count: int | None = None) -> Iterable[str]:
    numbers = itertools.count() if count is None else range(count)
    return (f"disk{index}.qcow2" for index in numbers)


def _run(args: list[str], timeout: float) -> None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SnapshotError(f"{args[0]} failed: {error}") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise SnapshotError(f"{' '.join(args[:2])} failed (exit status {result.returncode}): {output}")


# ------------------------------------------------------------------------------------------ warm starts


class WarmMachine(Machine):
    """A machine whose disks are private copies of a warm entry's files, which hold the snapshot."""

    def __init__(self, template: Machine, entry: Path) -> None:
        super().__init__(
            template.profile, template.config, template.timeouts, template.run_dir, accel=template.accel
        )
        self.entry = entry

    async def _make_overlays(self) -> tuple[Path, ...]:
        copies = []
        for index, name in enumerate(_disk_names(len(self.profile.base_disks))):
            target = self.run_dir.overlay(index)
            await asyncio.to_thread(
                _run, ["cp", "--reflink=auto", "--sparse=always", str(self.entry / name), str(target)],
                _COPY_TIMEOUT,
            )  # fmt: skip
            target.chmod(0o600)  # the entry's files are read-only; the copy is the run's to write
            copies.append(target)
        return tuple(copies)


class WarmStart:
    """One session's use of the warm store: the entry to start from, or the lock to create it.

    Made by :meth:`prepare` before QEMU starts. If :attr:`entry` is set the session starts a
    :meth:`machine` from it; otherwise (or if that fails: :meth:`failed`) it boots cold and calls
    :meth:`checkpoint` once the guest is ready.
    """

    def __init__(self, template: Machine, store: WarmStore, key: WarmKey, entry: Path | None) -> None:
        self.template = template
        self.store = store
        self.key = key
        self.entry = entry
        self._lock: IO[str] | None = None

    @classmethod
    def prepare(
        cls, template: Machine, cache_root: Path, setup: Mapping[str, object] | None = None
    ) -> WarmStart | None:
        """Look up ``template``'s entry under ``cache_root/warm``; None if its profile has no snapshots.

        ``setup`` names what was done to the guest before the snapshot (Driver Verifier's rules), so
        that a snapshot with it and one without never share an entry.
        """
        profile = template.profile
        if not profile.snapshot_nodes:
            log.warning("the %s guest cannot be snapshotted; booting cold", profile.describe())
            return None
        store = WarmStore(cache_root / "warm")
        key = warm_key(template, setup or {})
        warm = cls(template, store, key, store.find(key, len(profile.base_disks)))
        if warm.entry is not None:
            log.info("warm snapshot found: %s", warm.entry)
        else:
            warm._take_lock()
        return warm

    def _take_lock(self) -> None:
        try:
            self._lock = self.store.try_lock(self.key)
        except OSError as error:
            log.warning("the warm snapshot cache %s is not usable: %s", self.store.root, error)
            return
        if self._lock is None:
            log.info(
                "another run is creating the warm snapshot %s; this run will not", self.store.entry(self.key)
            )

    def machine(self) -> WarmMachine:
        """A machine that boots on copies of :attr:`entry` (``snapshot-load`` it before ``cont``)."""
        assert self.entry is not None
        return WarmMachine(self.template, self.entry)

    def failed(self, error: BaseException) -> None:
        """The entry could not be restored: log it, remove the entry if possible, and create it anew."""
        log.warning("the warm snapshot %s could not be restored (%s); booting cold", self.entry, error)
        self.entry = None
        self._take_lock()
        if self._lock is not None:
            try:
                self.store.discard(self.key)
            except OSError as problem:
                log.warning("the unusable warm snapshot was not removed: %s", problem)

    async def checkpoint(self, machine: Machine, timeout: float) -> str | None:
        """Snapshot the ready guest (publishing it if this run holds the lock); the snapshot's tag or None.

        The VM is stopped while its disks are copied, so that the copies are consistent, then resumed.
        A failure is logged and leaves the run going without a snapshot.
        """
        saved = False
        try:
            await machine.monitor.execute("stop")
            try:
                await save_snapshot(machine, WARM_TAG, timeout=timeout)
                saved = True
                if self._lock is not None:
                    overlays = [machine.run_dir.overlay(i) for i in range(len(machine.profile.base_disks))]
                    entry = await asyncio.to_thread(self.store.publish, self.key, overlays)
                    log.info("warm snapshot saved for later runs: %s", entry)
            finally:
                await machine.monitor.execute("cont")
        except (SnapshotError, OSError) as error:
            log.warning("the warm snapshot was not %s: %s", "published" if saved else "saved", error)
        finally:
            self.release()
        return WARM_TAG if saved else None

    def release(self) -> None:
        """Let go of the creation lock, if held."""
        lock, self._lock = self._lock, None
        if lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


def remove_disk_copies(machine: Machine) -> None:
    """Delete the stopped machine's overlays, which hold a copy of the RAM snapshot (~100 MB each run)."""
    for index in range(len(machine.profile.base_disks)):
        path = machine.run_dir.overlay(index)
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            log.info("removed %s (%.0f MB, it held the RAM snapshot)", path, size / 1e6)
