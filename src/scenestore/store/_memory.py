"""A store in process memory (``memory://<name>``): the fast backend of the conformance tests.

Objects live in one dict shared with zarr's ``MemoryStore``, so what zarr writes the client
lists, and the other way round. Each operation takes one lock, so a put is whole and a move
(``supports_rename``) is atomic, as on a directory. Writer locks are leases, as on an object
store (:mod:`scenestore.store.lease`). Stores are named: ``open_store("memory://x")`` gives the
same objects to every caller in the process until :func:`forget` drops them.
"""

from __future__ import annotations

import builtins
import itertools
import threading
from pathlib import Path
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from scenestore.store.lease import LeaseLock, lease_held

_stores: dict[str, MemoryClient] = {}
_registry_lock = threading.Lock()


def memory_client(name: str) -> MemoryClient:
    """The memory store called ``name``, created empty on first use."""
    with _registry_lock:
        if name not in _stores:
            _stores[name] = MemoryClient(name)
        return _stores[name]


def forget(name: str) -> None:
    """Drop the memory store called ``name`` (its objects are gone)."""
    with _registry_lock:
        _stores.pop(name, None)


class MemoryClient:
    """The objects of one in-process store.

    Args:
        name: The store's name (its location is ``memory://<name>``).
    """

    supports_rename = True

    def __init__(self, name: str) -> None:
        self.location = f"memory://{name}"
        self.objects: dict[str, Any] = {}  # key -> zarr Buffer, shared with the zarr store
        self._etags: dict[str, str] = {}
        self._counter = itertools.count(1)
        self._guard = threading.RLock()

    def __repr__(self) -> str:
        return f"MemoryClient({self.location!r})"

    def _set(self, key: str, data: bytes) -> str:
        self.objects[key] = default_buffer_prototype().buffer.from_bytes(data)
        etag = str(next(self._counter))
        self._etags[key] = etag
        return etag

    def get(self, key: str) -> bytes | None:
        found = self.get_versioned(key)
        return None if found is None else found[0]

    def get_versioned(self, key: str) -> tuple[bytes, str | None] | None:
        with self._guard:
            value = self.objects.get(key)
            if value is None:
                return None
            return value.to_bytes(), self._etags.setdefault(key, str(next(self._counter)))

    def exists(self, key: str) -> bool:
        return key in self.objects

    def put(self, key: str, data: bytes) -> None:
        with self._guard:
            self._set(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.create(key, data) is not None

    def create(self, key: str, data: bytes) -> str | None:
        with self._guard:
            return None if key in self.objects else self._set(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        with self._guard:
            if key not in self.objects or self._etags.get(key) != etag:
                return None
            return self._set(key, data)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        head = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        with self._guard:
            return sorted((k, len(v)) for k, v in self.objects.items() if k.startswith(head))

    def children(self, prefix: str = "") -> builtins.list[str]:
        head = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        with self._guard:
            keys = [k[len(head) :] for k in self.objects if k.startswith(head)]
        return sorted({k.split("/", 1)[0] for k in keys if "/" in k})

    def delete(self, keys: builtins.list[str]) -> None:
        with self._guard:
            for key in keys:
                self.objects.pop(key, None)
                self._etags.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        with self._guard:
            self.delete([k for k, _ in self.list(prefix)])

    def move(self, source: str, target: str) -> None:
        source, target = source.strip("/"), target.strip("/")
        with self._guard:
            for key, _ in self.list(source):
                self.objects[target + key[len(source) :]] = self.objects.pop(key)
                self._etags.pop(key, None)

    def lock(self, key: str, *, timeout_s: float) -> LeaseLock:
        return LeaseLock(self, key, timeout_s=timeout_s)  # taken on __enter__

    def lock_held(self, key: str) -> bool:
        return lease_held(self, key)

    def zarr_store(self, *, read_only: bool = False) -> MemoryStore:
        return MemoryStore(self.objects, read_only=read_only)

    def href(self, key: str) -> str:
        return f"{self.location}/{key}"

    def check_readable(self) -> None:
        """A memory store always exists."""

    def check_writable(self) -> None:
        """A memory store is always writable."""

    def local_root(self) -> Path | None:
        return None

    def io_error(self, err: BaseException) -> Exception | None:
        return None


__all__ = ["MemoryClient", "forget", "memory_client"]
