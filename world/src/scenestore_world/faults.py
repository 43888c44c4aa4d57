"""Fault injection for the offline world's HTTP servers: what to break, and how often.

A :class:`FaultPlan` says which share of requests fails in which way; a :class:`FaultInjector`
turns a plan into one decision per request with a seeded RNG, so a run with the same plan and
the same sequence of requests injects the same faults. Both are free of I/O: the servers in
:mod:`scenestore_world.http` and :mod:`scenestore_world.proxy` carry the decisions out.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import fnmatch
import math
import random
import threading
import time
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
        max_rps: Serve at most this many matching requests per ``rate_window_s`` seconds
            window (sliding, over all clients together, scaled: ``max_rps * rate_window_s``
            requests per window); the rest are answered ``429`` with a ``Retry-After`` of
            the whole seconds until the window has room. Like a provider's rate limit, and
            apart from the fractions and ``max_faults``. None: no rate limit.
        rate_window_s: Length of the sliding window of ``max_rps``, in seconds.
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
    max_rps: float | None = None
    rate_window_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_rps is not None and (
            isinstance(self.max_rps, bool)
            or not isinstance(self.max_rps, int | float)
            or not 0 < self.max_rps < math.inf
        ):
            raise InvalidRequestError(
                f"Fault max_rps={self.max_rps!r} is unusable; expected requests per second > 0 "
                "or None."
            )
        if (
            isinstance(self.rate_window_s, bool)
            or not isinstance(self.rate_window_s, int | float)
            or not 0 < self.rate_window_s < math.inf
        ):
            raise InvalidRequestError(
                f"Fault rate_window_s={self.rate_window_s!r} is unusable; expected seconds > 0."
            )
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
        self._throttled = 0
        self._served: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    @property
    def injected(self) -> int:
        """Faults injected so far under this plan (latency does not count)."""
        with self._lock:
            return self._injected

    @property
    def throttled(self) -> int:
        """Requests answered 429 for going over ``max_rps`` under this plan."""
        with self._lock:
            return self._throttled

    def decide(self, path: str) -> Decision:
        """The decision for the next request for ``path`` (no leading ``/``, no query)."""
        plan = self.plan
        if plan is None or not plan.matches(path):
            return NO_FAULT
        with self._lock:
            if plan.max_rps is not None:
                wait = self._over_rate(plan, time.monotonic())
                if wait is not None:
                    self._throttled += 1
                    return Decision(FaultKind.STATUS_429, float(plan.latency_s), wait)
            fault = choose_fault(plan, self._rng.random())
            if plan.max_faults is not None and self._injected >= plan.max_faults:
                fault = None
            if fault is not None:
                self._injected += 1
        return Decision(fault, float(plan.latency_s), plan.retry_after)

    def _over_rate(self, plan: FaultPlan, now: float) -> int | None:
        """None if the request may be served (and count it), else its ``Retry-After``.

        Only served requests fill the window: a client that keeps asking while throttled
        is refused, but is not locked out once the window has room again.
        """
        window = float(plan.rate_window_s)
        allowed = max(1, math.floor(float(plan.max_rps or 0) * window + 1e-9))
        served = self._served
        while served and served[0] <= now - window:
            served.popleft()
        if len(served) < allowed:
            served.append(now)
            return None
        return max(1, math.ceil(served[0] + window - now))


__all__ = ["NO_FAULT", "Decision", "FaultInjector", "FaultKind", "FaultPlan", "choose_fault"]
