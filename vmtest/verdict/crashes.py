"""Guest crashes: one record type, built from QEMU's GUEST_PANICKED event or from console/KD text.

Sources:

* ``qemu-hv``: ``GUEST_PANICKED`` with Hyper-V crash information (``-cpu ...,hv-crash`` under KVM):
  ``arg1`` is the Windows stop code, ``arg2..arg5`` its four parameters.
* ``qemu-panic``: ``GUEST_PANICKED`` without it (pvpanic): a crash, but no code.
* ``kd``: the bugcheck banner in the debugger output (``*** Fatal System Error: 0x000000d1`` and its
  parameter line, ``Driver at fault: ...``), or WinDbg's ``!analyze`` text (``BugCheck D1, {...}``,
  ``IMAGE_NAME:``, ``Probably caused by :``).
* ``linux-panic``: ``Kernel panic - not syncing: ...``.
* ``linux-bug``: ``BUG: ...`` (``scheduling while atomic``, ``sleeping function called from invalid
  context``, a NULL dereference, a soft lockup), ``kernel BUG at ...``, ``general protection fault``.
  The driver at fault is the first ``[module]`` frame of the trace that follows.

Where the crash stands in the capture (``lineno``; None when it came from QEMU) decides which
scenario it fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vmtest.verdict.stop_codes import describe_stop, stop_code_name
from vmtest.verdict.verifier_rules import Violation, decode_violation

__all__ = ["Crash", "CrashScanner", "CrashSource", "crash_from_console", "crash_from_qmp"]

CrashSource = Literal["kd", "qemu-hv", "qemu-panic", "linux-panic", "linux-bug"]
WINDOWS_SOURCES = frozenset({"kd", "qemu-hv"})
_WINDOW = 300  # lines after a crash's first line in which its details (params, driver) may follow
_MAX_CRASHES = 100


@dataclass(frozen=True)
class Crash:
    """A guest crash: its source, stop code and parameters, driver at fault, message, screenshot, position.

    The stop code and parameters are Windows'; Linux crashes have a message instead.
    """

    source: CrashSource
    code: int | None = None
    params: tuple[int, ...] = ()
    driver: str = ""
    message: str = ""
    screenshot: str = ""
    lineno: int | None = None
    """The capture line that reported it; None: not in the capture (then it happened after its end)."""
    line: str = ""

    @property
    def name(self) -> str:
        """``DRIVER_IRQL_NOT_LESS_OR_EQUAL``, ``BUG: scheduling while atomic``, ``Kernel panic``, ..."""
        if self.code is not None and self.source in WINDOWS_SOURCES:
            return stop_code_name(self.code)
        if self.source == "linux-bug":
            head = self.message.split(":")[0]
            return f"kernel {head}" if head.startswith("BUG at") else f"BUG: {head}"
        if self.source == "linux-panic":
            return "Kernel panic"
        return "guest panic"

    @property
    def violation(self) -> Violation | None:
        """The Driver Verifier violation this bugcheck reports (0xC4 and its relatives), or None."""
        if self.code is None or self.source not in WINDOWS_SOURCES:
            return None
        return decode_violation(self.code, self.params)

    def describe(self) -> str:
        """One line for a report."""
        if self.code is not None and self.source in WINDOWS_SOURCES:
            text = f"bugcheck {describe_stop(self.code, self.params)}"
            violation = self.violation
            if violation is not None:
                text += f"; {violation.describe(self.params)}"
        elif self.source == "linux-panic":
            text = f"Linux kernel panic: {self.message}"
        elif self.source == "linux-bug":
            text = f"Linux kernel BUG: {self.message}"
        else:
            text = f"guest panic reported by QEMU without a stop code ({self.message or 'pvpanic'})"
        if self.driver:
            text += f"; driver at fault: {self.driver}"
        text += f" [{self.source}]"
        if self.screenshot:
            text += f"; screenshot: {self.screenshot}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (codes as hex strings, as a developer reads them)."""
        return {
            "source": self.source,
            "code": f"{self.code:#x}" if self.code is not None else None,
            "name": self.name,
            "params": [f"{value:#x}" for value in self.params],
            "driver": self.driver,
            "message": self.message,
            "screenshot": self.screenshot or None,
            "lineno": self.lineno,
            "verifier": _violation_dict(self.violation),
        }


