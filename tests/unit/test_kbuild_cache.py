"""The module build cache: same sources, headers and tools -> the module built before; any change -> a build.

The "headers" here are a real Makefile run by the real ``make`` that stands in for Kbuild: it counts its
runs and turns ``hello.c`` into ``hello.ko``, so the cache's decisions are seen by what make did.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtest.drivers.kbuild import KEPT_BUILDS, build_key, build_module

FAKE_KBUILD = """\
modules:
\techo run >> $(CURDIR)/runs
\tcat $(M)/hello.c > $(M)/hello.ko
"""


@pytest.fixture
def headers(tmp_path: Path) -> Path:
    folder = tmp_path / "headers"
    folder.mkdir()
    (folder / "Makefile").write_text(FAKE_KBUILD)
    return folder


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "hello"
    folder.mkdir()
    (folder / "Kbuild").write_text("obj-m := hello.o\n")
    (folder / "hello.c").write_text("int version = 1;\n")
    return folder


def runs(headers: Path) -> int:
    path = headers / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_same_sources_reuse_the_module_and_a_change_builds_again(
    tmp_path: Path, headers: Path, source: Path
) -> None:
    cache = tmp_path / "cache"
    first = build_module(source, headers, tmp_path / "run1" / "hello", cache=cache)
    again = build_module(source, headers, tmp_path / "run2" / "hello", cache=cache)
    assert runs(headers) == 1
    assert again == tmp_path / "run2" / "hello" / "hello.ko"  # the run directory has the module it loads
    assert again.read_bytes() == first.read_bytes()
    (source / "hello.c").write_text("int version = 2;\n")
    changed = build_module(source, headers, tmp_path / "run3" / "hello", cache=cache)
    assert runs(headers) == 2
    assert changed.read_text() == "int version = 2;\n"
    assert not (source / "hello.ko").exists()  # the source tree is never built in


def test_the_key_follows_file_names_contents_and_headers(tmp_path: Path, headers: Path, source: Path) -> None:
    key = build_key(source, headers)
    assert build_key(source, headers) == key
    (source / "extra.h").write_text("")
    with_header = build_key(source, headers)
    assert with_header != key
    other_headers = tmp_path / "other-headers"
    other_headers.mkdir()
    (other_headers / "Makefile").write_text(FAKE_KBUILD)
    assert build_key(source, other_headers) != with_header


def test_without_a_cache_every_call_builds(tmp_path: Path, headers: Path, source: Path) -> None:
    build_module(source, headers, tmp_path / "a" / "hello")
    build_module(source, headers, tmp_path / "b" / "hello")
    assert runs(headers) == 2


def test_the_cache_keeps_only_the_newest_builds(tmp_path: Path, headers: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    for version in range(KEPT_BUILDS + 3):
        (source / "hello.c").write_text(f"int version = {version};\n")
        build_module(source, headers, tmp_path / f"run{version}" / "hello", cache=cache)
    assert len(list(cache.iterdir())) == KEPT_BUILDS
    build_module(source, headers, tmp_path / "last" / "hello", cache=cache)  # the newest is still there
    assert runs(headers) == KEPT_BUILDS + 3
