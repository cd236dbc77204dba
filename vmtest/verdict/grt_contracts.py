"""What the global registry ``Grt`` of wdk-mutex returns, as data, and a model that predicts each call.

``GRT_RESULTS`` lists every result the API notes document per operation (wdk-mutex-api.md, "Grt";
0xflux/wdk-mutex src/grt.rs). ``GrtModel`` follows the registry's state through the calls (a driver
load starts with no registry; ``init`` makes an empty one; ``register*`` add labels; ``destroy`` drops
it) and narrows that list to what the next call must return. The label is the call's ``m`` field and
the mutex kind its ``k``. Where the model cannot know (a capture that starts mid-run, a get whose type
parameter is not printed), it accepts every documented result that the state allows.

``GRT_ERRORS_STEPS`` is what the ``grt_errors`` scenario must show, in this order
(``drivers/PROTOCOL.md``, "Scenarios").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["GRT_ERRORS_SCENARIO", "GRT_ERRORS_STEPS", "GRT_OPS", "GRT_RESULTS", "GrtModel", "GrtStep"]

_MUTEX_ERRORS = frozenset({"IrqlTooHigh", "PagedPoolAllocFailed", "DriverMutexError"})
"""``register*`` create the mutex and pass on its ``new`` errors (``GrtError::DriverMutexError(e)``)."""

GRT_RESULTS: Mapping[str, frozenset[str]] = {
    "grt_init": frozenset({"Ok", "GrtAlreadyExists"}),
    "grt_register": frozenset({"Ok", "GrtIsNull"}) | _MUTEX_ERRORS,
    "grt_register_checked": frozenset({"Ok", "GrtIsNull", "KeyExists"}) | _MUTEX_ERRORS,
    "grt_get": frozenset({"Ok", "GrtIsNull", "GrtIsEmpty", "KeyNotFound", "DowncastError"}),
    "grt_destroy": frozenset({"Ok", "GrtIsNull"}),
}
"""Documented results per operation (API notes "Grt")."""
GRT_OPS = frozenset(GRT_RESULTS)


@dataclass(frozen=True)
class GrtStep:
    """One thing ``grt_errors`` must show: a call of ``op`` returning one of ``results``."""

    what: str
    op: str
    results: frozenset[str]


GRT_ERRORS_SCENARIO = "grt_errors"
GRT_ERRORS_STEPS: tuple[GrtStep, ...] = (
    GrtStep("double init", "grt_init", frozenset({"GrtAlreadyExists"})),
    GrtStep("get before registration", "grt_get", frozenset({"GrtIsEmpty", "KeyNotFound"})),
    GrtStep("unknown key", "grt_get", frozenset({"KeyNotFound"})),
    GrtStep("wrong type", "grt_get", frozenset({"DowncastError"})),
    GrtStep("checked double registration", "grt_register_checked", frozenset({"KeyExists"})),
    GrtStep("get after destroy", "grt_get", frozenset({"GrtIsNull"})),
)


class GrtModel:
    """The registry as the calls so far imply: whether it exists, and which labels hold which kind."""

    def __init__(self) -> None:
        self.exists: bool | None = None
        """None until a driver load starts or a call tells."""
        self.labels: dict[str, str] = {}
        self.complete = False
        """Whether ``labels`` is every label registered (known since the registry was created)."""

    def reset(self) -> None:
        """A driver load starts: no registry."""
        self._empty(exists=False)

    def expected(self, op: str, label: str, kind: str) -> frozenset[str]:
        """What a call of ``op`` for ``label`` (of ``kind``; "" when not printed) must return now."""
        if self.exists is None:
            return GRT_RESULTS[op]
        if op == "grt_init":
            return frozenset({"GrtAlreadyExists" if self.exists else "Ok"})
        if not self.exists:
            return frozenset({"GrtIsNull"})
        if op == "grt_destroy":
            return frozenset({"Ok"})
        if op == "grt_register":
            return frozenset({"Ok"}) | _MUTEX_ERRORS
        known = self.labels.get(label)
        if op == "grt_register_checked":
            if known is not None:
                return frozenset({"KeyExists"})
            return (frozenset({"Ok"}) if self.complete else frozenset({"Ok", "KeyExists"})) | _MUTEX_ERRORS
        return self._get(label, kind, known)

    def apply(self, op: str, label: str, kind: str, result: str) -> None:
        """Update the state with a call's actual result (trusting it where the model could not know)."""
        if result == "GrtIsNull" or (op == "grt_destroy" and result == "Ok"):
            self._empty(exists=False)
        elif op == "grt_init" and result == "Ok":
            self._empty(exists=True)
        elif result == "GrtIsEmpty":
            self._empty(exists=True)
        elif result in ("GrtAlreadyExists", "KeyNotFound"):
            self._exists()
        elif result in ("Ok", "KeyExists", "DowncastError") and label:
            self._exists()
            if op.startswith("grt_register") and result == "Ok":
                self.labels[label] = kind
            else:
                self.labels.setdefault(label, kind if result != "DowncastError" else "")

    def _get(self, label: str, kind: str, known: str | None) -> frozenset[str]:
        if self.complete and not self.labels:
            return frozenset({"GrtIsEmpty"})
        if not label:
            return GRT_RESULTS["grt_get"] - {"GrtIsNull"}
        if known is None:
            if self.complete:
                return frozenset({"KeyNotFound"})
            return frozenset({"Ok", "KeyNotFound", "DowncastError", "GrtIsEmpty"})
        if kind and known and kind != known:
            return frozenset({"DowncastError"})
        return frozenset({"Ok", "DowncastError"})  # the type parameter is not printed

    def _empty(self, *, exists: bool) -> None:
        self.exists = exists
        self.labels = {}
        self.complete = True

    def _exists(self) -> None:
        if not self.exists:  # created by calls this capture does not show: its labels are unknown
            self.exists = True
            self.labels = {}
            self.complete = False
