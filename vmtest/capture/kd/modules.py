"""The target's loaded driver images, kept from load-symbols state changes (§6.1, §6.2)."""

from __future__ import annotations

from vmtest.capture.kd.constants import UNLOAD_ALL_BASE
from vmtest.capture.kd.events import KdModule

__all__ = ["ModuleTable", "module_name"]


def module_name(path: str) -> str:
    r"""The file name of an image path such as ``\SystemRoot\system32\drivers\mydrv.sys``."""
    return path.replace("/", "\\").rsplit("\\", 1)[-1]


class ModuleTable:
    """Loaded images by base address: one entry per image, so it is bounded by what the target loads."""

    def __init__(self) -> None:
        self._by_base: dict[int, KdModule] = {}

    def load(self, module: KdModule) -> None:
        """Record a load; an image loaded again at the same base replaces the old entry."""
        self._by_base[module.base] = module

    def unload(self, base: int) -> None:
        """Forget the image at ``base``; ``UNLOAD_ALL_BASE`` (sent before a reboot) forgets them all."""
        if base == UNLOAD_ALL_BASE:
            self._by_base.clear()
        else:
            self._by_base.pop(base, None)

    def snapshot(self) -> tuple[KdModule, ...]:
        """The loaded images, by base address."""
        return tuple(sorted(self._by_base.values(), key=lambda module: module.base))
