"""Windows bugchecks as QEMU reports them, and merged with what the kernel-debugger host saw.

With ``-cpu host,hv-crash`` on a KVM that offers Hyper-V enlightenments, Windows writes its stop code
and four parameters to the Hyper-V crash MSRs on a bugcheck, and QEMU reports them in the
``GUEST_PANICKED`` event: ``{"action": "pause", "info": {"type": "hyper-v", "arg1": code,
"arg2".."arg5": parameters}}`` (QAPI ``GuestPanicInformationHyperV``; python-apis.md §2.3). Without
Hyper-V support (or under TCG) no such event comes; a pvpanic driver gives a ``GUEST_PANICKED`` with no
``info``, or a ``GUEST_CRASHLOADED``, and neither carries the code. ``GUEST_CRASHLOADED`` says that a dump
*will* be written, not that it was: QEMU emits it for pvpanic's CRASH_LOADED bit, "a guest panic has
happened and will be handled by the guest; the host should record it or report it, but should not affect
the execution of the guest" (QEMU ``docs/specs/pvpanic.rst``; ``qapi/run-state.json`` GUEST_CRASHLOADED,
https://www.qemu.org/docs/master/specs/pvpanic.html).

The KD host (``vmtest.capture.kd``) sees the bugcheck banner, the driver Windows blamed and the loaded
modules. :func:`merge_bugchecks` combines both views: QEMU's code and parameters win (read from the
crash MSRs Windows wrote), the KD host adds the driver and modules, and a disagreement is noted.
Stop-code names are not this layer's business: the caller passes ``name_for(code)`` (the stop-code table
lives in ``vmtest.verdict.stop_codes``, above ``machine/``; ``known_stop_code_name`` there fits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Bugcheck",
    "KdBugcheckLike",
    "QmpEventLike",
    "bugcheck_from_qmp_event",
    "merge_bugchecks",
]

PANIC_EVENT = "GUEST_PANICKED"
CRASHLOADED_EVENT = "GUEST_CRASHLOADED"
HYPERV_INFO = "hyper-v"
_U64 = (1 << 64) - 1

NameFor = Callable[[int], str | None]


def _no_name(code: int) -> str | None:
    """The default ``name_for``: no names (the caller knows the stop-code table, this layer does not)."""
    del code
    return None


class QmpEventLike(Protocol):
    """What this module reads from a QMP event (``vmtest.machine.monitor.QmpEvent`` has both)."""

    @property
    def name(self) -> str:
        """The event name, e.g. ``GUEST_PANICKED``."""

    @property
    def data(self) -> Mapping[str, Any]:
        """The event's ``data`` member."""


class _ModuleLike(Protocol):
    @property
    def name(self) -> str:
        """The image's file name, e.g. ``mydrv.sys``."""


class KdBugcheckLike(Protocol):
    """What the merge reads from the KD host's bugcheck (``vmtest.capture.kd.events.KdBugcheck``)."""

    @property
    def code(self) -> int | None:
        """The stop code, if the KD host learnt it."""

    @property
    def parameters(self) -> Sequence[int]:
        """The four parameters, or none."""

    @property
    def driver(self) -> str | None:
        """The driver Windows blamed ("Driver at fault"), if it said."""

    @property
    def modules(self) -> Sequence[_ModuleLike]:
        """The images loaded at the time."""


@dataclass(frozen=True)
class Bugcheck:
    """One guest crash: the stop code and parameters when known, and where the facts came from.

    ``code`` is None when only a pvpanic notification arrived (no code is carried). ``sources`` lists
    ``"qmp"`` and/or ``"kd"``. ``dump_pending`` is True for ``GUEST_CRASHLOADED``: the guest announced that
    it handles the crash itself (writes its dump); whether the dump was finished is not known from QEMU.
    ``notes`` explains gaps and disagreements in plain words.
    """

    code: int | None
    parameters: tuple[int, ...] = ()
    name: str | None = None
    driver: str | None = None
    modules: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    event: str | None = None
    action: str | None = None
    dump_pending: bool = False
    notes: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line: ``stop code 0x000000D1 DRIVER_IRQL_NOT_LESS_OR_EQUAL (0x..., ...) in mydrv.sys``."""
        if self.code is None:
            what = "crash dump announced, stop code unknown" if self.dump_pending else "stop code unknown"
        else:
            what = f"stop code 0x{self.code:08X}"
        if self.name:
            what += f" {self.name}"
        if self.parameters:
            what += f" ({', '.join(f'0x{p:016X}' for p in self.parameters)})"
        if self.driver:
            what += f" in {self.driver}"
        return what

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (numbers as hex strings, as people read stop codes)."""
        return {
            "code": None if self.code is None else f"0x{self.code:08X}",
            "name": self.name,
            "parameters": [f"0x{p:016X}" for p in self.parameters],
            "driver": self.driver,
            "modules": list(self.modules),
            "sources": list(self.sources),
            "event": self.event,
            "action": self.action,
            "dump_pending": self.dump_pending,
            "notes": list(self.notes),
        }


