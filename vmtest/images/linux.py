"""Build the Linux self-test guest from Debian packages, and find the one already built.

The guest is a Debian kernel booted with a small initramfs: busybox, dropbear (SSH with a pinned host
key and a generated client key), OpenSSH's ``sftp-server``, the few kernel modules the guest needs, and
the init script kept in ``images/linux/`` (shipped in the package, found by :mod:`vmtest.resources`).
A small ext4 base disk (qcow2) carries a marker file; vmtest runs every VM on an overlay of it. Kernel
headers are unpacked (not installed) into the image so that out-of-tree modules build with
``make -C <headers> M=<dir> modules``.

Only the kernel and its headers are downloaded (``apt-get download``, unpacked with ``dpkg-deb -x``);
busybox-static, dropbear-bin and openssh-sftp-server are copied from the host's installed packages.

An image lives in ``<cache_root>/linux/<key>/``, where ``key`` hashes every input: the package versions,
the host files copied in, the files of ``images/linux/`` and this module's source. ``image.json`` is
written last and the directory is renamed into place, so a half-built image is never taken as built;
``<cache_root>/linux/current`` is a symlink to the newest one.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtest.errors import ImageError
from vmtest.images.digest import sha256_file
from vmtest.images.keys import CLIENT_KEY_PATH, CLIENT_PUBLIC_KEY_PATH, make_client_key
from vmtest.images.manifest import MANIFEST_NAME, read_json_manifest
from vmtest.resources import LINUX_IMAGE_FILES

__all__ = [
    "READY_MARKER",
    "LinuxImage",
    "build_linux_image",
    "compute_key",
    "default_cache_root",
    "find_linux_image",
    "image_files_dir",
    "resolve_linux_image",
]

logger = logging.getLogger(__name__)

READY_MARKER = "VMTEST-GUEST-READY"
"""The line the guest's init prints on the serial console once SSH is listening."""

MANIFEST_FORMAT = 1
BUILD_COMMAND = "vmtest image build linux"

KERNEL_METAPACKAGE = "linux-image-amd64"
HOST_PACKAGES = ("busybox-static", "dropbear-bin", "openssh-sftp-server")

# Where Debian's host packages put the files the guest needs, and where the guest wants some of them.
BUSYBOX = "/bin/busybox"
DROPBEAR = "/usr/sbin/dropbear"
DROPBEARKEY = "/usr/bin/dropbearkey"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
GUEST_SFTP_SERVER = "usr/lib/sftp-server"  # where Debian's dropbear looks for it
GUEST_HOST_KEY = "etc/dropbear/dropbear_ed25519_host_key"
GUEST_MODULE_LIST = "etc/vmtest/modules"

DISK_SIZE = "64M"
DISK_MARKER = "vmtest-image"
KEY_LENGTH = 16

# Layout of a built image, relative to its root.
KERNEL_PATH = "kernel/vmlinuz"
KERNEL_CONFIG_PATH = "kernel/config"
INITRD_PATH = "initramfs.cpio.gz"
DISK_PATH = "disk.qcow2"
HOST_PUBLIC_KEY_PATH = "keys/host_ed25519.pub"
HEADERS_ROOT_PATH = "headers-root"
SELFTEST_MODULE_PATH = "selftest/vmtest_hello.ko"

# Timeouts (seconds) of the external commands.
QUICK = 60
DOWNLOAD = 900
SLOW = 600


def _log_info(message: str) -> None:
    logger.info("%s", message)


