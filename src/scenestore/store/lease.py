"""A per-scene writer lock made of conditional writes: a lease object (object and memory stores).

There is no ``fcntl`` on S3 and no kernel to release the lock of a killed process, so the lock
is an object ``.locks/<identifier>.lock`` holding its owner and when its lease runs out:

* taking it is a put-if-absent (``If-None-Match: *``); of two writers exactly one succeeds;
* a lease that ran out (its writer was killed, or hung) is taken over with ``If-Match`` on the
  ETag that was read, so of two writers taking over the same stale lease exactly one wins;
* the holder renews the lease from a heartbeat thread, again with ``If-Match`` on its own
  ETag; a renewal that fails means another writer took the lock, and :meth:`LeaseLock.check`
  (called before every commit) then refuses to commit;
* releasing writes an expired record with ``If-Match``, so a release never removes a lock
  that someone else holds.

Expiry compares wall clocks: writers on different machines need clocks within a few seconds of
each other (NTP), far less than the lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

from scenestore.errors import InvalidRequestError, LeaseHeldError, StoreError

logger = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal; a killed writer's lock is taken over after this.
DEFAULT_LEASE_S = 60.0
#: Environment variable that overrides :data:`DEFAULT_LEASE_S` (tests use a short lease).
LEASE_ENV_VAR = "SCENESTORE_LOCK_LEASE_S"


class VersionedClient(Protocol):
    """What a lease needs of a store: versioned reads and conditional writes (ETags)."""

    location: str

    def get_versioned(self, key: str) -> tuple[bytes, str | None] | None: ...

    def create(self, key: str, data: bytes) -> str | None: ...

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None: ...


def lease_seconds() -> float:
    """The lease duration: ``$SCENESTORE_LOCK_LEASE_S`` or :data:`DEFAULT_LEASE_S`.

    Raises:
        InvalidRequestError: If the variable is set but not a positive number.
    """
    text = os.environ.get(LEASE_ENV_VAR, "").strip()
    try:
        value = float(text) if text else DEFAULT_LEASE_S
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InvalidRequestError(
            f"{LEASE_ENV_VAR}={text!r} is not a positive number of seconds; expected e.g. 60."
        )
    return value


class LeaseLock:
    """A lease lock object; use as a context manager around the writes of one scene.

    Args:
        client: The store's client (object store or memory).
        key: The lock object's key.
        lease_s: Lease duration in seconds (default: :func:`lease_seconds`).
        timeout_s: How long to wait for another writer's lease before giving up.
    """

    def __init__(
        self,
        client: VersionedClient,
        key: str,
        *,
        lease_s: float | None = None,
        timeout_s: float = 3600.0,
    ) -> None:
        self.client = client
        self.key = key
        self.lease_s = lease_s if lease_s is not None else lease_seconds()
        self.timeout_s = timeout_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._etag: str | None = None
        self._expires = 0.0
        self._lost = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _record(self, *, released: bool = False) -> tuple[bytes, float]:
        expires = 0.0 if released else time.time() + self.lease_s
        doc = {"owner": self.owner, "expires_at": expires, "lease_s": self.lease_s}
        return json.dumps(doc).encode(), expires

    def acquire(self) -> None:
        """Take the lock, waiting for (or taking over from) another writer.

        Raises:
            LeaseHeldError: If another writer's lease is still valid after ``timeout_s`` (a
                :class:`~scenestore.errors.StoreError`).
            StoreError: If the store cannot be reached.
        """
        deadline = time.monotonic() + self.timeout_s
        wait = 0.05
        while True:
            data, expires = self._record()
            etag = self.client.create(self.key, data)
            if etag is None:
                etag = self._take_over_if_stale(data)
            if etag is not None:
                self._etag, self._expires, self._lost = etag, expires, False
                self._start_heartbeat()
                return
            if time.monotonic() > deadline:
                raise LeaseHeldError(
                    f"Scene lock {self.key!r} in {self.client.location!r} is still held by "
                    f"another writer after {self.timeout_s:g} s; expected it to finish or its "
                    f"lease ({self.lease_s:g} s) to run out."
                )
            time.sleep(wait)
            wait = min(wait * 2, max(0.2, self.lease_s / 10))

    def _take_over_if_stale(self, data: bytes) -> str | None:
        found = self.client.get_versioned(self.key)
        if found is None:
            return None  # released and deleted meanwhile: try creating again
        payload, etag = found
        try:
            current: dict[str, Any] = json.loads(payload)
            expires = float(current.get("expires_at", 0))
        except (ValueError, TypeError, AttributeError):
            expires = 0.0  # an unreadable lock protects nothing
        if expires > time.time() or etag is None:
            return None
        new = self.client.put_if_match(self.key, data, etag)
        if new is not None and current.get("expires_at"):
            logger.warning(
                "Took over the expired scene lock %s (held by %s)", self.key, current.get("owner")
            )
        return new

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._renew_loop, name=f"lease-{self.key}", daemon=True
        )
        self._heartbeat.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._guard:
                if self._etag is None:
                    return
                data, expires = self._record()
                try:
                    etag = self.client.put_if_match(self.key, data, self._etag)
                except StoreError as err:  # the store was unreachable: try again next beat
                    logger.warning("Could not renew scene lock %s: %s", self.key, err)
                    continue
                if etag is None:
                    logger.error("Scene lock %s was taken by another writer", self.key)
                    self._lost, self._etag = True, None
                    return
                self._etag, self._expires = etag, expires

    def check(self) -> None:
        """Raise unless this writer still holds a valid lease (call before each commit).

        Raises:
            StoreError: If the lease was taken over or ran out unrenewed.
        """
        with self._guard:
            lost = self._lost or self._etag is None
            expired = time.time() > self._expires
        if lost or expired:
            raise StoreError(
                f"Scene lock {self.key!r} in {self.client.location!r} was "
                f"{'taken over by another writer' if lost else 'not renewed in time'}; "
                "expected to hold it while committing (nothing was committed; run again)."
            )

    def release(self) -> None:
        """Stop renewing and mark the lease expired, only if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        with self._guard:
            etag, self._etag = self._etag, None
        if etag is not None:
            data, _ = self._record(released=True)
            self.client.put_if_match(self.key, data, etag)

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lease_held(client: VersionedClient, key: str) -> bool:
    """Whether the lease object ``key`` holds an unexpired lease (never takes it)."""
    found = client.get_versioned(key)
    if found is None:
        return False
    try:
        return float(json.loads(found[0]).get("expires_at", 0)) > time.time()
    except (ValueError, TypeError, AttributeError):
        return False
