"""Capturing what the guest kernel prints: the KD host, the Linux console, DebugView logs."""

from vmtest.capture.source import Capture, CapturedLine, CaptureEvent, CaptureSource, printable

__all__ = ["Capture", "CaptureEvent", "CaptureSource", "CapturedLine", "printable"]
