"""A store in an object store (``s3://bucket/prefix``; also ``gs://``, ``az://``) through obstore.

Every call that reaches the object store goes through :class:`ObjectClient`, so every failure
becomes a :class:`~scenestore.errors.StoreError` whose message is redacted (no key, token or
signature ever shows) and names the store and what would be right. Credentials are never read,
copied or logged by scenestore: obstore takes them from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` ...) itself. The endpoint of
an S3-compatible server comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (plain
``http://`` is allowed for such an endpoint), the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION``.

There is no rename (``supports_rename`` is False): :meth:`ObjectClient.move` copies server-side,
then deletes; put-if-absent is ``If-None-Match: *`` and the writer lock is a lease object made
with conditional writes (:mod:`scenestore.store.lease`).

``memory://<name>`` is the same client over obstore's in-process ``MemoryStore`` (conditional
writes and ETags included): the fast backend of the conformance tests, on the object-store code
path. Every caller in the process gets the same objects until :func:`forget` drops them.
"""

from __future__ import annotations

import builtins
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scenestore.errors import InvalidRequestError, StoreError
from scenestore.network import timeouts
from scenestore.redact import redact
from scenestore.store.lease import LeaseLock, lease_held

if TYPE_CHECKING:
    from obstore.store import ClientConfig

#: URL schemes that name an object store (obstore's ``from_url`` schemes). Not ``memory://``:
#: each client would get its own empty store, so nothing written would be found again.
OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss")


def is_object_url(store: object) -> bool:
    """Return whether ``store`` is an object-storage URL (``s3://...``) rather than a path."""
    if not isinstance(store, str) or "://" not in store:
        return False
    return store.split("://", 1)[0].lower() in OBJECT_SCHEMES


@dataclass(frozen=True)
class StoreURL:
    """A parsed object-storage store location.

    Attributes:
        scheme: ``s3``, ``gs``, ``az``... (lower case; ``s3a`` becomes ``s3``).
        bucket: Bucket (or container) name.
        prefix: Key prefix inside the bucket, without leading or trailing slashes.
    """

    scheme: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{self.scheme}://{self.bucket}{tail}"