# --------------------------------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinuxImage:
    """A built Linux guest image: what QEMU boots, how to log in, and how to build modules for it."""

    root: Path
    kernel: Path
    initrd: Path
    disk: Path
    client_key: Path
    host_key: str
    kernel_release: str
    headers: Path
    ready_marker: str

    @classmethod
    def load(cls, root: Path) -> LinuxImage:
        """Read the image built in ``root`` from its ``image.json``; raise ImageError if it is not one."""
        manifest = read_manifest(root)
        try:
            paths = manifest["paths"]
            return cls(
                root=root,
                kernel=root / paths["kernel"],
                initrd=root / paths["initrd"],
                disk=root / paths["disk"],
                client_key=root / paths["client_key"],
                host_key=str(manifest["host_key"]),
                kernel_release=str(manifest["kernel_release"]),
                headers=root / paths["headers"],
                ready_marker=str(manifest["ready_marker"]),
            )
        except (KeyError, TypeError) as exc:
            raise ImageError(
                f"{root / MANIFEST_NAME} lacks {exc}; rebuild with `{BUILD_COMMAND} --force`"
            ) from exc


def read_manifest(root: Path) -> dict[str, Any]:
    """Return the parsed ``image.json`` of the image in ``root``; raise ImageError if absent or bad."""
    build = BUILD_COMMAND
    data = read_json_manifest(root, what="Linux image", build=build, rebuild=f"{build} --force")
    if data.get("format") != MANIFEST_FORMAT:
        raise ImageError(f"{root / MANIFEST_NAME} has an unknown format; run `{build} --force`")
    return data


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``image.json`` into ``root`` atomically (temp file, then rename)."""
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """``$VMTEST_CACHE``, else ``$XDG_CACHE_HOME/vmtest``, else ``~/.cache/vmtest``."""
    explicit = os.environ.get("VMTEST_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vmtest"


def image_files_dir() -> Path:
    """Return the directory of the guest's plain files (init, configs): ``images/linux``.

    Found by :data:`vmtest.resources.LINUX_IMAGE_FILES` (shipped in the package, or the source tree's;
    ``$VMTEST_LINUX_IMAGE_FILES`` overrides it).
    """
    path = LINUX_IMAGE_FILES.path()
    if not (path / "rootfs" / "init").is_file():
        raise ImageError(
            f"the Linux guest's files are not at {path} (expected rootfs/init there); reinstall vmtest, "
            f"or set {LINUX_IMAGE_FILES.override} to the images/linux directory of the vmtest source tree"
        )
    return path


def _linux_dir(cache_root: Path | None) -> Path:
    return ((cache_root if cache_root is not None else default_cache_root()) / "linux").resolve()


def find_linux_image(cache_root: Path | None = None) -> LinuxImage:
    """Return the current built Linux image; raise ImageError telling how to build one if there is none."""
    current = _linux_dir(cache_root) / "current"
    if not current.is_dir() or not (current / MANIFEST_NAME).is_file():
        raise ImageError(f"no Linux guest image is built in {current.parent}; run `{BUILD_COMMAND}`")
    return LinuxImage.load(current.resolve())


def resolve_linux_image(configured: Path | None, cache_root: Path | None = None) -> LinuxImage:
    """The image a run uses: ``guest.image`` when set, else the current one built; ImageError if unusable.

    ``vmtest run`` (the guest profile) and ``vmtest doctor`` both call it, so they agree.
    """
    return LinuxImage.load(configured) if configured is not None else find_linux_image(cache_root)


def _point_current(linux_dir: Path, key: str) -> None:
    tmp = linux_dir / f".current.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(key)
    os.replace(tmp, linux_dir / "current")


# --------------------------------------------------------------------------------------------------
# External commands
# --------------------------------------------------------------------------------------------------


def _run(
    argv: Sequence[str | Path],
    *,
    timeout: float = QUICK,
    cwd: Path | None = None,
    fix: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout, in the C locale; turn every failure into an ImageError.

    ``fix`` is the advice appended to the error (e.g. the apt-get command that installs the tool).
    """
    args = [str(a) for a in argv]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}
    logger.debug("running %s", " ".join(args))
    advice = f"; {fix}" if fix else ""
    try:
        result = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ImageError(f"`{args[0]}` is not installed{advice}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"`{' '.join(args)}` timed out after {timeout:.0f} s{advice}") from exc
    if check and result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ImageError(f"`{' '.join(args)}` failed (exit {result.returncode}){advice}\n{tail}")
    return result


# --------------------------------------------------------------------------------------------------
# Inputs and the key
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelPackages:
    """The Debian kernel packages of one ABI: the image and the three header packages."""

    release: str
    image: str
    headers: str
    headers_common: str
    kbuild: str
    versions: Mapping[str, str]

    @property
    def names(self) -> tuple[str, ...]:
        """Every package name, the kernel image first."""
        return (self.image, self.headers, self.headers_common, self.kbuild)


@dataclass(frozen=True)
class Inputs:
    """Everything an image is built from, resolved without network access."""

    kernel: KernelPackages
    host_packages: Mapping[str, str]
    host_files: Mapping[str, str]
    files_dir: Path
    key: str

    @property
    def packages(self) -> dict[str, str]:
        """Every package used, with its version."""
        return {**self.kernel.versions, **self.host_packages}


def _apt_update_advice() -> str:
    return "run `apt-get update` (as root) and try again"


def _depends(package: str) -> list[str]:
    out = _run(["apt-cache", "depends", package], fix=_apt_update_advice()).stdout
    return re.findall(r"^\s*\|?Depends:\s*(\S+)\s*$", out, re.MULTILINE)


def _candidates(packages: Sequence[str]) -> dict[str, str]:
    out = _run(["apt-cache", "policy", *packages], fix=_apt_update_advice()).stdout
    versions: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif line.strip().startswith("Candidate:") and current:
            versions[current] = line.split(":", 1)[1].strip()
    missing = [p for p in packages if versions.get(p, "(none)") == "(none)"]
    if missing:
        raise ImageError(f"apt knows no installable version of {', '.join(missing)}; {_apt_update_advice()}")
    return versions


def _pick(deps: Sequence[str], pattern: str, what: str, parent: str) -> str:
    for dep in deps:
        if re.fullmatch(pattern, dep):
            return dep
    raise ImageError(f"`apt-cache depends {parent}` names no {what}; {_apt_update_advice()}")


def resolve_kernel_packages() -> KernelPackages:
    """Resolve ``linux-image-amd64`` to its ABI package and the matching header packages."""
    image = _pick(_depends(KERNEL_METAPACKAGE), r"linux-image-\d\S*-amd64", "kernel", KERNEL_METAPACKAGE)
    release = image.removeprefix("linux-image-")
    headers = f"linux-headers-{release}"
    deps = _depends(headers)
    common = _pick(deps, r"linux-headers-\S+-common", "common headers", headers)
    kbuild = _pick(deps, r"linux-kbuild-\S+", "kbuild", headers)
    versions = _candidates([image, headers, common, kbuild])
    if len({versions[image], versions[headers], versions[common]}) != 1:
        raise ImageError(f"apt offers mismatched kernel packages {versions}; {_apt_update_advice()}")
    return KernelPackages(release, image, headers, common, kbuild, versions)


def _install_advice(packages: Sequence[str]) -> str:
    return f"install with `apt-get install {' '.join(packages)}`"


def resolve_host_packages() -> dict[str, str]:
    """Versions of the installed host packages the guest's userland is copied from."""
    result = _run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Status}\n", *HOST_PACKAGES],
        check=False,
        fix=_install_advice(HOST_PACKAGES),
    )
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] == "installed":
            found[parts[0]] = parts[1]
    missing = [p for p in HOST_PACKAGES if p not in found]
    if missing:
        raise ImageError(f"host package(s) {', '.join(missing)} not installed; {_install_advice(missing)}")
    return found


