r"""The bugcheck banner in DbgPrint output (§5.7A, §12.6): code, four parameters, driver at fault.

Windows prints ``"\n*** Fatal System Error: 0x%08lx\n"``, 23 spaces, ``"(0x%p,0x%p,0x%p,0x%p)\n\n"``,
then maybe ``"Driver at fault: %s.\n"`` in a separate print, and then stops on the bugcheck break. The
watcher reads complete lines, case-insensitively, and hands the banner to the next breakpoint stop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Banner", "BannerWatcher"]

_FATAL = re.compile(r"\*\*\* Fatal System Error:\s*0x([0-9a-f]+)", re.IGNORECASE)
_PARAMS = re.compile(r"\(\s*" + r"\s*,\s*".join([r"0x([0-9a-f]+)"] * 4) + r"\s*\)", re.IGNORECASE)
_DRIVER = re.compile(r"Driver at fault:\s*(.*?)\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Banner:
    """What the banner said; ``parameters`` is empty when the parameter line never came."""

    code: int
    parameters: tuple[int, ...]
    driver: str | None


class BannerWatcher:
    """Follows printed lines; keeps the last banner until a breakpoint stop takes it."""

    def __init__(self) -> None:
        self._banner: Banner | None = None
        self._want_parameters = False

    @property
    def pending(self) -> bool:
        """True when a banner was printed and no stop has taken it yet."""
        return self._banner is not None

    def feed(self, line: str) -> None:
        """Look at one complete line."""
        fatal = _FATAL.search(line)
        if fatal is not None:
            self._banner = Banner(int(fatal.group(1), 16), (), None)
            self._want_parameters = True
            line = line[fatal.end() :]  # the parameters may follow on the same line
        if self._banner is None:
            return
        if self._want_parameters:
            params = _PARAMS.search(line)
            if params is not None:
                values = tuple(int(value, 16) for value in params.groups())
                self._banner = Banner(self._banner.code, values, self._banner.driver)
                self._want_parameters = False
                return
            if line.strip() and fatal is None:
                self._want_parameters = False  # something else came: the parameter line is missing
        driver = _DRIVER.search(line)
        if driver is not None and driver.group(1):
            self._banner = Banner(self._banner.code, self._banner.parameters, driver.group(1))

    def take(self) -> Banner | None:
        """The pending banner, which is then forgotten."""
        banner, self._banner = self._banner, None
        self._want_parameters = False
        return banner
