"""Kernel drivers in the guest: one lifecycle interface, a Windows and a Linux implementation."""