def parse_store_url(url: str) -> StoreURL:
    """Parse ``s3://bucket/prefix`` (or another object-store URL) into its parts.

    Raises:
        InvalidRequestError: If the scheme is not an object store, the bucket is missing, or
            the prefix holds ``..``, empty segments or a query string.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in OBJECT_SCHEMES:
        raise InvalidRequestError(
            f"Store URL {url!r} has scheme {parts.scheme!r}; expected one of "
            f"{', '.join(s + '://' for s in OBJECT_SCHEMES)} or a local path."
        )
    if parts.query or parts.fragment:
        raise InvalidRequestError(
            f"Store URL {url!r} has a query or fragment; expected {scheme}://bucket/prefix "
            "(endpoint and credentials come from the environment, e.g. AWS_ENDPOINT_URL)."
        )
    bucket = parts.netloc
    if not bucket or "@" in bucket:
        raise InvalidRequestError(
            f"Store URL {url!r} names no bucket; expected {scheme}://bucket/prefix."
        )
    prefix = parts.path.strip("/")
    segments = prefix.split("/") if prefix else []
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidRequestError(
            f"Store URL {url!r} has an empty, '.' or '..' path segment; expected "
            f"{scheme}://bucket/prefix with plain segments."
        )
    return StoreURL("s3" if scheme == "s3a" else scheme, bucket, prefix)


#: Environment variables naming an S3 endpoint, first match wins (the AWS SDKs' names).
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS itself."""
    for name in ENDPOINT_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def open_object_store(url: StoreURL) -> Any:
    """Return an obstore store rooted at the URL's bucket and prefix (no I/O happens here)."""
    from obstore.store import S3Store, from_url

    # Every request is bounded by scenestore's timeouts (scenestore.network), not obstore's own.
    limits = timeouts()
    options: ClientConfig = {
        "connect_timeout": timedelta(seconds=limits.connect_s),
        "timeout": timedelta(seconds=limits.read_s),
    }
    if url.scheme != "s3":
        return from_url(str(url), client_options=options)
    kwargs: dict[str, Any] = {"prefix": url.prefix or None, "client_options": options}
    endpoint = s3_endpoint()
    if endpoint:
        kwargs["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = True
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"  # S3-compatible servers rarely care; SigV4 needs one
    return S3Store(url.bucket, **kwargs)


@contextmanager
def store_errors(url: StoreURL, doing: str) -> Iterator[None]:
    """Turn obstore failures into redacted StoreErrors naming the store and the operation."""
    from obstore.exceptions import (
        BaseError,
        NotFoundError,
        PermissionDeniedError,
        UnauthenticatedError,
    )

    try:
        yield
    except (PermissionDeniedError, UnauthenticatedError) as err:
        raise StoreError(
            f"Store {str(url)!r} refused to {doing} ({type(err).__name__}: "
            f"{_short(err)}); expected credentials that may read and write it (AWS_* "
            "environment variables or an AWS profile)."
        ) from err
    except NotFoundError as err:
        raise StoreError(
            f"Store {str(url)!r}: cannot {doing}, not found ({_short(err)}); expected an "
            "existing bucket (create it first) and a reachable endpoint (AWS_ENDPOINT_URL)."
        ) from err
    except (BaseError, OSError) as err:
        if "NoSuchBucket" in str(err):
            raise StoreError(
                f"Store {str(url)!r}: bucket {url.bucket!r} does not exist at "
                f"{redact(s3_endpoint() or 'AWS S3')}; expected an existing bucket (create it "
                "first)."
            ) from err
        raise StoreError(
            f"Store {str(url)!r}: cannot {doing} ({type(err).__name__}: {_short(err)}); "
            "expected a reachable object store (check AWS_ENDPOINT_URL and the network)."
        ) from err


def _dir(prefix: str) -> str | None:
    """A listing prefix that matches whole path segments only ("B0" must not list "B02")."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else None


def _short(err: BaseException) -> str:
    text = redact(" ".join(str(err).split()))
    return text if len(text) <= 300 else text[:297] + "..."


_memory_stores: dict[str, Any] = {}
_memory_lock = threading.Lock()


def memory_client(name: str) -> ObjectClient:
    """The in-process store ``memory://<name>``, created empty on first use."""
    from obstore.store import MemoryStore

    with _memory_lock:
        if name not in _memory_stores:
            _memory_stores[name] = MemoryStore()
        return ObjectClient(StoreURL("memory", name, ""), store=_memory_stores[name])


def forget(name: str) -> None:
    """Drop the memory store called ``name`` (its objects are gone)."""
    with _memory_lock:
        _memory_stores.pop(name, None)


class ObjectClient:
    """The objects of one object-storage store, keys relative to its prefix.

    Args:
        url: The parsed store URL.
        store: The obstore store to use (default: built from ``url`` on first use).
    """

    supports_rename = False

    def __init__(self, url: StoreURL, *, store: Any = None) -> None:
        self.url = url
        self.location = str(self.url)
        self._store: Any = store
        self._zarr: Any = None

    def __repr__(self) -> str:
        return f"ObjectClient({self.location!r})"

    @property
    def store(self) -> Any:
        """The obstore store, built on first use."""
        if self._store is None:
            self._store = open_object_store(self.url)
        return self._store

    def get(self, key: str) -> bytes | None:
        found = self.get_versioned(key)
        return None if found is None else found[0]

    def get_versioned(self, key: str) -> tuple[bytes, str | None] | None:
        """Return an object's bytes and ETag, or None if it does not exist."""
        import obstore
        from obstore.exceptions import NotFoundError

        with store_errors(self.url, f"read {key!r}"):
            try:
                result = obstore.get(self.store, key)
            except (NotFoundError, FileNotFoundError):
                return None
            return bytes(result.bytes()), result.meta.get("e_tag")

    def exists(self, key: str) -> bool:
        """Return whether an object exists (one HEAD request)."""
        import obstore
        from obstore.exceptions import NotFoundError

        with store_errors(self.url, f"look up {key!r}"):
            try:
                obstore.head(self.store, key)
            except (NotFoundError, FileNotFoundError):
                return False
            return True

    def put(self, key: str, data: bytes) -> None:
        """Write an object (a single PUT: readers see all of it or none)."""
        import obstore

        with store_errors(self.url, f"write {key!r}"):
            obstore.put(self.store, key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.create(key, data) is not None

    def create(self, key: str, data: bytes) -> str | None:
        """Create an object only if none exists (``If-None-Match: *``).

        Returns:
            The new ETag, or None when the object already existed (nothing was written).
        """
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with store_errors(self.url, f"create {key!r}"):
            try:
                return obstore.put(self.store, key, data, mode="create")["e_tag"]
            except (AlreadyExistsError, PreconditionError, FileExistsError):
                return None

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace an object only if it is still the version ``etag`` (``If-Match``).

        Returns:
            The new ETag, or None when the object changed or vanished (nothing was written).
        """
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        with store_errors(self.url, f"update {key!r}"):
            try:
                return obstore.put(self.store, key, data, mode={"e_tag": etag})["e_tag"]
            except (PreconditionError, NotFoundError, FileNotFoundError):
                return None

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """Every object under ``prefix/`` as (key, size), in key order."""
        import obstore

        with store_errors(self.url, f"list {prefix!r}"):
            found = [
                (meta["path"], int(meta["size"]))
                for batch in obstore.list(self.store, prefix=_dir(prefix))
                for meta in batch
            ]
        return sorted(found)

    def children(self, prefix: str = "") -> builtins.list[str]:
        """The names of the common prefixes directly under ``prefix`` (one delimited listing)."""
        import obstore

        with store_errors(self.url, f"list {prefix or 'the store'!r}"):
            result = obstore.list_with_delimiter(self.store, prefix=prefix or None)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in result["common_prefixes"])

    def stamp(self, prefix: str) -> str | None:
        return None  # object stores have no directories, so no cheap change time

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete objects (missing ones are fine)."""
        import obstore

        if not keys:
            return
        with store_errors(self.url, f"delete {keys[0]!r}..."):
            obstore.delete(self.store, keys)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/``."""
        self.delete([key for key, _ in self.list(prefix)])

    def move(self, source: str, target: str) -> None:
        """Copy every object under ``source/`` server-side (no bytes through this process), then
        delete the originals: no rename exists, so callers order their steps around it."""
        import obstore

        source, target = source.strip("/"), target.strip("/")
        keys = [key for key, _ in self.list(source)]
        with store_errors(self.url, f"copy {source!r} to {target!r}"):
            for key in keys:
                obstore.copy(self.store, key, target + key[len(source) :])
        self.delete(keys)

    def lock(self, key: str, *, timeout_s: float) -> LeaseLock:
        return LeaseLock(self, key, timeout_s=timeout_s)  # taken on __enter__

    def lock_held(self, key: str) -> bool:
        return lease_held(self, key)

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """zarr's own ``ObjectStore`` over this client's obstore store."""
        from zarr.storage import ObjectStore

        if self._zarr is None:
            self._zarr = ObjectStore(self.store)
        return self._zarr.with_read_only(True) if read_only else self._zarr

    def href(self, key: str) -> str:
        return f"{self.url}/{key}"

    def check_readable(self) -> None:
        self.children()

    def check_writable(self) -> None:
        probe = f".locks/.probe-{uuid.uuid4().hex}"
        self.put(probe, b"")
        self.delete([probe])

    def local_root(self) -> None:
        return None

    def io_error(self, err: BaseException) -> Exception | None:
        return None
