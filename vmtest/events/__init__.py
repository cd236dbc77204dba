"""Test-driver events: the protocol (drivers/PROTOCOL.md) and reading it from captured kernel output."""
