"""vmtest.resources: where the shipped folders are found (an installed wheel: tests/e2e/test_wheel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtest import resources
from vmtest.errors import ImageError
from vmtest.images.linux import image_files_dir
from vmtest.images.windows11.answer import windows_files_dir

SOURCE_TREE = Path(__file__).resolve().parents[2]
EVERY = (resources.LINUX_IMAGE_FILES, resources.WINDOWS_IMAGE_FILES, resources.LINUX_TEST_MODULE)


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for resource in EVERY:
        monkeypatch.delenv(resource.override, raising=False)


@pytest.mark.parametrize("resource", EVERY, ids=lambda r: r.relative)
def test_a_source_checkout_reads_the_top_level_folders(resource: resources.Resource) -> None:
    assert resource.path() == SOURCE_TREE / resource.relative


def test_the_folders_hold_what_their_readers_need() -> None:
    assert image_files_dir() == SOURCE_TREE / "images" / "linux"
    assert windows_files_dir() == SOURCE_TREE / "images" / "windows11"
    assert (resources.LINUX_TEST_MODULE.path() / "Kbuild").is_file()


@pytest.mark.parametrize("resource", EVERY, ids=lambda r: r.relative)
def test_the_environment_variable_overrides_the_folder(
    resource: resources.Resource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(resource.override, str(tmp_path))
    assert resource.path() == tmp_path


def test_a_missing_folder_is_named_with_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMTEST_LINUX_IMAGE_FILES", str(tmp_path))
    with pytest.raises(ImageError, match=r"\(expected rootfs/init there\).*VMTEST_LINUX_IMAGE_FILES"):
        image_files_dir()
    monkeypatch.setenv("VMTEST_WINDOWS_IMAGE_FILES", str(tmp_path))
    with pytest.raises(ImageError, match=r"missing autounattend.xml.in.*VMTEST_WINDOWS_IMAGE_FILES"):
        windows_files_dir()
