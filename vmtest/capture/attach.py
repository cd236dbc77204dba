"""Choosing capture sources from the serial ports a machine has: the pipeline never asks the guest kind."""

from __future__ import annotations

from vmtest.capture.console import LinuxConsoleSource
from vmtest.capture.source import CaptureSource
from vmtest.machine.machine import Machine

__all__ = ["sources_for"]


def sources_for(machine: Machine) -> list[CaptureSource]:
    """The sources that read ``machine``'s ports: its text console, and (Windows) its KD link."""
    sources: list[CaptureSource] = []
    if "kd" in machine.serial_sockets:
        from vmtest.capture.kd_source import KdSource  # here: only Windows guests have a KD link

        sources.append(KdSource(machine.serial_sockets["kd"], machine.run_dir.path / "serial-kd.raw"))
    if "console" in machine.consoles:
        sources.append(LinuxConsoleSource(machine.consoles["console"]))
    return sources
