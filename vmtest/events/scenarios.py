"""The wdk-mutex scenario catalogue (``drivers/PROTOCOL.md``, "Scenarios"): names shared by both drivers."""

from __future__ import annotations

__all__ = ["ALL_SCENARIOS", "DEFAULT_SCENARIOS", "NEGATIVE_CONTROLS"]

DEFAULT_SCENARIOS: tuple[str, ...] = (
    "kmutex_contention",
    "fast_mutex_contention",
    "grt_contention",
    "kmutex_recursion",
    "lock_order_consistent",
    "irql_errors",
    "grt_errors",
    "to_owned",
    "drop_safe_then_drop",
)
"""What ``vmtest run`` runs when no scenario is named."""

NEGATIVE_CONTROLS: tuple[str, ...] = ("neg_lock_inversion", "neg_wait_at_dispatch")
"""Scenarios that must make vmtest report a failure; run only when named."""

ALL_SCENARIOS: tuple[str, ...] = DEFAULT_SCENARIOS + NEGATIVE_CONTROLS
