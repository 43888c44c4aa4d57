"""One request budget per provider: a rate, a concurrency cap and a pause that all threads share.

Providers throttle: CDSE answers ``429 Too Many Requests`` at a few requests per second. Every
request scenestore makes to a provider goes through that provider's :class:`Throttle`:

- the STAC API calls (searches, item lookups: a requests session whose adapter takes a slot
  per HTTP request, :func:`stac_io`), and
- the asset reads (GDAL under rasterio: each COG header open in the source check, and each
  chunk read odc-stac makes through :func:`reader_driver`). GDAL's HTTP requests are made in C
  and cannot be counted one by one: one asset read is one to a few HTTP range requests.

A budget is a token bucket (``rate`` requests per second, bursts of ``burst``) plus a
semaphore (at most ``concurrency`` requests in flight). A 429 or 503 answer seen by any thread
pauses the whole budget until its ``Retry-After`` has passed: the other threads wait instead of
meeting their own 429s.

Budgets are keyed by profile name (one budget covers the profile's STAC API and its asset
host) and live in this process: by default two processes each get the whole rate. Across
processes:

- ``SCENESTORE_THROTTLE_DIR=/some/dir``: every process that names the same directory (one
  machine, local disk) shares each budget's rate and pauses (:class:`FileGate`); concurrency
  stays per process.
- The Prefect flows share budgets across processes and workers with Prefect's global
  concurrency and rate limits (``flows/throttle.py``), which plug in through
  :func:`set_fleet_gate`.

Limits come from the profile (:attr:`scenestore.profiles.Profile.rate_limit`,
:attr:`~scenestore.profiles.Profile.max_concurrent`) unless the environment says otherwise:

- ``SCENESTORE_RATE_LIMIT``: requests per second, for every profile (``4``) or per profile
  (``cdse=4,earth-search=20``); ``0`` or ``none`` means unlimited.
- ``SCENESTORE_MAX_CONCURRENT``: requests in flight, in the same forms.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from scenestore.errors import InvalidRequestError

if TYPE_CHECKING:
    from scenestore.profiles import Profile

logger = logging.getLogger(__name__)

RATE_ENV = "SCENESTORE_RATE_LIMIT"
CONCURRENCY_ENV = "SCENESTORE_MAX_CONCURRENT"
SHARED_DIR_ENV = "SCENESTORE_THROTTLE_DIR"
#: Longest pause one ``Retry-After`` may impose: a broken header must not stall a run for hours.
MAX_PAUSE_S = 120.0
#: Pause after a 429/503 without a usable ``Retry-After``.
DEFAULT_PAUSE_S = 1.0
#: Times the STAC session sends a request again after a 429/503 (each after the pause).
THROTTLED_RETRIES = 5
#: Tokens one asset read spends: a COG open is a HEAD and a header GET; a chunk read one or
#: two range GETs (measured against the offline world, GDAL 3.10).
ASSET_READ_COST = 2.0
#: The statuses that mean "slow down" (and pause the budget).
SLOW_DOWN = frozenset({429, 503})


@dataclass(frozen=True)
class Limits:
    """What one budget allows.

    Attributes:
        rate: Requests per second, or None for no rate limit.
        concurrency: Requests in flight at once, or None for no cap.
        burst: Requests that may go at once after a quiet spell (the bucket's size).
    """

    rate: float | None = None
    concurrency: int | None = None
    burst: int = 1

    def __post_init__(self) -> None:
        if self.rate is not None and not (0 < self.rate < math.inf):
            raise InvalidRequestError(
                f"Request rate {self.rate!r} is unusable; expected requests per second > 0, "
                "or None for no limit."
            )
        if self.concurrency is not None and self.concurrency < 1:
            raise InvalidRequestError(
                f"Concurrency {self.concurrency!r} is unusable; expected at least 1 request "
                "in flight, or None for no cap."
            )
        if self.burst < 1:
            raise InvalidRequestError(f"Burst {self.burst!r} is unusable; expected at least 1.")


@dataclass(frozen=True)
class ThrottleStats:
    """What a budget has done since it was made.

    Attributes:
        requests: Slots handed out (requests let through).
        waited_s: Seconds threads spent waiting for a slot, summed over threads.
        pauses: Pauses ordered by 429/503 answers.
        max_in_flight: Most requests in flight at once.
    """

    requests: int
    waited_s: float
    pauses: int
    max_in_flight: int


class Throttle:
    """A thread-safe request budget: token bucket, concurrency cap and shared pause.

    Args:
        name: The budget's name (the profile's), for logs and the fleet gate.
        limits: What it allows.
    """

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self._cond = threading.Condition()
        self._tokens = float(limits.burst)
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._in_flight = 0
        self._requests = 0
        self._waited = 0.0
        self._pauses = 0
        self._max_in_flight = 0
        self._lease_lock = threading.Lock()
        self._leased = 0.0

    @contextmanager
    def slot(self, cost: float = 1.0) -> Iterator[None]:
        """Hold one request's place in the budget for the ``with`` block (blocks until free).

        Order matters: the concurrency place is taken first and the token last, so a thread
        waiting for a place does not sit on a token and let a burst through later.

        Args:
            cost: Tokens the block spends: the HTTP requests it makes (an asset read is a few).
        """
        started = time.monotonic()
        with self._cond:
            cap = self.limits.concurrency
            while cap is not None and self._in_flight >= cap:
                self._cond.wait()
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            self._take_token(cost)
            self._take_fleet_token(cost)
            with self._cond:
                self._requests += 1
                self._waited += time.monotonic() - started
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _take_token(self, cost: float) -> None:
        rate = self.limits.rate
        size = max(float(self.limits.burst), cost)
        with self._cond:
            while True:
                now = time.monotonic()
                wait = self._paused_until - now
                if wait <= 0:
                    if rate is None:
                        return
                    self._tokens = min(size, self._tokens + (now - self._stamp) * rate)
                    self._stamp = now
                    if self._tokens >= cost:
                        self._tokens -= cost
                        return
                    wait = (cost - self._tokens) / rate
                # a pause ordered meanwhile wakes nobody: every waiter re-checks it on waking
                self._cond.wait(wait)

    def _take_fleet_token(self, cost: float) -> None:
        """Take tokens of the cross-process budget, if one is installed (leased in batches)."""
        gate = _fleet_gate
        if gate is None:
            return
        with self._lease_lock:
            if self._leased < cost:
                batch = max(math.ceil(cost - self._leased), gate.batch(self))
                gate.acquire(self, batch)
                self._leased += batch
            self._leased -= cost

    def pause(self, seconds: float, *, reason: str = "") -> None:
        """Let no request of this budget start for ``seconds`` (capped at :data:`MAX_PAUSE_S`).

        Pauses do not add up: the later end wins. The token bucket is emptied, so the first
        requests after the pause are spaced at the rate, not sent in a burst.
        """
        seconds = min(max(seconds, 0.0), MAX_PAUSE_S)
        with self._cond:
            until = time.monotonic() + seconds
            if until > self._paused_until:
                self._paused_until = until
                self._tokens = 0.0
                self._stamp = until
                self._pauses += 1
                logger.warning(
                    "Provider %r asked to slow down (%s): all its requests wait %.1f s",
                    self.name,
                    reason or "throttled",
                    seconds,
                )
            self._cond.notify_all()
        gate = _fleet_gate
        if gate is not None:
            gate.pause(self, seconds)

    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when not paused)."""
        with self._cond:
            return max(0.0, self._paused_until - time.monotonic())

    def stats(self) -> ThrottleStats:
        """Counters since the budget was made."""
        with self._cond:
            return ThrottleStats(self._requests, self._waited, self._pauses, self._max_in_flight)


