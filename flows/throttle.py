"""One provider budget for every flow run and worker: Prefect global concurrency and rate limits.

The library keeps each process under its provider's rate (:mod:`scenestore.throttle`); here
the processes of a Prefect deployment share it through the Prefect server. Per provider
profile with a budget (a ``rate_limit``/``max_concurrent`` on the profile, or set with
``SCENESTORE_RATE_LIMIT``/``SCENESTORE_MAX_CONCURRENT``), two global concurrency limits:

- ``scenestore-<profile>-requests``: a rate limit (``slot_decay_per_second`` = the rate,
  ``limit`` = one second's worth). Every HTTP request to the provider, STAC or asset, spends
  one of its slots (an asset read two): the library takes them through :class:`PrefectGate`
  in small batches, so a process asks the server about once a second, not per request. A 429
  with ``Retry-After`` seen by any worker fills the limit for that long: every worker waits.
- ``scenestore-<profile>-scenes``: a concurrency limit (``limit`` = ``max_concurrent``) held
  around each search task and each scene's download, fleet-wide.

:func:`ensure_provider_limits` creates the missing ones (the stack command calls it; the
flows call it too, once per process, for the profile they use). Existing limits are never
changed: edit them in the UI (Concurrency, Global) or with ``prefect gcl update``. A profile
without a budget gets no limits and no Prefect calls.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from scenestore.profiles import PROFILES, Profile, get_profile
from scenestore.throttle import FleetGate, Limits, Throttle, limits_of, set_fleet_gate

logger = logging.getLogger(__name__)

#: Prefix of every limit this module creates.
PREFIX = "scenestore"
#: Scenes downloaded at once fleet-wide when a profile has a rate but no concurrency cap.
DEFAULT_SCENES = 4


@dataclass(frozen=True)
class ProviderLimits:
    """The Prefect limits of one provider profile.

    Attributes:
        profile: Profile name.
        requests: Name of the rate limit every HTTP request spends a slot of.
        scenes: Name of the concurrency limit held around each search and scene download.
        rate: Requests per second (the rate limit's slot decay), or None: no rate limit.
        burst: Slots of the rate limit (one second's worth, at least 2 for an asset read).
        concurrency: Slots of the scenes limit, or None: no concurrency limit.
    """

    profile: str
    requests: str
    scenes: str
    rate: float | None
    burst: int
    concurrency: int | None

    @property
    def any(self) -> bool:
        """Whether the profile has any fleet-wide limit."""
        return self.rate is not None or self.concurrency is not None


def provider_limits(profile: str | Profile) -> ProviderLimits:
    """The limit names and sizes of a profile, from its budget (:func:`limits_of`).

    Raises:
        InvalidRequestError: If the profile is unknown or an environment value is unusable.
    """
    prof = get_profile(profile)
    limits: Limits = limits_of(prof)
    concurrency = limits.concurrency
    if concurrency is None and limits.rate is not None:
        concurrency = DEFAULT_SCENES
    return ProviderLimits(
        profile=prof.name,
        requests=f"{PREFIX}-{prof.name}-requests",
        scenes=f"{PREFIX}-{prof.name}-scenes",
        rate=limits.rate,
        burst=max(2, math.ceil(limits.rate or 0)),
        concurrency=concurrency,
    )


def ensure_provider_limits(client: Any, profiles: list[str] | None = None) -> list[str]:
    """Create the Prefect limits of every profile with a budget, where missing.

    Args:
        client: A Prefect client (``get_client(sync_client=True)``).
        profiles: Profile names (default: every profile).

    Returns:
        The names of the limits that exist for those profiles afterwards (created or kept).
    """
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    present = []
    for name in profiles or list(PROFILES):
        limits = provider_limits(name)
        wanted = []
        if limits.rate is not None:
            wanted.append((limits.requests, limits.burst, limits.rate))
        if limits.concurrency is not None:
            wanted.append((limits.scenes, limits.concurrency, None))
        for limit_name, size, decay in wanted:
            try:
                client.read_global_concurrency_limit_by_name(limit_name)
            except ObjectNotFound:
                try:
                    decay_kw = {} if decay is None else {"slot_decay_per_second": decay}
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=limit_name, limit=size, **decay_kw)
                    )
                    logger.info(
                        "Created Prefect limit %s (limit %d, decay %s)", limit_name, size, decay
                    )
                except ObjectAlreadyExists:  # another worker made it meanwhile
                    pass
            present.append(limit_name)
    return present


class PrefectGate(FleetGate):
    """The library's cross-process budget, on the Prefect server's rate limits.

    Slots are taken in batches of half a second's worth, so each process asks the server
    about twice a second at full speed. Only profiles whose limits exist are gated.
    """

    def __init__(self) -> None:
        self._known: dict[str, ProviderLimits] = {}
        self._lock = threading.Lock()

    def add(self, limits: ProviderLimits) -> None:
        """Gate the requests of ``limits.profile`` (its limits must exist)."""
        with self._lock:
            self._known[limits.profile] = limits

    def batch(self, throttle: Throttle) -> int:
        limits = self._known.get(throttle.name)
        return 1 if limits is None else max(1, limits.burst // 2)

    def acquire(self, throttle: Throttle, tokens: int) -> None:
        limits = self._known.get(throttle.name)
        if limits is None or limits.rate is None:
            return
        from prefect.concurrency.sync import rate_limit

        rate_limit(limits.requests, occupy=min(tokens, limits.burst), strict=False)

    def pause(self, throttle: Throttle, seconds: float) -> None:
        """Fill the rate limit past its size: every worker waits about ``seconds``.

        The limit's slots decay at the rate, so ``limit - 1 + seconds * rate`` occupied slots
        free the next one ``seconds`` from now (measured: 12 slots of a 4-slot, 4/s limit
        held the next request 2.4 s). Best effort: a failure only logs.
        """
        limits = self._known.get(throttle.name)
        if limits is None or limits.rate is None:
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

        slots = limits.burst - 1 + math.ceil(seconds * limits.rate)
        try:
            with get_client(sync_client=True) as client:
                client.update_global_concurrency_limit(
                    limits.requests, GlobalConcurrencyLimitUpdate(active_slots=slots)
                )
        except Exception as err:  # the local pause still holds; the fleet one is a bonus
            logger.warning("Could not pause Prefect limit %s: %s", limits.requests, err)


_gate = PrefectGate()
_ready: set[str] = set()
_ready_lock = threading.Lock()


def use_provider_limits(profile: str | Profile) -> ProviderLimits | None:
    """Make this process's requests to ``profile`` spend the fleet's Prefect limits.

    Idempotent and cheap after the first call per profile (which creates missing limits).
    Without a reachable Prefect API, or for a profile without a budget, nothing changes and
    the library's per-process budget applies alone.

    Returns:
        The profile's limits, or None when none apply.
    """
    limits = provider_limits(profile)
    if not limits.any:
        return None
    with _ready_lock:
        if limits.profile in _ready:
            return limits
        try:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                ensure_provider_limits(client, [limits.profile])
        except Exception as err:  # no API: the per-process budget is what remains
            logger.warning(
                "Provider limits of %r not set up on the Prefect API (%s); each process keeps "
                "its own budget.",
                limits.profile,
                err,
            )
            return None
        _gate.add(limits)
        set_fleet_gate(_gate)
        _ready.add(limits.profile)
    return limits


@contextmanager
def provider_slot(profile: str | Profile) -> Iterator[None]:
    """Hold one of the provider's fleet-wide scene slots for the ``with`` block.

    Around a search or a scene's download; a no-op for a profile without a budget.
    """
    limits = use_provider_limits(profile)
    if limits is None or limits.concurrency is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limits.scenes, occupy=1, strict=False):
        yield


__all__ = [
    "PREFIX",
    "PrefectGate",
    "ProviderLimits",
    "ensure_provider_limits",
    "provider_limits",
    "provider_slot",
    "use_provider_limits",
]