def _shared_libraries(binaries: Sequence[str]) -> list[str]:
    """List the shared libraries (and the dynamic loader) the binaries need, per ``ldd``."""
    libs: list[str] = []
    for binary in binaries:
        out = _run(["ldd", binary], fix=_install_advice(["libc-bin"])).stdout
        for line in out.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match and match.group(1) not in libs:
                libs.append(match.group(1))
    return libs


def resolve_host_files() -> dict[str, str]:
    """Map the host files copied into the initramfs (binaries and libraries) to their sha256."""
    binaries = [BUSYBOX, DROPBEAR, SFTP_SERVER]
    for path in [*binaries, DROPBEARKEY]:
        if not Path(path).is_file():
            packages = " ".join(HOST_PACKAGES)
            raise ImageError(f"{path} is missing; reinstall with `apt-get install --reinstall {packages}`")
    files = [*binaries, *_shared_libraries([DROPBEAR, SFTP_SERVER])]
    return {path: sha256_file(Path(path)) for path in files}


def _tree_digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def compute_key(
    packages: Mapping[str, str],
    host_files: Mapping[str, str],
    files_dir: Path,
    builder_source: Path | None = None,
) -> str:
    """Return the short hash naming an image: package versions, host files, guest files, builder source."""
    source = builder_source if builder_source is not None else Path(__file__)
    material = {
        "format": MANIFEST_FORMAT,
        "packages": dict(sorted(packages.items())),
        "host_files": dict(sorted(host_files.items())),
        "files": _tree_digests(files_dir),
        "builder": sha256_file(source),
    }
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_LENGTH]