# -- the budgets of this process ----------------------------------------------------------------

_budgets: dict[str, Throttle] = {}
_budgets_lock = threading.Lock()


def budget(profile: str | Profile) -> Throttle:
    """The budget of a provider profile in this process (made on first use).

    Args:
        profile: Profile name or object; its ``rate_limit``/``max_concurrent`` (or the
            environment, :data:`RATE_ENV`/:data:`CONCURRENCY_ENV`) set the limits.

    Raises:
        InvalidRequestError: If the profile is unknown or an environment value is unusable.
    """
    from scenestore.profiles import get_profile

    prof = get_profile(profile)
    with _budgets_lock:
        _gate_of_env()
        found = _budgets.get(prof.name)
        if found is None:
            found = _budgets[prof.name] = Throttle(prof.name, limits_of(prof))
        return found


def reset_budgets() -> None:
    """Forget every budget (the next request makes new ones from the current settings)."""
    with _budgets_lock:
        _budgets.clear()


def limits_of(profile: Profile) -> Limits:
    """The limits in force for a profile: the environment's, else the profile's.

    Raises:
        InvalidRequestError: If an environment value is unusable.
    """
    rate = _env_value(RATE_ENV, profile.name, float)
    conc = _env_value(CONCURRENCY_ENV, profile.name, int)
    return Limits(
        rate=profile.rate_limit if rate is _UNSET else rate,
        concurrency=profile.max_concurrent if conc is _UNSET else conc,
    )