def _u64(value: object) -> int | None:
    """A QAPI uint64 from JSON: an int (bool is not one), kept to 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value & _U64


def _name(code: int | None, name_for: NameFor) -> str | None:
    return None if code is None else name_for(code)


def bugcheck_from_qmp_event(event: QmpEventLike, *, name_for: NameFor = _no_name) -> Bugcheck | None:
    """The bugcheck a ``GUEST_PANICKED`` or ``GUEST_CRASHLOADED`` event reports; None for other events."""
    data = event.data
    action = data.get("action")
    action = action if isinstance(action, str) else None
    if event.name == CRASHLOADED_EVENT:
        return Bugcheck(
            code=None,
            sources=("qmp",),
            event=event.name,
            action=action,
            dump_pending=True,
            notes=(
                "the guest announced it is handling the crash (pvpanic CRASH_LOADED): a dump will be "
                "written, not that it was; QEMU does not carry the stop code",
            ),
        )
    if event.name != PANIC_EVENT:
        return None
    info = data.get("info")
    if not isinstance(info, Mapping):
        return Bugcheck(
            code=None,
            sources=("qmp",),
            event=event.name,
            action=action,
            notes=(
                "QEMU reported a panic without crash information (pvpanic, or hv-crash unavailable): "
                "the stop code must come from the kernel debugger",
            ),
        )
    if info.get("type") != HYPERV_INFO:
        return Bugcheck(
            code=None,
            sources=("qmp",),
            event=event.name,
            action=action,
            notes=(f"QEMU reported crash information of type {info.get('type')!r}, not hyper-v",),
        )
    args = [_u64(info.get(f"arg{index}")) for index in range(1, 6)]
    code, parameters = args[0], args[1:]
    notes: list[str] = []
    if code is None:
        notes.append("the hyper-v crash information has no arg1 (stop code)")
    known = tuple(p for p in parameters if p is not None)
    if len(known) != len(parameters):
        notes.append("the hyper-v crash information lacks some of arg2..arg5 (parameters)")
        known = ()
    return Bugcheck(
        code=code,
        parameters=known,
        name=_name(code, name_for),
        sources=("qmp",),
        event=event.name,
        action=action,
        notes=tuple(notes),
    )


def merge_bugchecks(
    qmp: Bugcheck | None, kd: KdBugcheckLike | None, *, name_for: NameFor = _no_name
) -> Bugcheck | None:
    """One bugcheck from QEMU's report and the KD host's; None if neither saw one.

    QEMU's code and parameters are kept when it has them (they are what Windows wrote to the crash
    MSRs); the KD host fills in what QEMU lacks and adds the blamed driver and the loaded modules.
    """
    if kd is None:
        if qmp is None:
            return None
        return _with_name(qmp, name_for)
    kd_parameters = tuple(kd.parameters)
    if qmp is None:
        return Bugcheck(
            code=kd.code,
            parameters=kd_parameters,
            name=_name(kd.code, name_for),
            driver=kd.driver,
            modules=tuple(module.name for module in kd.modules),
            sources=("kd",),
        )
    notes = list(qmp.notes)
    code = qmp.code if qmp.code is not None else kd.code
    if qmp.code is not None and kd.code is not None and qmp.code != kd.code:
        notes.append(
            f"QEMU reported stop code 0x{qmp.code:08X} but the kernel debugger saw 0x{kd.code:08X}; "
            "QEMU's (the crash MSRs) is kept"
        )
    parameters = qmp.parameters or kd_parameters
    if qmp.parameters and kd_parameters and qmp.parameters != kd_parameters:
        notes.append("QEMU and the kernel debugger disagree on the parameters; QEMU's are kept")
    return Bugcheck(
        code=code,
        parameters=parameters,
        name=_name(code, name_for) or qmp.name,
        driver=kd.driver,
        modules=tuple(module.name for module in kd.modules),
        sources=("qmp", "kd"),
        event=qmp.event,
        action=qmp.action,
        dump_pending=qmp.dump_pending,
        notes=tuple(notes),
    )


def _with_name(bugcheck: Bugcheck, name_for: NameFor) -> Bugcheck:
    name = _name(bugcheck.code, name_for)
    return bugcheck if name is None else dataclasses.replace(bugcheck, name=name)
