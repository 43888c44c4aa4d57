"""The one contract every store backend keeps: small objects under keys, and a zarr store.

The scene logic (:mod:`scenestore.store.scenes` and the modules beside it) is written once
against :class:`StoreClient`; the backends are a directory (:mod:`._local`), an object store
through obstore (:mod:`._object`; also ``memory://``, obstore's in-process store, for fast
tests). The
commit protocol needs only what every backend has: a whole-object put, put-if-absent, listing
and deletion. Renaming a prefix is an optimisation (``supports_rename``): where it is atomic
(a directory) a replaced band is promoted and a removed scene leaves every listing in one step;
elsewhere the objects are copied and deleted in an order that keeps the promises.

Keys are ``/``-separated, relative to the store's root, and built by
:mod:`scenestore.store.layout` from validated identifiers.
"""

from __future__ import annotations

import builtins
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class SceneLock(Protocol):
    """A held writer lock (a file lock, or a lease that may be lost)."""

    def check(self) -> None:
        """Raise :class:`~scenestore.errors.StoreError` unless the lock is still held."""


@runtime_checkable
class StoreClient(Protocol):
    """Synchronous operations on one store's objects.

    Every failure is a :class:`~scenestore.errors.StoreError` (redacted, naming the store and
    what would be right); a missing object is an answer (``None``/``False``), not an error.
    """

    #: The store as the user named it (a path or URL), for messages.
    location: str
    #: Whether :meth:`move` is one atomic rename (else a copy, then a delete).
    supports_rename: bool

    def get(self, key: str) -> bytes | None:
        """An object's bytes, or None if it does not exist."""

    def exists(self, key: str) -> bool:
        """Whether an object exists."""

    def put(self, key: str, data: bytes) -> None:
        """Write a whole object atomically: readers see all of it or the previous version."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists; return whether this call created it."""

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """Every object under ``prefix/`` (whole segments) as (key, size), in key order."""

    def children(self, prefix: str = "") -> builtins.list[str]:
        """The names of the prefixes (directories) directly under ``prefix``, sorted."""

    def stamp(self, prefix: str) -> str | None:
        """A token that changes whenever an object directly under ``prefix/`` is added or
        removed (a directory's modification time), or None where the backend keeps none."""

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete objects; missing ones are fine."""

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/``; a missing prefix is fine."""

    def move(self, source: str, target: str) -> None:
        """Move every object under ``source/`` to the same names under ``target/``."""

    def lock(self, key: str, *, timeout_s: float) -> AbstractContextManager[SceneLock]:
        """Hold the writer lock ``key``, waiting up to ``timeout_s`` for another holder.

        Raises:
            LeaseHeldError: If another writer still holds it after ``timeout_s``.
        """

    def lock_held(self, key: str) -> bool:
        """Whether some writer holds the lock ``key`` right now (never takes or creates it)."""

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """A zarr v3 store rooted at the store's root, over the same objects."""

    def href(self, key: str) -> str:
        """The absolute href of a key: a path for a directory, ``s3://...`` for a bucket."""

    def check_readable(self) -> None:
        """Read the store once, so a missing directory or bucket is said as such."""

    def check_writable(self) -> None:
        """Create and delete a probe object, so an unwritable store fails before a download."""

    def local_root(self) -> Path | None:
        """The store's directory when it is one on this machine, else None."""

    def io_error(self, err: BaseException) -> Exception | None:
        """The store error a failure while writing zarr chunks means, or None if not the store's."""


__all__ = ["SceneLock", "StoreClient"]