def _violation_dict(violation: Violation | None) -> dict[str, Any] | None:
    if violation is None:
        return None
    subcode = f"{violation.subcode:#x}" if violation.subcode is not None else None
    return {"option": violation.option, "name": violation.name, "subcode": subcode}


def crash_from_qmp(data: Mapping[str, Any], *, screenshot: str = "") -> Crash:
    """The crash a QMP ``GUEST_PANICKED`` event reports (its ``data``: ``{"action": ..., "info": ...}``)."""
    action = str(data.get("action", ""))
    info = data.get("info")
    if isinstance(info, Mapping) and info.get("type") == "hyper-v":
        code = _as_int(info.get("arg1")) & 0xFFFFFFFF
        params = tuple(_as_int(info.get(f"arg{index}")) for index in range(2, 6))
        return Crash(
            "qemu-hv", code, params, message=f"GUEST_PANICKED, action {action}", screenshot=screenshot
        )
    kind = f"{info.get('type')} information, " if isinstance(info, Mapping) and info.get("type") else ""
    return Crash("qemu-panic", message=f"GUEST_PANICKED, {kind}action {action}", screenshot=screenshot)


def _as_int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return 0
    return 0


_PREFILTER = re.compile(
    r"Fatal System Error|BugCheck|BUGCHECK_|Driver at fault|Probably caused by|IMAGE_NAME:|"
    r"Kernel panic|BUG: |kernel BUG at|general protection fault|\] \S+\.sys - Address|^\*\*\*\s"
)
_FATAL = re.compile(r"\*\*\* Fatal System Error:\s*0x([0-9a-fA-F]+)")
_PARAMS = re.compile(r"\(\s*" + r"\s*,\s*".join([r"0x([0-9a-fA-F`]+)"] * 4) + r"\s*\)")
_ANALYZE = re.compile(r"\bBugCheck ([0-9A-Fa-f]+),\s*\{([^}]*)\}")
_CODE_LINE = re.compile(r"BUGCHECK_CODE:\s+([0-9A-Fa-f]+)")
_PARAM_LINE = re.compile(r"BUGCHECK_P([1-4]):\s+([0-9A-Fa-f`]+)")
_DRIVER = re.compile(r"Driver at fault:\s*(.*?)\.?\s*$")
_DRIVER_ROW = re.compile(r"^\*\*\*\s+(\S+\.sys)\b")
_CAUSED = re.compile(r"(?:Probably caused by\s*:|IMAGE_NAME:)\s*(\S+)")
_PANIC = re.compile(r"(?<!end )Kernel panic - not syncing:?\s*(.*)$")
_BUG = re.compile(r"(?:^|[\s\]])BUG: (.*)$|kernel (BUG at \S+)|(general protection fault.*)$")
_FRAME = re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+ \[([\w-]+)\]")


@dataclass
class _Open:
    """A crash whose details may still follow."""

    crash: Crash
    until: int
    params: dict[int, int] = field(default_factory=dict)

    def built(self) -> Crash:
        """The crash with the parameters found so far."""
        if not self.params:
            return self.crash
        return replace(self.crash, params=tuple(self.params.get(index, 0) for index in range(1, 5)))


