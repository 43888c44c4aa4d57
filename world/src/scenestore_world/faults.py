"""Fault injection for the offline world's HTTP servers: what to break, and how often.

A :class:`FaultPlan` says which share of requests fails in which way; a :class:`FaultInjector`
turns a plan into one decision per request with a seeded RNG, so a run with the same plan and
the same sequence of requests injects the same faults. Both are free of I/O: the servers in
:mod:`scenestore_world.http` and :mod:`scenestore_world.proxy` carry the decisions out.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import math
import random
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

from scenestore.errors import InvalidRequestError


class FaultKind(enum.StrEnum):
    """The ways a request can fail; each value is the name of its :class:`FaultPlan` field."""

    STATUS_503 = "status_503"
    """Answer ``503 Service Unavailable`` with ``Retry-After``."""
    STATUS_429 = "status_429"
    """Answer ``429 Too Many Requests`` with ``Retry-After``."""
    RESET_MID_BODY = "reset_mid_body"
    """Send the headers and half the body, then reset the connection (RST)."""
    TRUNCATE = "truncate"
    """Declare the full ``Content-Length``, send half the body, then close (FIN)."""


_FRACTIONS = tuple(FaultKind)


@dataclass(frozen=True)
class FaultPlan:
    """Which share of requests fails, and how. All fractions default to 0: no faults.

    The fractions are shares of the requests whose path matches ``path_glob``; they are
    mutually exclusive (one request suffers at most one of them), so they must sum to <= 1.

    Attributes:
        status_503: Share of requests answered ``503`` with a ``Retry-After`` header.
        status_429: Share of requests answered ``429`` with a ``Retry-After`` header.
        reset_mid_body: Share of requests whose answer stops after half the body with a TCP
            reset; the client sees a connection error.
        truncate: Share of requests whose answer declares the full ``Content-Length`` but
            stops after half the body with a normal close; the client sees an incomplete read.
        latency_s: Seconds added before answering every matching request (faulted or not).
        retry_after: Value of the ``Retry-After`` header (seconds) on 503 and 429 answers;
            None sends no header.
        path_glob: ``fnmatch`` pattern over the request path without the leading ``/`` and
            without the query (``"S2B_.../B04.tif"``, ``"search"``); ``*`` also matches ``/``.
        seed: Seed of the RNG that picks the faulted requests.
        max_faults: Stop injecting after this many faults (latency continues); None: no cap.
    """

    status_503: float = 0.0
    status_429: float = 0.0
    reset_mid_body: float = 0.0
    truncate: float = 0.0
    latency_s: float = 0.0
    retry_after: int | None = 0
    path_glob: str = "*"
    seed: int = 0
    max_faults: int | None = None

    def __post_init__(self) -> None:
        for kind in _FRACTIONS:
            share = getattr(self, kind.value)
            if isinstance(share, bool) or not isinstance(share, int | float):
                raise InvalidRequestError(
                    f"Fault fraction {kind.value}={share!r} is not a number; "
                    "expected a fraction between 0 and 1."
                )
            if not 0.0 <= share <= 1.0:
                raise InvalidRequestError(
                    f"Fault fraction {kind.value}={share!r} is out of range; "
                    "expected a fraction between 0 and 1."
                )
        total = sum(getattr(self, kind.value) for kind in _FRACTIONS)
        if total > 1.0 + 1e-9:
            raise InvalidRequestError(
                f"Fault fractions sum to {total!r}; expected at most 1 "
                "(one request suffers at most one fault)."
            )
        if not (isinstance(self.latency_s, int | float) and 0 <= self.latency_s < math.inf):
            raise InvalidRequestError(
                f"Fault latency_s={self.latency_s!r} is unusable; expected seconds >= 0."
            )
        if self.retry_after is not None and (
            isinstance(self.retry_after, bool)
            or not isinstance(self.retry_after, int)
            or self.retry_after < 0
        ):
            raise InvalidRequestError(
                f"Fault retry_after={self.retry_after!r} is unusable; "
                "expected whole seconds >= 0 or None."
            )
        if self.max_faults is not None and (
            isinstance(self.max_faults, bool)
            or not isinstance(self.max_faults, int)
            or self.max_faults < 0
        ):
            raise InvalidRequestError(
                f"Fault max_faults={self.max_faults!r} is unusable; expected an integer >= 0 "
                "or None."
            )
        if not isinstance(self.path_glob, str) or not self.path_glob:
            raise InvalidRequestError(
                f"Fault path_glob={self.path_glob!r} is unusable; expected a pattern "
                "such as '*.tif'."
            )

    def matches(self, path: str) -> bool:
        """Whether requests for ``path`` (no leading ``/``, no query) fall under this plan."""
        return fnmatch.fnmatchcase(path, self.path_glob)

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict (the control endpoint and CLI flag format)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultPlan:
        """Build a plan from :meth:`to_dict` output (unknown keys are an error).

        Raises:
            InvalidRequestError: For unknown keys or unusable values.
        """
        if not isinstance(data, dict):
            raise InvalidRequestError(
                f"Fault plan {data!r} is not a JSON object; expected e.g. {{'status_503': 0.2}}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequestError(
                f"Unknown fault plan keys {unknown!r}; expected some of {sorted(known)!r}."
            )
        return cls(**data)


def choose_fault(plan: FaultPlan, draw: float) -> FaultKind | None:
    """The fault for one request, given a uniform ``draw`` in ``[0, 1)``.

    The unit interval is cut into consecutive slices, one per :class:`FaultKind` in
    declaration order with the width of its fraction; a draw in no slice means no fault. So
    each kind is chosen with exactly its probability.
    """
    edge = 0.0
    for kind in _FRACTIONS:
        share = getattr(plan, kind.value)
        edge += share
        if share > 0 and draw < edge:
            return kind
    return None


class Decision(NamedTuple):
    """What to do with one request.

    Attributes:
        fault: The fault to inject, or None.
        latency_s: Seconds to wait before answering.
        retry_after: ``Retry-After`` value for 503/429 answers, or None for no header.
    """

    fault: FaultKind | None
    latency_s: float
    retry_after: int | None


NO_FAULT = Decision(None, 0.0, None)


class FaultInjector:
    """Applies one :class:`FaultPlan` to a stream of requests; thread-safe.

    Every matching request takes one draw from an RNG seeded with ``plan.seed``, in the order
    the requests ask, so the k-th matching request always gets the same decision.

    Args:
        plan: The plan, or None for no faults.
    """

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed if plan else 0)
        self._injected = 0
        self._lock = threading.Lock()

    @property
    def injected(self) -> int:
        """Faults injected so far under this plan (latency does not count)."""
        with self._lock:
            return self._injected

    def decide(self, path: str) -> Decision:
        """The decision for the next request for ``path`` (no leading ``/``, no query)."""
        plan = self.plan
        if plan is None or not plan.matches(path):
            return NO_FAULT
        with self._lock:
            fault = choose_fault(plan, self._rng.random())
            if plan.max_faults is not None and self._injected >= plan.max_faults:
                fault = None
            if fault is not None:
                self._injected += 1
        return Decision(fault, float(plan.latency_s), plan.retry_after)


__all__ = ["NO_FAULT", "Decision", "FaultInjector", "FaultKind", "FaultPlan", "choose_fault"]
