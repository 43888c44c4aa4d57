"""Object-storage store URLs and the keys of a store's objects (pure, no I/O).

An object-storage store has the layout of a local store, as keys under a prefix::

    s3://<bucket>/<prefix>/<identifier>.zarr/...          zarr v3 group, one array per band
    s3://<bucket>/<prefix>/<identifier>.zarr/_commits/    <BAND>.json commit records
    s3://<bucket>/<prefix>/<identifier>.zarr/_staging/    replacements of committed bands
    s3://<bucket>/<prefix>/.locks/<identifier>.lock       per-scene lease lock
    s3://<bucket>/<prefix>/.quicklooks/<identifier>.png   true-colour quicklook (optional)

Keys below are relative to the store's prefix, as the object-store client sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from scenestore.errors import InvalidRequestError
from scenestore.ids import validate_identifier
from scenestore.layout import COMMITS_DIR, LOCKS_DIR, QUICKLOOKS_DIR, SCENE_SUFFIX, STAGING_DIR

#: URL schemes that name an object store (obstore's ``from_url`` schemes). Not ``memory://``:
#: each client would get its own empty store, so nothing written would be found again.
OBJECT_SCHEMES = ("s3", "s3a", "gs", "az", "abfs", "abfss")

RECORD_SUFFIX = ".json"


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


def scene_key(identifier: str) -> str:
    """``<identifier>.zarr`` after validating the identifier.

    Raises:
        InvalidIdentifierError: If the identifier is not safe as a key.
    """
    return f"{validate_identifier(identifier)}{SCENE_SUFFIX}"


def band_key(identifier: str, band: str) -> str:
    """The prefix of a committed band's array."""
    return f"{scene_key(identifier)}/{band}"


def staging_key(identifier: str, band: str) -> str:
    """The prefix a replacement of a committed band is written to before promotion."""
    return f"{scene_key(identifier)}/{STAGING_DIR}/{band}"


def commits_key(identifier: str) -> str:
    """The prefix of a scene's commit records."""
    return f"{scene_key(identifier)}/{COMMITS_DIR}"


def commit_key(identifier: str, band: str) -> str:
    """The commit record object of one band."""
    return f"{commits_key(identifier)}/{band}{RECORD_SUFFIX}"


def lock_key(identifier: str) -> str:
    """The lease lock object of one scene."""
    return f"{LOCKS_DIR}/{validate_identifier(identifier)}.lock"


def quicklook_key(identifier: str) -> str:
    """The quicklook PNG object of one scene."""
    return f"{QUICKLOOKS_DIR}/{validate_identifier(identifier)}.png"


def url_of(url: StoreURL, key: str) -> str:
    """The absolute URL of an object of the store, e.g. ``s3://bucket/prefix/<key>``."""
    return f"{url}/{key}"


def identifier_of_key(prefix: str) -> str | None:
    """The identifier of a top-level ``<identifier>.zarr/`` prefix, or None."""
    name = prefix.rstrip("/").rsplit("/", 1)[-1]
    if not name.endswith(SCENE_SUFFIX) or name.startswith("."):
        return None
    return name[: -len(SCENE_SUFFIX)]