class CrashScanner:
    """Finds crashes in captured text, line by line (feed it the lines that are not protocol events)."""

    def __init__(self) -> None:
        self._done: list[Crash] = []
        self._kd: _Open | None = None
        self._linux: _Open | None = None

    @property
    def crashes(self) -> list[Crash]:
        """Every crash found so far, in capture order."""
        pending = [item.built() for item in (self._kd, self._linux) if item is not None]
        return sorted(self._done + pending, key=lambda crash: crash.lineno or 0)

    def feed(self, line: str, lineno: int) -> None:
        """Look at one line."""
        for name in ("_kd", "_linux"):
            item: _Open | None = getattr(self, name)
            if item is not None and lineno > item.until:
                self._close(name)
        if (
            self._linux is not None
            and self._linux.crash.source == "linux-bug"
            and not self._linux.crash.driver
        ):
            frame = _FRAME.search(line)
            if frame is not None:
                self._linux.crash = replace(self._linux.crash, driver=frame.group(1))
        if self._kd is not None and len(self._kd.params) < 4:
            params = _PARAMS.search(line)  # the banner's second line has no keyword of its own
            if params is not None:
                self._kd.params.update((index, _hex(value)) for index, value in enumerate(params.groups(), 1))
        if not _PREFILTER.search(line):
            return
        self._windows(line, lineno)
        self._linux_line(line, lineno)

    def _windows(self, line: str, lineno: int) -> None:
        fatal = _FATAL.search(line) or _ANALYZE.search(line) or _CODE_LINE.search(line)
        if fatal is not None:
            code = int(fatal.group(1), 16)
            if self._kd is None or self._kd.crash.code != code:
                self._close("_kd")
                self._kd = _Open(Crash("kd", code, lineno=lineno, line=line.strip()), lineno + _WINDOW)
            if fatal.re is _ANALYZE:
                values = [_hex(part) for part in fatal.group(2).split(",")]
                self._kd.params.update(enumerate(values[:4], 1))
        if self._kd is None:
            return
        params = _PARAMS.search(line)
        if params is not None and len(self._kd.params) < 4:
            self._kd.params.update((index, _hex(value)) for index, value in enumerate(params.groups(), 1))
        one = _PARAM_LINE.search(line)
        if one is not None:
            self._kd.params[int(one.group(1))] = _hex(one.group(2))
        driver = _DRIVER.search(line) or _DRIVER_ROW.search(line) or _CAUSED.search(line)
        if driver is not None and driver.group(1) and not self._kd.crash.driver:
            self._kd.crash = replace(self._kd.crash, driver=driver.group(1).strip())

    def _linux_line(self, line: str, lineno: int) -> None:
        panic = _PANIC.search(line)
        if panic is not None:
            driver = self._linux.crash.driver if self._linux is not None else ""
            self._close("_linux")
            self._linux = _Open(
                Crash(
                    "linux-panic",
                    message=panic.group(1).strip(),
                    driver=driver,
                    lineno=lineno,
                    line=line.strip(),
                ),
                lineno + _WINDOW,
            )
            return
        bug = _BUG.search(line)
        if bug is not None:
            message = next(group for group in bug.groups() if group is not None).strip()
            if (
                self._linux is not None
                and self._linux.crash.source == "linux-bug"
                and lineno <= self._linux.until
            ):
                return  # an oops inside the report of the BUG before it
            self._close("_linux")
            self._linux = _Open(
                Crash("linux-bug", message=message, lineno=lineno, line=line.strip()), lineno + 60
            )

    def _close(self, name: str) -> None:
        item: _Open | None = getattr(self, name)
        if item is None:
            return
        setattr(self, name, None)
        if len(self._done) < _MAX_CRASHES:
            self._done.append(item.built())


def _hex(text: str) -> int:
    text = text.strip().replace("`", "")
    try:
        return int(text, 16)
    except ValueError:
        return 0


def crash_from_console(lines: Iterable[str]) -> list[Crash]:
    """Every crash reported in ``lines`` (console or KD text), numbered from line 1."""
    scanner = CrashScanner()
    for lineno, line in enumerate(lines, 1):
        scanner.feed(line, lineno)
    return scanner.crashes
