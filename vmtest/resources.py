"""The folders vmtest ships beside its code, and the one place that finds them.

The source tree keeps them at the top: ``images/linux`` (the Linux guest's init and configuration),
``images/windows11`` (the answer-file template and provisioning scripts) and
``drivers/linux-mutex-tests`` (the bundled Linux test module's source). The wheel carries the same
folders inside the package, under ``vmtest/_bundled/`` (see ``[tool.hatch.build.targets.wheel]`` in
``pyproject.toml``), and they are read from there through :mod:`importlib.resources`. An editable
install or a source checkout has no ``_bundled`` folder; there the folders are found beside the package,
at the top of the source tree.

Each folder has an environment variable that overrides where it is read from.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "LINUX_IMAGE_FILES",
    "LINUX_TEST_MODULE",
    "WINDOWS_IMAGE_FILES",
    "Resource",
]

BUNDLE = "_bundled"
"""The folder inside the installed package that holds the shipped folders."""

_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


@dataclass(frozen=True)
class Resource:
    """A folder vmtest ships: where it lives in the source tree, and the variable that overrides it."""

    relative: str
    """Its path in the source tree, which is also its path under ``vmtest/_bundled/`` in the wheel."""
    override: str
    """The environment variable that points at another copy of it."""

    def path(self) -> Path:
        """The folder on disk: the override, else the installed package's copy, else the source tree's.

        Returns where it should be even when it is missing there; callers check what they need in it
        and name :attr:`override` in their error.
        """
        explicit = os.environ.get(self.override)
        if explicit:
            return Path(explicit).expanduser()
        return _shipped(self.relative)


@functools.cache
def _shipped(relative: str) -> Path:
    bundled = resources.files("vmtest").joinpath(f"{BUNDLE}/{relative}")
    if bundled.is_dir():
        # A wheel installs as plain files, so as_file gives the folder itself; an install that is not
        # on disk (a zip, Python 3.12+) is copied out to a folder that lasts as long as this process.
        return _extracted.enter_context(resources.as_file(bundled))
    source_tree = Path(__file__).resolve().parent.parent / relative
    if source_tree.is_dir():
        return source_tree
    return Path(str(bundled))


LINUX_IMAGE_FILES = Resource("images/linux", "VMTEST_LINUX_IMAGE_FILES")
WINDOWS_IMAGE_FILES = Resource("images/windows11", "VMTEST_WINDOWS_IMAGE_FILES")
LINUX_TEST_MODULE = Resource("drivers/linux-mutex-tests", "VMTEST_LINUX_TEST_MODULE")