def resolve_inputs() -> Inputs:
    """Resolve every input of the image (apt metadata and installed packages only, no network)."""
    files_dir = image_files_dir()
    kernel = resolve_kernel_packages()
    host_packages = resolve_host_packages()
    files = resolve_host_files()
    key = compute_key({**kernel.versions, **host_packages}, files, files_dir)
    return Inputs(kernel, host_packages, files, files_dir, key)


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def build_linux_image(
    cache_root: Path | None = None,
    *,
    force: bool = False,
    log: Callable[[str], None] = _log_info,
) -> LinuxImage:
    """Build the Linux guest image (or return the one already built from the same inputs).

    ``log`` receives one line per build step. Raises ImageError, naming the command that fixes the
    problem, when a package is missing or a step fails.
    """
    linux_dir = _linux_dir(cache_root)
    linux_dir.mkdir(parents=True, exist_ok=True)
    log("resolving the guest's packages")
    inputs = resolve_inputs()
    final = linux_dir / inputs.key
    with _build_lock(linux_dir):
        _remove_leftovers(linux_dir)
        if not force and (final / MANIFEST_NAME).is_file():
            log(f"Linux image {inputs.key} is already built: {final}")
            _point_current(linux_dir, inputs.key)
            return LinuxImage.load(final)
        log(f"building Linux image {inputs.key} (kernel {inputs.kernel.release}) in {final}")
        work = Path(tempfile.mkdtemp(prefix=f".build-{inputs.key}-", dir=linux_dir))
        try:
            _build_into(work, inputs, log)
            _install(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _point_current(linux_dir, inputs.key)
    log(f"Linux image ready: {final}")
    return LinuxImage.load(final)


@contextlib.contextmanager
def _build_lock(linux_dir: Path) -> Iterator[None]:
    with (linux_dir / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_leftovers(linux_dir: Path) -> None:
    """Remove the work directories of builds that were killed (only called under the build lock)."""
    for leftover in [*linux_dir.glob(".build-*"), *linux_dir.glob(".old-*")]:
        logger.info("removing %s, left over by an interrupted build", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _install(work: Path, final: Path) -> None:
    """Move the finished ``work/image`` to ``final``, replacing an older build of the same key."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(work / "image", final)


def _build_into(work: Path, inputs: Inputs, log: Callable[[str], None]) -> None:
    image = work / "image"
    image.mkdir()
    debs = _download(work / "debs", inputs.kernel, log)
    log("unpacking the kernel")
    kernel_tree = _unpack(debs[inputs.kernel.image], work / "kernel-pkg")
    moddir = _install_kernel(kernel_tree, inputs.kernel.release, image)
    log("unpacking the kernel headers")
    headers = _unpack_headers(debs, inputs.kernel, image / HEADERS_ROOT_PATH)
    log("building a test module against the headers")
    _prove_headers(headers, inputs.kernel.release, inputs.files_dir, work / "selftest", image)
    log("generating keys")
    client_public = make_client_key(image)
    host_private, host_public = _make_host_key(work / "hostkey", image)
    log("writing the initramfs")
    modules = _module_load_order(moddir, _wanted_modules(inputs.files_dir / "modules.txt"))
    _write_initramfs(image / INITRD_PATH, inputs, moddir, modules, client_public, host_private)
    log("making the base disk")
    _make_disk(work, image / DISK_PATH, inputs.key)
    write_manifest(image, _manifest(inputs, modules, host_public))


def _download(dest: Path, kernel: KernelPackages, log: Callable[[str], None]) -> dict[str, Path]:
    dest.mkdir()
    specs = [f"{name}={kernel.versions[name]}" for name in kernel.names]
    log(f"downloading {', '.join(specs)}")
    _run(["apt-get", "download", *specs], cwd=dest, timeout=DOWNLOAD, fix=_apt_update_advice())
    found: dict[str, Path] = {}
    for name in kernel.names:
        matches = sorted(dest.glob(f"{name}_*.deb"))
        if not matches:
            raise ImageError(f"`apt-get download {name}` produced no .deb; {_apt_update_advice()}")
        found[name] = matches[0]
    return found


def _unpack(deb: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", deb, dest], timeout=SLOW, fix=_install_advice(["dpkg"]))
    return dest


def _modules_root(tree: Path, release: str) -> Path:
    for candidate in (tree / "lib" / "modules" / release, tree / "usr" / "lib" / "modules" / release):
        if candidate.is_dir():
            return candidate
    raise ImageError(f"the kernel package has no modules directory for {release}")


def _install_kernel(tree: Path, release: str, image: Path) -> Path:
    """Copy vmlinuz and its config into the image; index the modules; return their directory.

    (Debian's System.map is a placeholder pointing at the -dbg package, so it is not kept.)
    """
    boot = tree / "boot"
    for name, rel in (("vmlinuz", KERNEL_PATH), ("config", KERNEL_CONFIG_PATH)):
        src = boot / f"{name}-{release}"
        if not src.is_file():
            raise ImageError(f"the kernel package lacks /boot/{src.name}")
        (image / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, image / rel)
    moddir = _modules_root(tree, release)
    _run(["depmod", "-b", tree, release], timeout=SLOW, fix=_install_advice(["kmod"]))
    if not (moddir / "modules.dep").is_file():
        raise ImageError(f"`depmod -b {tree} {release}` wrote no modules.dep in {moddir}")
    return moddir


# --------------------------------------------------------------------------------------------------
# Kernel headers
# --------------------------------------------------------------------------------------------------


def _unpack_headers(debs: Mapping[str, Path], kernel: KernelPackages, root: Path) -> Path:
    """Unpack the three header packages under ``root`` and make every link resolve inside it."""
    for name in (kernel.headers, kernel.headers_common, kernel.kbuild):
        _unpack(debs[name], root)
    _relink_absolute_symlinks(root)
    headers = root / "usr" / "src" / kernel.headers
    if not (headers / "Makefile").is_file():
        raise ImageError(f"{kernel.headers} has no usr/src/{kernel.headers}/Makefile")
    _relativize_makefile_includes(headers / "Makefile", root)
    _check_symlinks(root)
    return headers


def _symlinks(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                yield path


def _relink_absolute_symlinks(root: Path) -> None:
    """Re-point absolute symlinks (e.g. lib/modules/<rel>/build -> /usr/src/...) into ``root``."""
    for link in list(_symlinks(root)):
        target = os.readlink(link)
        if os.path.isabs(target):
            relative = os.path.relpath(root / target.lstrip("/"), link.parent)
            link.unlink()
            link.symlink_to(relative)


def _relativize_makefile_includes(makefile: Path, root: Path) -> None:
    """Rewrite ``include /usr/src/...`` (Debian's flavour Makefile) to a path relative to the Makefile."""
    text = makefile.read_text(encoding="utf-8")

    def rewrite(match: re.Match[str]) -> str:
        target = root / match.group(2).lstrip("/")
        if not target.exists():
            raise ImageError(f"{makefile} includes {match.group(2)}, which no header package provides")
        relative = os.path.relpath(target, makefile.parent)
        return f"{match.group(1)}$(dir $(lastword $(MAKEFILE_LIST))){relative}"

    makefile.write_text(
        re.sub(r"^(\s*-?include\s+)(/\S+)", rewrite, text, flags=re.MULTILINE), encoding="utf-8"
    )


def _check_symlinks(root: Path) -> None:
    real_root = root.resolve()
    for link in _symlinks(root):
        resolved = link.resolve()
        if not resolved.is_relative_to(real_root):
            raise ImageError(f"header link {link} -> {os.readlink(link)} leaves {root}")
        if not resolved.exists():
            logger.warning("dangling header link %s -> %s", link, os.readlink(link))


def _prove_headers(headers: Path, release: str, files_dir: Path, work: Path, image: Path) -> None:
    """Build the hello-world module against ``headers``; check its vermagic; keep it in the image."""
    shutil.copytree(files_dir / "selftest-module", work)
    _run(
        ["make", "-C", headers, f"M={work}", "modules"],
        timeout=SLOW,
        fix=f"the unpacked kernel headers do not build a module; {_install_advice(['gcc-12', 'make'])}",
    )
    module = work / Path(SELFTEST_MODULE_PATH).name
    vermagic = _run(["modinfo", "-F", "vermagic", module], fix=_install_advice(["kmod"])).stdout.strip()
    if not vermagic.startswith(release + " "):
        raise ImageError(f"a module built against the headers has vermagic {vermagic!r}, not {release}")
    (image / SELFTEST_MODULE_PATH).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(module, image / SELFTEST_MODULE_PATH)


# --------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------


def _make_host_key(work: Path, image: Path) -> tuple[bytes, str]:
    """Generate the guest's dropbear ed25519 host key; return (private key file, public key line)."""
    work.mkdir()
    key_file = work / "dropbear_ed25519_host_key"
    fix = _install_advice(["dropbear-bin"])
    _run([DROPBEARKEY, "-t", "ed25519", "-f", key_file], fix=fix)
    out = _run([DROPBEARKEY, "-y", "-f", key_file], fix=fix).stdout
    match = re.search(r"^(ssh-ed25519 \S+)", out, re.MULTILINE)
    if not match:
        raise ImageError(f"`dropbearkey -y` printed no ed25519 public key:\n{out}")
    public = match.group(1)
    (image / HOST_PUBLIC_KEY_PATH).write_text(public + "\n", encoding="utf-8")
    return key_file.read_bytes(), public


# --------------------------------------------------------------------------------------------------
# Kernel modules
# --------------------------------------------------------------------------------------------------


def _module_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def _wanted_modules(listing: Path) -> list[str]:
    names = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            names.append(word)
    return names


def _read_modules_dep(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """Map module name -> (path relative to ``moddir``, its direct dependencies' paths)."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text(encoding="utf-8").splitlines():
        path, _, deps = line.partition(":")
        table[_module_name(path)] = (path, deps.split())
    return table


def _builtin_modules(moddir: Path) -> set[str]:
    path = moddir / "modules.builtin"
    if not path.is_file():
        return set()
    return {_module_name(line) for line in path.read_text(encoding="utf-8").split()}


def _module_load_order(moddir: Path, wanted: Sequence[str]) -> list[str]:
    """Paths (relative to ``moddir``) of the wanted modules and their dependencies, dependencies first."""
    table = _read_modules_dep(moddir)
    by_path = {path: deps for path, deps in table.values()}
    builtin = _builtin_modules(moddir)
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(by_path.get(path, [])):  # like modprobe: the last is loaded first
            visit(dep)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in table:
            visit(table[key][0])
        elif key in builtin:
            logger.info("module %s is built into the kernel", name)
        else:
            raise ImageError(f"the kernel has no module {name!r} (listed in images/linux/modules.txt)")
    return order


# --------------------------------------------------------------------------------------------------
# The initramfs
# --------------------------------------------------------------------------------------------------


@dataclass
class Initramfs:
    """An in-memory newc cpio archive: every entry owned by root, with a fixed mtime."""

    entries: dict[str, tuple[int, bytes, int]] = field(default_factory=dict)

    def directory(self, path: str, mode: int = 0o755) -> None:
        """Add a directory (and its parents)."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self.entries or i == len(parts):
                self.entries[sub] = (stat.S_IFDIR | mode, b"", 0)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self._parent(path)
        self.entries[path.strip("/")] = (stat.S_IFREG | mode, data, 0)

    def symlink(self, path: str, target: str) -> None:
        """Add a symbolic link."""
        self._parent(path)
        self.entries[path.strip("/")] = (stat.S_IFLNK | 0o777, target.encode(), 0)

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node."""
        self._parent(path)
        self.entries[path.strip("/")] = (stat.S_IFCHR | mode, b"", os.makedev(major, minor))

    def _parent(self, path: str) -> None:
        parent = os.path.dirname(path.strip("/"))
        if parent and parent not in self.entries:
            self.directory(parent)

    def write(self, out: io.BufferedIOBase) -> None:
        """Write the archive (uncompressed newc) to ``out``."""
        for ino, name in enumerate(sorted(self.entries), start=1):
            mode, data, rdev = self.entries[name]
            _write_cpio_entry(out, ino, name, mode, data, rdev)
        _write_cpio_entry(out, 0, "TRAILER!!!", 0, b"", 0)


def _pad(out: io.BufferedIOBase, length: int) -> None:
    out.write(b"\0" * (-length % 4))


def _write_cpio_entry(out: io.BufferedIOBase, ino: int, name: str, mode: int, data: bytes, rdev: int) -> None:
    encoded = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(encoded), 0)
    header = b"070701" + b"".join(f"{value:08X}".encode() for value in fields)
    out.write(header + encoded)
    _pad(out, len(header) + len(encoded))
    out.write(data)
    _pad(out, len(data))


def _add_busybox(archive: Initramfs) -> None:
    archive.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    applets = _run([BUSYBOX, "--list-full"], fix=_install_advice(["busybox-static"])).stdout.split()
    for applet in applets:
        if applet.strip("/") != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")


def _add_dropbear(archive: Initramfs, inputs: Inputs, host_private: bytes, client_public: str) -> None:
    archive.file(DROPBEAR, Path(DROPBEAR).read_bytes(), 0o755)
    archive.file(GUEST_SFTP_SERVER, Path(SFTP_SERVER).read_bytes(), 0o755)
    for path in inputs.host_files:
        if path not in (BUSYBOX, DROPBEAR, SFTP_SERVER):
            archive.file(path, Path(path).read_bytes(), 0o755)  # libraries and the loader
    archive.file(GUEST_HOST_KEY, host_private, 0o600)
    archive.directory("root", 0o700)
    archive.directory("root/.ssh", 0o700)
    archive.file("root/.ssh/authorized_keys", (client_public + "\n").encode(), 0o600)


def _source_mode(path: Path) -> int:
    executable = os.access(path, os.X_OK) or path.read_bytes()[:2] == b"#!"
    return 0o755 if executable else 0o644


def _add_rootfs(archive: Initramfs, rootfs: Path) -> None:
    for path in sorted(rootfs.rglob("*")):
        rel = path.relative_to(rootfs).as_posix()
        if path.is_dir():
            archive.directory(rel)
        elif path.is_file():
            archive.file(rel, path.read_bytes(), _source_mode(path))


def _add_modules(archive: Initramfs, moddir: Path, release: str, modules: Sequence[str]) -> None:
    guest_dir = f"lib/modules/{release}"
    lines = (moddir / "modules.dep").read_text(encoding="utf-8").splitlines(keepends=True)
    deps = {line.partition(":")[0]: line for line in lines}
    for rel in modules:
        archive.file(f"{guest_dir}/{rel}", (moddir / rel).read_bytes())
    archive.file(f"{guest_dir}/modules.dep", "".join(deps[rel] for rel in modules).encode())
    if (moddir / "modules.builtin").is_file():  # lets busybox modprobe skip built-in modules
        archive.file(f"{guest_dir}/modules.builtin", (moddir / "modules.builtin").read_bytes())
    listing = "".join(f"/{guest_dir}/{rel}\n" for rel in modules)
    archive.file(GUEST_MODULE_LIST, listing.encode())


def _write_initramfs(
    dest: Path,
    inputs: Inputs,
    moddir: Path,
    modules: Sequence[str],
    client_public: str,
    host_private: bytes,
) -> None:
    archive = Initramfs()
    for directory in ("dev", "proc", "sys", "tmp", "run", "mnt/disk", "var/log", "etc/vmtest"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3, 0o666)
    archive.symlink("var/run", "/run")
    _add_busybox(archive)
    _add_dropbear(archive, inputs, host_private, client_public)
    _add_modules(archive, moddir, inputs.kernel.release, modules)
    _add_rootfs(archive, inputs.files_dir / "rootfs")
    if READY_MARKER not in archive.entries["init"][1].decode():
        raise ImageError(f"images/linux/rootfs/init never prints the ready marker {READY_MARKER}")
    with dest.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        archive.write(out)


# --------------------------------------------------------------------------------------------------
# The base disk and the manifest
# --------------------------------------------------------------------------------------------------


def _make_disk(work: Path, dest: Path, key: str) -> None:
    content = work / "disk-content"
    content.mkdir()
    (content / DISK_MARKER).write_text(key + "\n", encoding="utf-8")
    raw = work / "disk.raw"
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "vmtest", "-E", "root_owner=0:0", "-d", content, raw, DISK_SIZE],
        timeout=SLOW,
        fix=_install_advice(["e2fsprogs"]),
    )
    _run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest],
        timeout=SLOW,
        fix=_install_advice(["qemu-utils"]),
    )
    raw.unlink()
    dest.chmod(0o444)  # vmtest only ever runs VMs on overlays of it


def _manifest(inputs: Inputs, modules: Sequence[str], host_key: str) -> dict[str, Any]:
    release = inputs.kernel.release
    return {
        "format": MANIFEST_FORMAT,
        "key": inputs.key,
        "kernel_release": release,
        "packages": dict(sorted(inputs.packages.items())),
        "host_files": dict(sorted(inputs.host_files.items())),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "paths": {
            "kernel": KERNEL_PATH,
            "kernel_config": KERNEL_CONFIG_PATH,
            "initrd": INITRD_PATH,
            "disk": DISK_PATH,
            "client_key": CLIENT_KEY_PATH,
            "client_public_key": CLIENT_PUBLIC_KEY_PATH,
            "host_public_key": HOST_PUBLIC_KEY_PATH,
            "headers_root": HEADERS_ROOT_PATH,
            "headers": f"{HEADERS_ROOT_PATH}/usr/src/{inputs.kernel.headers}",
            "selftest_module": SELFTEST_MODULE_PATH,
        },
        "headers_source": "unpacked",
        "host_key": host_key,
        "ready_marker": READY_MARKER,
        "guest_modules": [f"/lib/modules/{release}/{rel}" for rel in modules],
        "guest": {
            "disk": "virtio-blk (/dev/vda, ext4), mounted at /mnt/disk",
            "nic": "e1000, 10.0.2.15/24 via 10.0.2.2 (QEMU user networking)",
            "panic": "ISA pvpanic (pvpanic-mmio) or pvpanic-pci",
            "ssh": "dropbear on port 22, root, key only",
        },
    }
