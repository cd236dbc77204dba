"""vmtest installed as a package: the sdist and the wheel carry what it reads, and the wheel runs.

The wheel is built from the sdist and installed into a fresh virtualenv (``installed_vmtest`` in
conftest.py); every command here runs from an empty directory, so nothing of the source tree is found.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import vmtest
from vmtest.images.linux import build_linux_image, resolve_inputs

if TYPE_CHECKING:
    from conftest import Dist, InstalledVmtest

pytestmark = pytest.mark.e2e

SOURCE_TREE = Path(__file__).resolve().parents[2]

RESOURCE_FOLDERS = ("images/linux", "images/windows11", "drivers/linux-mutex-tests")
BUNDLE = "vmtest/_bundled/"
SCENARIOS = "kmutex_contention,irql_errors"


def tracked_files(folder: str) -> set[str]:
    """The files of ``folder`` that git tracks in the source tree (what a release carries)."""
    listing = subprocess.run(
        ["git", "-C", str(SOURCE_TREE), "ls-files", "--", folder],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listing.stdout.split())


def sdist_files(dist: Dist) -> set[str]:
    with tarfile.open(dist.sdist) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    return {name.split("/", 1)[1] for name in names}


def wheel_bundle_files(dist: Dist) -> set[str]:
    with zipfile.ZipFile(dist.wheel) as archive:
        return {name.removeprefix(BUNDLE) for name in archive.namelist() if name.startswith(BUNDLE)}


@pytest.mark.parametrize("folder", RESOURCE_FOLDERS)
def test_the_sdist_and_the_wheel_carry_the_whole_folder(vmtest_dist: Dist, folder: str) -> None:
    expected = tracked_files(folder)
    assert expected, f"git tracks nothing in {folder}"
    assert {name for name in sdist_files(vmtest_dist) if name.startswith(f"{folder}/")} == expected
    assert {name for name in wheel_bundle_files(vmtest_dist) if name.startswith(f"{folder}/")} == expected


def test_the_guest_init_stays_executable_in_the_wheel(vmtest_dist: Dist) -> None:
    with zipfile.ZipFile(vmtest_dist.wheel) as archive:
        mode = archive.getinfo(f"{BUNDLE}images/linux/rootfs/init").external_attr >> 16
    assert mode & 0o111


def test_version_is_the_package_version(installed_vmtest: InstalledVmtest, tmp_path: Path) -> None:
    result = installed_vmtest.run("vmtest", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vmtest {vmtest.__version__}"
    assert installed_vmtest.dist.wheel.name.startswith(f"vmtest-{vmtest.__version__}-")


def test_the_installed_package_reads_its_own_folders(
    installed_vmtest: InstalledVmtest, tmp_path: Path
) -> None:
    code = (
        "from vmtest import resources as r\n"
        "for f in (r.LINUX_IMAGE_FILES, r.WINDOWS_IMAGE_FILES, r.LINUX_TEST_MODULE): print(f.path())\n"
    )
    result = installed_vmtest.run("python", "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bundle = installed_vmtest.site_packages / "vmtest" / "_bundled"
    assert result.stdout.split() == [str(bundle / folder) for folder in RESOURCE_FOLDERS]


def test_image_build_linux_hashes_the_same_inputs_as_the_source_tree(
    installed_vmtest: InstalledVmtest, tmp_path: Path
) -> None:
    build_linux_image()  # the source tree's image, in the same cache
    key = resolve_inputs().key
    result = installed_vmtest.run("vmtest", "image", "build", "linux", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Linux image {key} is already built" in result.stderr, result.stderr


def test_run_passes_from_the_installed_wheel(installed_vmtest: InstalledVmtest, tmp_path: Path) -> None:
    built = installed_vmtest.run("vmtest", "image", "build", "linux", cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    result = installed_vmtest.run(
        "vmtest", "run", "--scenario", SCENARIOS, "--artifacts", "runs", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    verdicts = json.loads((run_dir / "verdicts.json").read_text())
    assert verdicts["status"] == "passed", verdicts
    built_sources = {path.name for path in (run_dir / "build" / "linux-mutex-tests").iterdir()}
    assert {"Kbuild", "main.c", "scenarios.c"} <= built_sources


def test_windows11_dry_run_reads_the_installed_answer_files(
    installed_vmtest: InstalledVmtest, tmp_path: Path
) -> None:
    (tmp_path / "Win11_Eval.iso").write_bytes(b"not an ISO: a dry run only needs the path")
    env = installed_vmtest.env(VMTEST_CACHE=str(tmp_path / "cache"), VMTEST_WINDOWS_PASSWORD="dry-run-only")
    command = ["vmtest", "image", "build", "windows11", "--dry-run", "--iso", "Win11_Eval.iso"]
    result = installed_vmtest.run(*command, "--artifacts", "runs", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    plan = json.loads((run_dir / "plan.json").read_text())
    sources = {entry["path"]: entry["source"] for entry in plan["answer_files"]}
    bundle = installed_vmtest.site_packages / "vmtest" / "_bundled" / "images" / "windows11"
    assert sources["vmtest/provision.ps1"] == str(bundle / "provision.ps1")
