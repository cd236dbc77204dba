"""Talking to the guest: readiness checks, and (later) command and file transports."""