_UNSET: Any = object()


def _env_value(name: str, profile: str, kind: type) -> Any:
    """``4`` (all profiles) or ``cdse=4,earth-search=20``; ``0``/``none`` means no limit."""
    text = os.environ.get(name, "").strip()
    if not text:
        return _UNSET
    value: str | None = None
    for part in text.split(","):
        key, sep, val = part.strip().rpartition("=")
        if not sep:
            value = val if value is None else value  # a bare value is everyone's default
        elif key.strip() == profile:
            value = val
            break
    if value is None:
        return _UNSET
    value = value.strip()
    if value.lower() in ("0", "none", "off", "unlimited"):
        return None
    try:
        number = kind(value)
        if not number > 0 or number == math.inf:
            raise ValueError(value)
    except ValueError:
        raise InvalidRequestError(
            f"{name}={text!r} has unusable value {value!r} for profile {profile!r}; expected "
            f"a positive number, e.g. {name}=4 or {name}=cdse=4,earth-search=20 (0: no limit)."
        ) from None
    return number


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta seconds or an HTTP date).

    Returns:
        The seconds (>= 0), or None when the header is missing or unreadable.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def slow_down(throttle: Throttle, status: int, retry_after: str | None, what: str) -> float:
    """Pause ``throttle`` after a 429/503 answer; returns the pause in seconds."""
    seconds = retry_after_seconds(retry_after)
    if seconds is None or seconds <= 0:
        seconds = DEFAULT_PAUSE_S
    throttle.pause(seconds, reason=f"HTTP {status} from {what}")
    return min(seconds, MAX_PAUSE_S)


# -- the cross-process hook ---------------------------------------------------------------------


class FleetGate:
    """What a cross-process budget must do; the base lets everything through.

    :class:`FileGate` shares budgets between the processes of one machine; ``flows/throttle.py``
    implements one with Prefect's global limits for every worker of a Prefect server.
    """

    def batch(self, throttle: Throttle) -> int:
        """Tokens to take at once (a gate whose calls are costly takes several)."""
        return 1

    def acquire(self, throttle: Throttle, tokens: int) -> None:
        """Block until ``tokens`` requests of ``throttle``'s budget may go, fleet-wide."""

    def pause(self, throttle: Throttle, seconds: float) -> None:
        """Tell the fleet that ``throttle``'s budget must pause for ``seconds``."""


