"""The Linux guest image builder: what can be checked without building (plus one cached e2e build)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import paramiko
import pytest

from vmtest.errors import ImageError
from vmtest.images import LinuxImage, build_linux_image, find_linux_image, linux
from vmtest.images.linux import (
    MANIFEST_NAME,
    READY_MARKER,
    compute_key,
    default_cache_root,
    read_manifest,
    write_manifest,
)

PACKAGES = {"linux-image-6.1.0-1-amd64": "6.1.1-1", "busybox-static": "1:1.35.0-4"}
HOST_FILES = {"/usr/sbin/dropbear": "0" * 64}


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    root = tmp_path / "images-linux"
    (root / "rootfs" / "etc").mkdir(parents=True)
    (root / "rootfs" / "init").write_text(f"#!/bin/sh\necho {READY_MARKER}\n")
    (root / "rootfs" / "etc" / "acpid.conf").write_text("PWRF power\n")
    (root / "modules.txt").write_text("e1000\n")
    return root


@pytest.fixture
def builder_source(tmp_path: Path) -> Path:
    path = tmp_path / "builder.py"
    path.write_text("# builder v1\n")
    return path


def key_of(files_dir: Path, builder_source: Path, **overrides: Any) -> str:
    packages = overrides.get("packages", PACKAGES)
    host_files = overrides.get("host_files", HOST_FILES)
    return compute_key(packages, host_files, files_dir, builder_source)


# --- the key ----------------------------------------------------------------------------------------


def test_key_is_short_and_stable(files_dir: Path, builder_source: Path) -> None:
    key = key_of(files_dir, builder_source)
    assert key == key_of(files_dir, builder_source)
    assert len(key) == 16
    assert all(c in "0123456789abcdef" for c in key)


def test_key_changes_when_a_guest_file_changes(files_dir: Path, builder_source: Path) -> None:
    before = key_of(files_dir, builder_source)
    (files_dir / "rootfs" / "init").write_text(f"#!/bin/sh\n: changed\necho {READY_MARKER}\n")
    assert key_of(files_dir, builder_source) != before


def test_key_changes_when_a_guest_file_is_added_or_renamed(files_dir: Path, builder_source: Path) -> None:
    before = key_of(files_dir, builder_source)
    (files_dir / "rootfs" / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    added = key_of(files_dir, builder_source)
    assert added != before
    (files_dir / "rootfs" / "etc" / "hosts").rename(files_dir / "rootfs" / "etc" / "hosts2")
    assert key_of(files_dir, builder_source) not in (before, added)


def test_key_changes_with_package_versions_host_files_and_builder(
    files_dir: Path, builder_source: Path
) -> None:
    base = key_of(files_dir, builder_source)
    newer_kernel = {**PACKAGES, "linux-image-6.1.0-1-amd64": "6.1.1-2"}
    assert key_of(files_dir, builder_source, packages=newer_kernel) != base
    assert key_of(files_dir, builder_source, host_files={"/usr/sbin/dropbear": "1" * 64}) != base
    builder_source.write_text("# builder v2\n")
    assert key_of(files_dir, builder_source) != base


def test_key_ignores_python_caches(files_dir: Path, builder_source: Path) -> None:
    before = key_of(files_dir, builder_source)
    (files_dir / "__pycache__").mkdir()
    (files_dir / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert key_of(files_dir, builder_source) == before


def test_the_real_guest_files_are_found_and_print_the_ready_marker() -> None:
    files = linux.image_files_dir()
    assert READY_MARKER in (files / "rootfs" / "init").read_text()
    assert (files / "modules.txt").is_file()


# --- locations and lookup -----------------------------------------------------------------------------


def test_default_cache_root_prefers_vmtest_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMTEST_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("VMTEST_CACHE")
    assert default_cache_root() == tmp_path / "xdg" / "vmtest"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "vmtest"


def test_find_linux_image_says_how_to_build_when_nothing_is_built(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        find_linux_image(tmp_path)
    assert "vmtest image build linux" in str(caught.value)


def test_find_linux_image_ignores_a_half_built_image(tmp_path: Path) -> None:
    linux_dir = tmp_path / "linux"
    (linux_dir / "abc").mkdir(parents=True)  # no image.json: never completed
    (linux_dir / "current").symlink_to("abc")
    with pytest.raises(ImageError, match="vmtest image build linux"):
        find_linux_image(tmp_path)


# --- the manifest -------------------------------------------------------------------------------------


def manifest_for(key: str) -> dict[str, Any]:
    return {
        "format": linux.MANIFEST_FORMAT,
        "key": key,
        "kernel_release": "6.1.0-1-amd64",
        "packages": PACKAGES,
        "built_at": "2024-01-01T00:00:00+00:00",
        "paths": {
            "kernel": "kernel/vmlinuz",
            "initrd": "initramfs.cpio.gz",
            "disk": "disk.qcow2",
            "client_key": "keys/client_ed25519",
            "headers": "headers-root/usr/src/linux-headers-6.1.0-1-amd64",
        },
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake",
        "ready_marker": READY_MARKER,
    }


def test_manifest_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "linux" / "k1"
    root.mkdir(parents=True)
    write_manifest(root, manifest_for("k1"))
    assert read_manifest(root) == manifest_for("k1")
    image = LinuxImage.load(root)
    assert image == LinuxImage(
        root=root,
        kernel=root / "kernel/vmlinuz",
        initrd=root / "initramfs.cpio.gz",
        disk=root / "disk.qcow2",
        client_key=root / "keys/client_ed25519",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake",
        kernel_release="6.1.0-1-amd64",
        headers=root / "headers-root/usr/src/linux-headers-6.1.0-1-amd64",
        ready_marker=READY_MARKER,
    )
    assert not list(root.glob(".*.tmp"))


def test_find_linux_image_follows_current(tmp_path: Path) -> None:
    for key in ("old", "new"):
        (tmp_path / "linux" / key).mkdir(parents=True)
        write_manifest(tmp_path / "linux" / key, manifest_for(key))
    linux._point_current(tmp_path / "linux", "old")
    linux._point_current(tmp_path / "linux", "new")
    image = find_linux_image(tmp_path)
    assert image.root == (tmp_path / "linux" / "new").resolve()


def test_load_rejects_missing_broken_and_foreign_manifests(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"no image\.json"):
        LinuxImage.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ImageError, match="cannot read"):
        LinuxImage.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": 999}))
    with pytest.raises(ImageError, match="unknown format"):
        LinuxImage.load(tmp_path)
    broken = manifest_for("k")
    del broken["paths"]["disk"]
    write_manifest(tmp_path, broken)
    with pytest.raises(ImageError, match="disk"):
        LinuxImage.load(tmp_path)


# --- pieces of the build ------------------------------------------------------------------------------


def write_modules_dep(moddir: Path) -> None:
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/lib/crc16.ko:\n"
        "kernel/fs/jbd2/jbd2.ko:\n"
        "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko: kernel/drivers/misc/pvpanic/pvpanic.ko\n"
        "kernel/drivers/misc/pvpanic/pvpanic.ko:\n"
    )
    (moddir / "modules.builtin").write_text("kernel/drivers/input/evdev.ko\n")


def test_module_load_order_puts_dependencies_first(tmp_path: Path) -> None:
    write_modules_dep(tmp_path / "mods")
    order = linux._module_load_order(tmp_path / "mods", ["pvpanic-mmio", "evdev", "ext4", "jbd2"])
    assert order == [
        "kernel/drivers/misc/pvpanic/pvpanic.ko",
        "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/ext4/ext4.ko",
    ]


def test_unknown_module_is_an_image_error(tmp_path: Path) -> None:
    write_modules_dep(tmp_path / "mods")
    with pytest.raises(ImageError, match="no_such_module"):
        linux._module_load_order(tmp_path / "mods", ["no_such_module"])


def test_wanted_modules_skips_comments(tmp_path: Path) -> None:
    listing = tmp_path / "modules.txt"
    listing.write_text("# heading\ne1000\n\ncrc32c_generic   # soft dependency\n")
    assert linux._wanted_modules(listing) == ["e1000", "crc32c_generic"]


def test_header_links_and_makefile_are_made_relative(tmp_path: Path) -> None:
    root = tmp_path / "headers-root"
    flavour = root / "usr/src/linux-headers-1-amd64"
    common = root / "usr/src/linux-headers-1-common"
    kbuild = root / "usr/lib/linux-kbuild-1"
    for directory in (flavour, common, kbuild / "scripts", root / "lib/modules/1-amd64"):
        directory.mkdir(parents=True)
    (common / "Makefile").write_text("# common\n")
    (flavour / "Makefile").write_text("include /usr/src/linux-headers-1-common/Makefile\n")
    (flavour / "scripts").symlink_to("../../lib/linux-kbuild-1/scripts")
    (root / "lib/modules/1-amd64/build").symlink_to("/usr/src/linux-headers-1-amd64")

    linux._relink_absolute_symlinks(root)
    linux._relativize_makefile_includes(flavour / "Makefile", root)
    linux._check_symlinks(root)

    build = root / "lib/modules/1-amd64/build"
    assert not os.path.isabs(os.readlink(build))
    assert build.resolve() == flavour.resolve()
    text = (flavour / "Makefile").read_text()
    assert "/usr/src" not in text
    assert text == "include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-1-common/Makefile\n"


def test_header_link_leaving_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "headers-root"
    root.mkdir()
    (root / "escape").symlink_to("../../outside")
    with pytest.raises(ImageError, match="leaves"):
        linux._check_symlinks(root)


def cpio_listing(archive: linux.Initramfs) -> str:
    buffer = io.BytesIO()
    archive.write(buffer)
    result = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=buffer.getvalue(), capture_output=True, check=True
    )
    return result.stdout.decode()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_initramfs_is_a_newc_archive_owned_by_root() -> None:
    archive = linux.Initramfs()
    archive.file("etc/passwd", b"root:*:0:0:root:/root:/bin/sh\n")
    archive.file("init", b"#!/bin/sh\n", 0o755)
    archive.symlink("bin/sh", "/bin/busybox")
    archive.char_device("dev/console", 5, 1)
    listing = cpio_listing(archive)
    assert "-rwxr-xr-x   1 root     root           10 " in listing
    assert "crw-------   1 root     root       5,   1 " in listing
    assert "bin/sh -> /bin/busybox" in listing
    assert listing.splitlines()[0].startswith("drwxr-xr-x")  # parents come first: "bin"


def test_gzip_output_is_reproducible() -> None:
    archive = linux.Initramfs()
    archive.file("a", b"x" * 100)
    outputs = []
    for _ in range(2):
        raw = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            archive.write(out)
        outputs.append(raw.getvalue())
    assert outputs[0] == outputs[1]


def test_missing_command_names_the_fix() -> None:
    with pytest.raises(ImageError) as caught:
        linux._run(["vmtest-no-such-command"], fix="install with `apt-get install nothing`")
    assert "`vmtest-no-such-command` is not installed" in str(caught.value)
    assert "apt-get install nothing" in str(caught.value)


def test_command_timeout_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="timed out"):
        linux._run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)


def test_failing_command_shows_its_output() -> None:
    with pytest.raises(ImageError, match="boom"):
        linux._run([sys.executable, "-c", "import sys; sys.exit('boom')"])


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg")
def test_missing_host_package_names_the_apt_get_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linux, "HOST_PACKAGES", ("vmtest-no-such-package",))
    with pytest.raises(ImageError) as caught:
        linux.resolve_host_packages()
    assert "apt-get install vmtest-no-such-package" in str(caught.value)


# --- the real build (cached after the first one) -----------------------------------------------------


@pytest.mark.e2e
def test_build_linux_image_produces_a_complete_image() -> None:
    image = build_linux_image()
    manifest = read_manifest(image.root)
    for rel in manifest["paths"].values():
        assert (image.root / rel).exists(), rel
    for path in (image.kernel, image.initrd, image.disk, image.client_key, image.headers):
        assert path.exists(), path
    assert (image.client_key.stat().st_mode & 0o777) == 0o600
    paramiko.Ed25519Key.from_private_key_file(str(image.client_key))
    assert (image.headers / "Makefile").is_file()
    assert image.host_key.startswith("ssh-ed25519 ")
    assert image.kernel_release == manifest["kernel_release"]
    assert image.ready_marker == READY_MARKER
    assert find_linux_image() == image
