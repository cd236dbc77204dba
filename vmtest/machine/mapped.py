"""Warm starts by mapping: the ready guest's RAM kept as a file, only its device state saved.

An entry of the mapped warm store (``<store>/<image key>/<config hash>/``, the store being
``machine.warm_store`` or ``<cache>/warm``) holds:

* ``ram``: the guest's whole memory, as the cold-booted guest left it when it was ready;
* ``state``: the device state (CPU registers, devices, the small RAM blocks such as VGA memory, the
  firmware flash and option ROMs, and a Windows guest's TPM state, which QEMU's ``tpm-emulator``
  migrates), saved with the migration capability ``x-ignore-shared``: ~1 MB, whatever the memory size;
* ``disk<N>.qcow2``: each disk frozen at that point, read-only, over the base image (the Windows
  guest's UEFI variable store is disk 1);
* ``warm.json``: what it was made from (the key of :func:`vmtest.machine.snapshots.warm_key` plus the
  kind), and the RAM file's size and modification time, checked before every use.

Making one (the first run with ``machine.warm`` that finds none and gets the entry's lock): QEMU boots
cold with its RAM in a file of its run directory, mapped shared (``memory-backend-file,share=on``), so
the file *is* the guest's memory. At ready vmtest stops the CPU and migrates, with ``x-ignore-shared``,
to a file descriptor it opened and passed over QMP (``getfd`` + ``fd:`` URI: QEMU never spawns nor
opens anything, so this works under ``-sandbox ...,spawn=deny``). That VM is then ended with ``quit``:
nothing writes the RAM file any more, so it is frozen. The files move into a temporary directory of
the store, are marked read-only and the directory is renamed into place: an entry appears whole or not
at all and is never written after. The run itself then continues from the entry, like any warm run.

Restoring: QEMU starts with the same memory backend but ``share=off`` (a private copy-on-write mapping
of ``ram``: the guest's writes stay in its own anonymous pages, the file is never written, and VMs
restored from one entry share the page cache of the pages they have not written), with
``-incoming defer``, each disk a new overlay over the entry's; vmtest sets ``x-ignore-shared``, passes
the state file's descriptor and runs ``migrate-incoming fd:...``, then ``cont``. Resetting a guest
between tests is the same: the QEMU is ended with ``quit`` and a new one restored in its place, on the
same host ports.

QEMU 7.2 opens the RAM file read-write even for a private mapping (its ``readonly=on`` also makes the
mapping read-only, which a guest cannot run on; QEMU 8.2's ``rom=on`` would not), so the file is left
writable by its owner (0600), and when QEMU runs as its own user (machine/confine.py) that user owns
it: the one file of the store QEMU could write. It reaches it only as ``/proc/self/fd/N`` of a
descriptor vmtest opened. The manifest's size, modification and change time of it are checked before
every use (a write through any descriptor changes the change time, which nobody can set back), and
an entry whose file changed is replaced (docs/SECURITY.md).

Where QEMU cannot do this (older than 5.0, no ``x-ignore-shared`` or no ``memory-backend-file``: see
:func:`mapping_support`), the copy-based store of :mod:`vmtest.machine.snapshots` is used and the
reason logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from vmtest.config.models import MachineConfig
from vmtest.errors import DeadlineExceeded
from vmtest.machine.confine import Confinement
from vmtest.machine.hostfiles import HostFiles, qemu_path
from vmtest.machine.machine import Machine
from vmtest.machine.process import find_qemu
from vmtest.machine.snapshots import SnapshotError, WarmKey, warm_key

__all__ = [
    "KIND",
    "RAM_FILE",
    "RAM_ID",
    "STATE_FILE",
    "MappedMachine",
    "MappedWarm",
    "SavingMachine",
    "load_device_state",
    "mapping_support",
    "memory_args",
    "save_device_state",
    "store_root",
]

log = logging.getLogger(__name__)

KIND = "mapped"
FORMAT = 1
RAM_FILE = "ram"
STATE_FILE = "state"
MANIFEST = "warm.json"
PROBE_FILE = "qemu-mapping.json"
RAM_ID = "vmtest-ram"
_STATE_FD = "vmtest-state"
_PROBE_TIMEOUT = 30.0
_COPY_TIMEOUT = 300.0
_MAPPING_QEMU = (5, 0)  # -machine memory-backend= is "since 5.0"


def store_root(config: MachineConfig, cache_root: Path) -> Path:
    """Where warm entries live: ``machine.warm_store``, else ``<cache>/warm``."""
    return config.warm_store if config.warm_store is not None else cache_root / "warm"


def memory_args(ram: str, size_mib: int, *, shared: bool) -> list[str]:
    """QEMU arguments giving the guest ``ram`` (a QEMU path) as memory, shared (saving) or private."""
    path = ram
    share = "on" if shared else "off"
    return [
        "-object", f"memory-backend-file,id={RAM_ID},size={size_mib}M,mem-path={path},share={share}",
        "-machine", f"memory-backend={RAM_ID}",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ support


def mapping_support(qemu: str, cache: Path | None = None) -> str | None:
    """None if ``qemu`` can save and restore by mapping; else why not.

    QEMU is asked once per binary (path, size, time); with ``cache`` (a folder) the answer is kept in
    ``cache/qemu-mapping.json`` too, so that a later process does not start QEMU to ask again.
    """
    binary = Path(qemu).resolve()
    info = binary.stat()
    stamp = f"{binary}|{info.st_size}|{info.st_mtime_ns}"
    known = _read_answers(cache)
    if stamp in known:
        answer = known[stamp]
        return answer if isinstance(answer, str) else None
    reason = _probe(binary, info.st_size, info.st_mtime_ns)
    if cache is not None:
        with contextlib.suppress(OSError):
            cache.mkdir(parents=True, exist_ok=True)
            work = cache / f".{PROBE_FILE}.{secrets.token_hex(4)}"
            work.write_text(json.dumps({**known, stamp: reason}), encoding="utf-8")
            os.replace(work, cache / PROBE_FILE)
    return reason


def _read_answers(cache: Path | None) -> dict[str, Any]:
    if cache is None:
        return {}
    try:
        answers = json.loads((cache / PROBE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return answers if isinstance(answers, dict) else {}


@functools.lru_cache(maxsize=8)
def _probe(binary: Path, size: int, mtime: int) -> str | None:
    """Ask a QEMU with no guest (``-machine none``) over QMP on stdio for its version and abilities."""
    commands = [
        {"execute": "qmp_capabilities"},
        {"execute": "query-version", "id": "version"},
        {"execute": "query-migrate-capabilities", "id": "capabilities"},
        {"execute": "qom-list-types", "arguments": {"implements": "memory-backend"}, "id": "backends"},
        {"execute": "quit"},
    ]
    try:
        result = subprocess.run(
            [str(binary), "-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"],
            input="".join(json.dumps(command) + "\n" for command in commands),
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"asking {binary} over QMP failed: {error}"
    answers: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and "id" in message:
                answers[str(message["id"])] = message.get("return")
    return _judge(answers)


def _judge(answers: dict[str, Any]) -> str | None:
    version = answers.get("version")
    if not isinstance(version, dict):
        return "QEMU did not answer query-version over QMP"
    numbers = version.get("qemu", {})
    found = (int(numbers.get("major", 0)), int(numbers.get("minor", 0)))
    if found < _MAPPING_QEMU:
        return f"QEMU {found[0]}.{found[1]} has no -machine memory-backend= (needs 5.0 or newer)"
    capabilities = {item.get("capability") for item in answers.get("capabilities") or []}
    if "x-ignore-shared" not in capabilities:
        return "QEMU has no x-ignore-shared migration capability"
    backends = {item.get("name") for item in answers.get("backends") or []}
    if "memory-backend-file" not in backends:
        return "QEMU has no memory-backend-file"
    return None


# ------------------------------------------------------------------------------------------ QMP


async def save_device_state(machine: Machine, path: Path, *, timeout: float) -> None:
    """Stop the guest and write its device state, not its shared RAM, to the new file ``path``.

    The VM is left stopped (``postmigrate``); end it before using the RAM file.
    """
    started = time.monotonic()
    await machine.monitor.execute("stop")
    await _ignore_shared(machine, True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        await machine.monitor.pass_fd(fd, _STATE_FD)
    finally:
        os.close(fd)
    await machine.monitor.execute("migrate", {"uri": f"fd:{_STATE_FD}"})
    await _until_migrated(machine, "saving the device state", timeout)
    log.info("device state saved in %.2fs (%.1f MB)", time.monotonic() - started, path.stat().st_size / 1e6)


async def load_device_state(machine: Machine, path: Path, *, timeout: float) -> None:
    """Load the device state in ``path`` into a QEMU started with ``-incoming defer`` (it stays stopped)."""
    started = time.monotonic()
    await _ignore_shared(machine, True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await machine.monitor.pass_fd(fd, _STATE_FD)
    finally:
        os.close(fd)
    await machine.monitor.execute("migrate-incoming", {"uri": f"fd:{_STATE_FD}"})
    await _until_migrated(machine, "loading the device state", timeout)
    # Off again: a later checkpoint (snapshot-save) must write the whole RAM of this private mapping.
    await _ignore_shared(machine, False)
    log.info("device state loaded in %.2fs from %s", time.monotonic() - started, path)


async def _ignore_shared(machine: Machine, state: bool) -> None:
    """Set ``x-ignore-shared``; ``events`` always on: without it QEMU sends no ``MIGRATION`` events."""
    capabilities = [
        {"capability": "x-ignore-shared", "state": state},
        {"capability": "events", "state": True},
    ]
    await machine.monitor.execute("migrate-set-capabilities", {"capabilities": capabilities})


async def _until_migrated(machine: Machine, what: str, timeout: float) -> None:
    """Follow the migration through ``MIGRATION`` events (``query-migrate``, re-read after each, decides)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        # The waiter is registered before query-migrate is read: a change after the read always wakes us.
        with machine.monitor.expect(("MIGRATION",)) as waiter:
            info = await machine.monitor.execute("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise SnapshotError(f"{what} failed: {info.get('error-desc', status)}")
            try:
                await machine.wait(waiter.future, max(0.0, deadline - loop.time()), what)
            except DeadlineExceeded:
                raise SnapshotError(f"{what}: still {status} at its deadline") from None


# ------------------------------------------------------------------------------------------ machines


def _like(template: Machine, cls: type[Machine]) -> Machine:
    machine = cls(
        template.profile, template.config, template.timeouts, template.run_dir, accel=template.accel
    )
    machine.throwaway = template.throwaway
    return machine


class SavingMachine(Machine):
    """A cold-booting machine whose RAM is the file :attr:`ram` of its run directory, mapped shared."""

    @property
    def ram(self) -> Path:
        """The guest's memory."""
        return self.run_dir.path / RAM_FILE

    def command_line(
        self,
        qemu: str,
        overlays: tuple[Path, ...],
        qmp_fd: int,
        serial_fds: Mapping[str, int],
        *,
        files: HostFiles | None = None,
    ) -> list[str]:
        """The template's command line with the memory in :attr:`ram` (QEMU's user may write it)."""
        args = super().command_line(qemu, overlays, qmp_fd, serial_fds, files=files)
        if files is not None and files.pass_descriptors:
            self.ram.touch(mode=0o600)
            _give_to_qemu(self.ram, self.confinement)
        ram = files.memory(self.ram) if files is not None else qemu_path(self.ram)
        return [*args, *memory_args(ram, self.config.memory_mib, shared=True)]


class MappedMachine(Machine):
    """A machine restored from a mapped entry: private mapping of its RAM, overlays of its disks.

    Start it with :func:`load_device_state` in ``prelaunch``; it waits in ``inmigrate`` until then.
    """

    entry: Path

    def command_line(
        self,
        qemu: str,
        overlays: tuple[Path, ...],
        qmp_fd: int,
        serial_fds: Mapping[str, int],
        *,
        files: HostFiles | None = None,
    ) -> list[str]:
        """The template's command line, memory mapped privately from the entry, waiting for its state."""
        args = super().command_line(qemu, overlays, qmp_fd, serial_fds, files=files)
        path = self.entry / RAM_FILE
        ram = files.memory(path) if files is not None else qemu_path(path)
        return [*args, *memory_args(ram, self.config.memory_mib, shared=False), "-incoming", "defer"]

    async def _make_overlays(self) -> tuple[Path, ...]:
        overlays = []
        for index in range(len(self.profile.base_disks)):
            overlay = self.run_dir.overlay(index)
            overlay.unlink(missing_ok=True)  # the previous VM's, when restarted in place
            await _qemu_img_overlay(self.entry / _disk_name(index), overlay)
            overlays.append(overlay)
        return tuple(overlays)


async def _qemu_img_overlay(backing: Path, overlay: Path) -> None:
    args = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "qcow2", str(overlay)]
    process = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise SnapshotError(f"qemu-img create {overlay} did not finish within 60s") from None
    if process.returncode != 0:
        raise SnapshotError(f"qemu-img create {overlay} failed: {output.decode(errors='replace').strip()}")


