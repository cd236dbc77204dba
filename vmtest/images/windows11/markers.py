"""The markers the guest prints on COM2 during the build, and :class:`ProvisionLog`, which reads them.

Windows Setup's passes and the provisioning scripts report on COM2 in lines that start with a marker
word (see ``images/windows11/README.md``); the build follows the install through them, and what they
carry (the SSH host key, the Windows version, the licence) goes into the image's manifest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from vmtest.machine.profiles.windows11 import READY_MARKER

__all__ = ["MARKERS", "Markers", "ProvisionLog"]

_HOST_KEY = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]+=*$")


@dataclass(frozen=True)
class Markers:
    """The first word of each line the guest prints for vmtest on COM2 (see images/windows11/README.md)."""

    setup: str = "VMTEST-SETUP"  # + the answer-file pass: windowsPE, specialize, firstlogon
    step: str = "VMTEST-PROVISION-STEP"  # + "i/n: what"
    warning: str = "VMTEST-WARN"  # + text: something optional failed
    failed: str = "VMTEST-PROVISION-FAILED"  # + "what: why": provisioning stopped
    host_key: str = "VMTEST-HOSTKEY"  # + "ssh-ed25519 AAAA..."
    os_info: str = "VMTEST-OSINFO"  # + JSON
    licence: str = "VMTEST-LICENSE"  # + JSON
    done: str = "VMTEST-PROVISION-DONE"  # a shutdown is scheduled
    ready: str = READY_MARKER  # at every boot, once SSH/SMB listen


MARKERS = Markers()


@dataclass
class ProvisionLog:
    """What the guest reported on COM2 during the build; :meth:`feed` takes one line at a time."""

    passes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failure: str | None = None
    done: bool = False
    host_key: str | None = None
    os_info: dict[str, Any] | None = None
    licence: dict[str, Any] | None = None

    @property
    def last(self) -> str:
        """The latest progress, for error messages."""
        if self.steps:
            return f"provisioning step {self.steps[-1]}"
        if self.passes:
            return f"Setup pass {self.passes[-1]}"
        return "no marker yet (Setup never read the answer file, or is still copying files)"

    def feed(self, line: str) -> str | None:
        """Take one console line; return a note for people when it carried a marker, else None."""
        at = line.find("VMTEST-")
        if at < 0:
            return None
        word, _, rest = line[at:].strip().partition(" ")
        rest = rest.strip()
        if word == MARKERS.setup:
            self.passes.append(rest)
            return f"Setup: {rest} pass"
        if word == MARKERS.step:
            self.steps.append(rest)
            return f"provisioning {rest}"
        if word == MARKERS.warning:
            self.warnings.append(rest)
            return f"guest warning: {rest}"
        if word == MARKERS.failed:
            self.failure = rest or "(no reason given)"
            return f"provisioning FAILED: {self.failure}"
        if word == MARKERS.done:
            self.done = True
            return "provisioning done; the guest shuts down"
        if word == MARKERS.host_key:
            return self._host_key(rest)
        if word in (MARKERS.os_info, MARKERS.licence):
            return self._json(word, rest)
        return None

    def _host_key(self, text: str) -> str:
        if not _HOST_KEY.match(text):
            self.warnings.append(f"unreadable SSH host key line: {text[:200]}")
            return "guest printed an unreadable SSH host key"
        self.host_key = text
        return f"SSH host key: {text[:40]}..."

    def _json(self, word: str, text: str) -> str:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self.warnings.append(f"unreadable {word} line: {text[:200]}")
            return f"guest printed an unreadable {word} line"
        if word == MARKERS.os_info:
            self.os_info = value
            return f"Windows: {value.get('caption')} {value.get('version')}"
        self.licence = value
        return f"licence: {value.get('description')}, {value.get('grace_minutes')} minutes left"
