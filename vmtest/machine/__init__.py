"""The virtual machine: a QEMU process driven over QMP, its run directory, accelerator and profiles."""

from vmtest.machine.accel import KvmProbe, probe_kvm, resolve_accelerator
from vmtest.machine.machine import CRASH_EVENTS, Machine, ShutdownReport
from vmtest.machine.monitor import Monitor, QmpEvent
from vmtest.machine.profiles import LaunchContext, Profile, profile_for
from vmtest.machine.rundir import RunDirectory

__all__ = [
    "CRASH_EVENTS",
    "KvmProbe",
    "LaunchContext",
    "Machine",
    "Monitor",
    "Profile",
    "QmpEvent",
    "RunDirectory",
    "ShutdownReport",
    "probe_kvm",
    "profile_for",
    "resolve_accelerator",
]
