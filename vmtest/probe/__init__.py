"""The guest probe: check every assumption vmtest makes about a guest, and record what the guest said.

``vmtest probe`` (and the first ``vmtest run`` on a new Windows image) runs one harmless check per
assumption over the configured transport and writes a fidelity report (``probe.json``, ``probe.md``):
the assumption, the expected observation, what was observed, whether it matches, and what to do.
"""

from vmtest.probe.model import Check, Observation, RawOutput, Status
from vmtest.probe.report import ProbeReport
from vmtest.probe.run import AssumptionsFailed, ensure_probed, probe_guest, run_probe

__all__ = [
    "AssumptionsFailed",
    "Check",
    "Observation",
    "ProbeReport",
    "RawOutput",
    "Status",
    "ensure_probed",
    "probe_guest",
    "run_probe",
]
