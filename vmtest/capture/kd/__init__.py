"""The host side of the Windows kernel debugger serial protocol (KDCOM), in pure Python.

vmtest speaks KD on a Windows guest's COM port in place of WinDbg, to capture every DbgPrint from the
first instruction of the boot to a bugcheck with nothing installed in the guest. Layers, bottom up:

* :mod:`~vmtest.capture.kd.constants`: every number of the protocol, cited to the spec;
* :mod:`~vmtest.capture.kd.framing`: the incremental frame decoder and the packet encoders;
* :mod:`~vmtest.capture.kd.packets`: the payloads (debug I/O, state changes, manipulate, file I/O);
* :mod:`~vmtest.capture.kd.link`: ACKs, packet ids, duplicates, RESEND/RESET, retransmission;
* :mod:`~vmtest.capture.kd.host`: :class:`KdHost`, which keeps the guest running and reports events;
* :mod:`~vmtest.capture.kd.cli`: :func:`run_kd`, the live capture behind ``vmtest kd``.
"""

from vmtest.capture.kd.cli import parse_address, run_kd
from vmtest.capture.kd.errors import KdConnectError, KdError
from vmtest.capture.kd.events import (
    KdBugcheck,
    KdEvent,
    KdLinkStats,
    KdModule,
    KdModuleLoad,
    KdPrint,
    KdStalled,
)
from vmtest.capture.kd.host import KdHost
from vmtest.capture.kd.options import KdOptions

__all__ = [
    "KdBugcheck",
    "KdConnectError",
    "KdError",
    "KdEvent",
    "KdHost",
    "KdLinkStats",
    "KdModule",
    "KdModuleLoad",
    "KdOptions",
    "KdPrint",
    "KdStalled",
    "parse_address",
    "run_kd",
]
