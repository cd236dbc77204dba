"""The module build cache against the real Linux guest's headers and the real Kbuild.

What Kbuild did is read from the build directory: a real build leaves its objects and ``.cmd`` files
there (``vmtest_hello.o``, ``.vmtest_hello.o.cmd``, ``modules.order``); a module taken from the cache
arrives alone. The module's ``.modinfo`` says which source it was built from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from vmtest.drivers.kbuild import build_module
from vmtest.images.linux import LinuxImage, build_linux_image

SOURCE = """\
#include <linux/module.h>
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest build-cache probe");
MODULE_VERSION("{version}");
static int __init hello_init(void) {{ return 0; }}
static void __exit hello_exit(void) {{ }}
module_init(hello_init);
module_exit(hello_exit);
"""
KBUILD_OUTPUTS = ("vmtest_hello.o", ".vmtest_hello.o.cmd", "modules.order")


@pytest.fixture(scope="module")
def image() -> LinuxImage:
    return build_linux_image()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "vmtest_hello"
    folder.mkdir()
    (folder / "Kbuild").write_text("obj-m := vmtest_hello.o\n")
    (folder / "vmtest_hello.c").write_text(SOURCE.format(version="1"))
    return folder


def kbuild_ran(build_dir: Path) -> list[str]:
    """The outputs of a real Kbuild run found in ``build_dir``."""
    return [name for name in KBUILD_OUTPUTS if (build_dir / name).exists()]


def built_from(module: Path) -> str:
    """The ``version=`` entry of the module's .modinfo (its entries are NUL-separated)."""
    data = module.read_bytes()
    start = data.index(b"\0version=") + 1
    return data[start : data.index(b"\0", start)].decode()


def test_real_kbuild_runs_once_per_source_and_again_after_a_change(
    tmp_path: Path, image: LinuxImage, source: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = build_module(source, image.headers, tmp_path / "run1" / "vmtest_hello", cache=cache)
    assert kbuild_ran(first.parent) == list(KBUILD_OUTPUTS)
    assert built_from(first) == "version=1"

    # Unchanged tree (a new mtime on the same bytes included): the module comes from the cache.
    os.utime(source / "vmtest_hello.c", (1, 1))
    with caplog.at_level(logging.INFO, logger="vmtest.drivers.kbuild"):
        again = build_module(source, image.headers, tmp_path / "run2" / "vmtest_hello", cache=cache)
    assert kbuild_ran(again.parent) == [], "an unchanged tree was built again"
    assert any("reusing it" in record.getMessage() for record in caplog.records)
    assert again.read_bytes() == first.read_bytes()

    # A source change: Kbuild runs, and the module is the new source's.
    (source / "vmtest_hello.c").write_text(SOURCE.format(version="2"))
    changed = build_module(source, image.headers, tmp_path / "run3" / "vmtest_hello", cache=cache)
    assert kbuild_ran(changed.parent) == list(KBUILD_OUTPUTS), "a changed source was not built"
    assert built_from(changed) == "version=2"
    assert not list(source.glob("*.o")), "the source tree is never built in"