class FileGate(FleetGate):
    """Budgets shared by every process that uses the same directory (:data:`SHARED_DIR_ENV`).

    One small JSON file per budget holds the token bucket and the pause, updated under an
    exclusive ``flock``: the processes together keep the rate, and a 429 seen by one pauses
    all. Concurrency stays per process. Works on one machine (local disk); ``flock`` over
    network filesystems is not reliable.

    Args:
        directory: Where the budget files live (made if missing).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        from pathlib import Path

        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidRequestError(
                f"{SHARED_DIR_ENV}={str(directory)!r} cannot be used ({err}); expected a "
                "writable directory on a local disk."
            ) from err

    @contextmanager
    def _state(self, name: str) -> Iterator[dict[str, float]]:
        import fcntl
        import json

        path = self.directory / f"{name}.budget.json"
        with open(path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                text = fh.read()
                try:
                    state = json.loads(text) if text.strip() else {}
                except ValueError:  # a torn file (a process killed mid-write): start afresh
                    state = {}
                before = dict(state)
                yield state
                if state != before:
                    fh.seek(0)
                    fh.truncate()
                    fh.write(json.dumps(state))
                    fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def acquire(self, throttle: Throttle, tokens: int) -> None:
        rate, burst = throttle.limits.rate, max(float(throttle.limits.burst), tokens)
        while True:
            with self._state(throttle.name) as state:
                now = time.time()
                wait = state.get("paused_until", 0.0) - now
                if wait <= 0:
                    if rate is None:
                        return
                    stamp = min(state.get("stamp", now), now)
                    avail = min(burst, state.get("tokens", burst) + (now - stamp) * rate)
                    state["stamp"] = now
                    if avail >= tokens:
                        state["tokens"] = avail - tokens
                        return
                    state["tokens"] = avail
                    wait = (tokens - avail) / rate
            time.sleep(min(wait, 1.0))

    def pause(self, throttle: Throttle, seconds: float) -> None:
        with self._state(throttle.name) as state:
            until = time.time() + seconds
            if until > state.get("paused_until", 0.0):
                state["paused_until"] = until
                state["tokens"] = 0.0
                state["stamp"] = until


_fleet_gate: FleetGate | None = None
_gate_from_env: str | None = None


def set_fleet_gate(gate: FleetGate | None) -> FleetGate | None:
    """Install (or remove, with None) the cross-process budget; returns the previous one."""
    global _fleet_gate, _gate_from_env
    previous, _fleet_gate = _fleet_gate, gate
    _gate_from_env = None
    return previous


def _gate_of_env() -> None:
    """Install a :class:`FileGate` when :data:`SHARED_DIR_ENV` names a directory."""
    global _fleet_gate, _gate_from_env
    directory = os.environ.get(SHARED_DIR_ENV, "").strip()
    if (
        directory
        and directory != _gate_from_env
        and (_fleet_gate is None or _gate_from_env is not None)
    ):
        _fleet_gate, _gate_from_env = FileGate(directory), directory


# -- STAC API requests --------------------------------------------------------------------------


def _adapter_class() -> type:
    from requests.adapters import HTTPAdapter

    class ThrottledAdapter(HTTPAdapter):
        """A requests adapter that sends each request within the budget's slot.

        A 429 (or a 503 with ``Retry-After``) pauses the budget (every thread) for its
        ``Retry-After`` and sends the request again, up to :data:`THROTTLED_RETRIES` times;
        then the answer is returned as it is (pystac-client raises, scenestore classifies
        it transient).
        """

        def __init__(self, throttle: Throttle, **kwargs: Any) -> None:
            self.throttle = throttle
            super().__init__(**kwargs)

        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            for attempt in range(THROTTLED_RETRIES + 1):
                with self.throttle.slot():
                    response = super().send(request, **kwargs)
                    if not kwargs.get("stream"):
                        _ = response.content  # the body is part of the request's time
                retry_after = response.headers.get("Retry-After")
                if not _slow_down_asked(response.status_code, retry_after):
                    return response
                if attempt == THROTTLED_RETRIES:
                    return response
                slow_down(
                    self.throttle,
                    response.status_code,
                    retry_after,
                    "the STAC API",
                )
                response.close()
            return response  # pragma: no cover  (the loop always returns)

    return ThrottledAdapter


def stac_io(profile: str | Profile, timeout: tuple[float, float]) -> Any:
    """A pystac-client ``StacApiIO`` whose every request goes through the profile's budget.

    Connection failures are retried by urllib3 (5 times, as pystac-client does by default);
    429/503 answers by the adapter, after pausing the budget for their ``Retry-After``.
    """
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    io = StacApiIO(timeout=timeout, max_retries=None)
    adapter = _adapter_class()(
        budget(profile),
        max_retries=Retry(total=5, status=0, respect_retry_after_header=False),
    )
    io.session.mount("http://", adapter)
    io.session.mount("https://", adapter)
    return io


# -- asset reads (GDAL through odc-stac) --------------------------------------------------------


@contextmanager
def asset_read(profile: str | Profile, what: str = "the asset host") -> Iterator[None]:
    """Hold a budget slot for one asset read; a 429/503 failure pauses the budget.

    GDAL retries 429/503 itself and does not say what ``Retry-After`` was: a read that still
    fails with one pauses the budget for :data:`DEFAULT_PAUSE_S`.
    """
    throttle = budget(profile)
    with throttle.slot(ASSET_READ_COST):
        try:
            yield
        except Exception as err:
            status = _status_in(str(err))
            if status in SLOW_DOWN:
                slow_down(throttle, status, None, what)
            raise


def _slow_down_asked(status: int, retry_after: str | None) -> bool:
    """A 429, or a 503 that says when to come back: the provider asks everyone to wait.

    A 503 without ``Retry-After`` is an outage, not throttling: it is left to the retries
    of the caller (:func:`scenestore.network.transient_retrying`, the flows' task retries).
    """
    return status == 429 or (status == 503 and retry_after is not None)


def _status_in(text: str) -> int | None:
    import re

    m = re.search(r"HTTP (?:response )?(?:code|status)[^0-9]{0,5}(\d{3})", text, re.I)
    return int(m.group(1)) if m else None


def reader_driver(profile: str | Profile, stac_cfg: dict[str, Any]) -> Any:
    """An odc-stac reader driver whose every chunk read takes a slot of the profile's budget.

    The driver pickles as its profile name and configuration (for dask workers, which then
    use their own process's budget).
    """
    from odc.stac._mdtools import StacAuxReader, StacMDParser

    from scenestore.profiles import get_profile

    name = get_profile(profile).name
    return _driver_class()(
        name, stac_cfg, md_parser=StacMDParser(stac_cfg), aux_reader=StacAuxReader()
    )


@functools.cache
def _driver_class() -> type:
    """odc-loader's rasterio driver, its reads inside the budget (made once, on first use)."""
    from odc.loader._rio import RioDriver, RioReader

    class ThrottledReader(RioReader):
        budget_name = ""

        def read(self, *args: Any, **kwargs: Any) -> Any:
            with asset_read(self.budget_name):
                return super().read(*args, **kwargs)

    class ThrottledDriver(RioDriver):
        def __init__(self, name: str, stac_cfg: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.budget_name, self.stac_cfg = name, stac_cfg

        def open(self, src: Any, ctx: Any) -> Any:
            reader = ThrottledReader(src, ctx)
            reader.budget_name = self.budget_name
            return reader

        def __reduce__(self) -> tuple[Any, ...]:
            return (reader_driver, (self.budget_name, self.stac_cfg))

    return ThrottledDriver


__all__ = [
    "CONCURRENCY_ENV",
    "DEFAULT_PAUSE_S",
    "MAX_PAUSE_S",
    "RATE_ENV",
    "SHARED_DIR_ENV",
    "FileGate",
    "FleetGate",
    "Limits",
    "Throttle",
    "ThrottleStats",
    "asset_read",
    "budget",
    "limits_of",
    "reader_driver",
    "reset_budgets",
    "retry_after_seconds",
    "set_fleet_gate",
    "stac_io",
]