def _disk_name(index: int) -> str:
    return f"disk{index}.qcow2"


# ------------------------------------------------------------------------------------------ the store


class MappedWarm:
    """One session's use of the mapped warm store: the entry to restore from, or the lock to make it.

    Made by :meth:`prepare` before QEMU starts. If :attr:`entry` is set the session starts
    :meth:`restore_machine`; otherwise it boots :meth:`cold_machine`, which, when this run holds the
    lock (:attr:`making`), keeps its RAM in a file for :meth:`publish`.
    """

    def __init__(self, template: Machine, root: Path, key: WarmKey) -> None:
        self.template = template
        self.root = root
        self.key = key
        self.entry: Path | None = None
        self._lock: IO[str] | None = None

    @classmethod
    def prepare(cls, template: Machine, root: Path) -> MappedWarm | None:
        """Look up ``template``'s entry under ``root``; None (reason logged) if mapping cannot be used."""
        if not template.profile.snapshot_nodes:
            return None
        reason = mapping_support(find_qemu(template.config.qemu), root)
        if reason is not None:
            log.warning(
                "warm starts by mapping the RAM are not available (%s); using snapshot copies", reason
            )
            return None
        base = warm_key(template)
        material = {**base.material, "kind": KIND, "mapped_format": FORMAT}
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
        warm = cls(template, root, WarmKey(base.image, digest, material))
        warm.entry = warm.find()
        if warm.entry is None:
            warm._take_lock()
            if warm._lock is not None:
                warm.entry = warm.find(quiet=True)  # published while this run waited for the lock
                if warm.entry is not None:
                    warm.release()
        if warm.entry is not None:
            log.info("warm snapshot found: %s", warm.entry)
        return warm

    @property
    def path(self) -> Path:
        """The directory of this key's entry (which may not exist)."""
        return self.root / self.key.image / self.key.digest

    @property
    def making(self) -> bool:
        """Whether this run holds the lock, so its cold boot makes the entry."""
        return self._lock is not None

    def find(self, *, quiet: bool = False) -> Path | None:
        """The published, intact entry, or None (saying why in the log)."""
        entry = self.path
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not quiet:
                log.info("no warm snapshot for this image and configuration yet (%s)", entry)
            return None
        except (OSError, ValueError) as error:
            log.warning(
                "warm snapshot %s is unreadable (%s); booting cold, it will be replaced", entry, error
            )
            return None
        if not isinstance(manifest, dict) or manifest.get("key") != self.key.material:
            log.warning("warm snapshot %s was made from other inputs; it will be replaced", entry)
            return None
        names = [RAM_FILE, STATE_FILE, *(_disk_name(i) for i in range(len(self.template.profile.base_disks)))]
        missing = [name for name in names if not (entry / name).is_file()]
        if missing:
            log.warning(
                "warm snapshot %s lacks %s; booting cold, it will be replaced", entry, ", ".join(missing)
            )
            return None
        if _stamp(entry / RAM_FILE) != manifest.get("ram"):
            log.warning(
                "warm snapshot %s: its RAM file changed after it was published; booting cold, it will be "
                "replaced",
                entry,
            )
            return None
        return entry

    def _take_lock(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = (folder / f"{self.key.digest}.lock").open("w")
        except OSError as error:
            log.warning("the warm snapshot store %s is not usable: %s", self.root, error)
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            log.info("another run is creating the warm snapshot %s; this run will not", self.path)
            return
        for leftover in folder.glob(f".{self.key.digest}.tmp-*"):  # from runs killed while publishing
            shutil.rmtree(leftover, ignore_errors=True)
        self._lock = handle

    def cold_machine(self) -> Machine:
        """The machine to boot cold: with its RAM in a file when this run makes the entry."""
        return _like(self.template, SavingMachine) if self.making else self.template

    def restore_machine(self, ports: dict[str, int] | None = None) -> MappedMachine:
        """A machine that restores :attr:`entry` (trying ``ports`` first for its forwards)."""
        assert self.entry is not None
        machine = _like(self.template, MappedMachine)
        assert isinstance(machine, MappedMachine)
        machine.entry = self.entry
        machine.preferred_ports = dict(ports or {})
        return machine

    def failed(self, error: BaseException) -> None:
        """:attr:`entry` could not be restored: log it, and take the lock to make it anew."""
        log.warning("the warm snapshot %s could not be restored (%s); booting cold", self.entry, error)
        self.entry = None
        self._take_lock()

    def publish(self, machine: SavingMachine, state: Path) -> Path:
        """Move the ended ``machine``'s RAM file, ``state`` and disks into the entry, atomically.

        Call with the lock held and QEMU gone (nothing may write the RAM file any more).
        """
        assert self.making and not machine.running
        entry = self.path
        work = entry.with_name(f".{self.key.digest}.tmp-{secrets.token_hex(4)}")
        work.mkdir(parents=True)
        try:
            _move(state, work / STATE_FILE)
            for index in range(len(machine.profile.base_disks)):
                _move(machine.run_dir.overlay(index), work / _disk_name(index))
            _move(machine.ram, work / RAM_FILE)
            for path in work.iterdir():
                path.chmod(0o600 if path.name == RAM_FILE else 0o444)  # 0600: see the module's docstring
            _give_to_qemu(work / RAM_FILE, machine.confinement)
            manifest = {
                "key": self.key.material,
                "ram": _stamp(work / RAM_FILE),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            (work / MANIFEST).chmod(0o444)
            self.discard()
            work.rename(entry)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self.entry = entry
        log.info("warm snapshot saved for later runs: %s", entry)
        return entry

    def discard(self) -> None:
        """Remove this key's entry (with the lock held); VMs mapping its files keep them open."""
        entry = self.path
        if entry.exists():
            doomed = entry.with_name(f".{self.key.digest}.tmp-{secrets.token_hex(4)}")
            entry.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            log.info("removed the warm snapshot %s", entry)

    def release(self) -> None:
        """Let go of the creation lock, if held."""
        lock, self._lock = self._lock, None
        if lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


def _stamp(path: Path) -> list[int]:
    """Size, modification and change time (a write changes the change time; no user can set it back)."""
    try:
        info = path.stat()
    except OSError:
        return [-1, -1, -1]
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _give_to_qemu(path: Path, confinement: Confinement) -> None:
    """Make ``path`` QEMU's user's (0600): QEMU 7.2 opens guest memory files read-write."""
    run_as = confinement.run_as
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, or copy it (sparse) when they are on different filesystems."""
    try:
        os.rename(source, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    try:
        result = subprocess.run(
            ["cp", "--reflink=auto", "--sparse=always", str(source), str(target)],
            capture_output=True,
            text=True,
            timeout=_COPY_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as problem:
        raise SnapshotError(f"copying {source} into the warm store failed: {problem}") from None
    if result.returncode != 0:
        raise SnapshotError(f"copying {source} into the warm store failed: {result.stderr.strip()}")
    source.unlink()
