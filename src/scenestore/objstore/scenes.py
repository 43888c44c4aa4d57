"""Scenes on an object store: the commit protocol, locking, writing and opening, without rename.

Arrays are read and written by zarr v3 itself (``zarr.storage.ObjectStore`` over obstore);
this module adds what an object store lacks for the commit protocol of
:mod:`scenestore.commit`:

* **Commit record last.** A band is present only once ``_commits/<BAND>.json`` exists. The
  record is one PUT (an object is visible whole or not at all) made after every chunk PUT
  has returned, and with put-if-absent, so a writer that lost its lock cannot commit over
  another writer's record.
* **No rename.** A band that is not committed is written straight under its final name (after
  deleting whatever a killed writer left there): without a record it is not present, so
  nothing can mistake it for a whole band. A band that *is* committed is never touched until
  its replacement is whole: the replacement is written to ``_staging/<BAND>``, then the old
  record is dropped, the old array deleted and the staged objects copied into place
  server-side, and the new record written last.
* **Checksums without reading back.** Chunk bytes are hashed as zarr writes them (a
  ``WrapperStore``), so committing costs no second download. The record's checksum is
  ``blake2b-tree:`` (a BLAKE2b over each chunk's name, length and own BLAKE2b, in name order),
  which :mod:`scenestore.objstore.catalog` re-computes when verifying.
* **Locks** are lease objects made with conditional writes (:mod:`scenestore.objstore.lease`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import xarray as xr
import zarr
from zarr.storage import WrapperStore

from scenestore.commit import CommitRecord, parse_record
from scenestore.errors import (
    IncompleteSceneError,
    SceneNotFoundError,
    StoreError,
)
from scenestore.integrity import CheckedStore
from scenestore.objstore.client import ObjectClient
from scenestore.objstore.lease import LeaseLock
from scenestore.objstore.location import (
    RECORD_SUFFIX,
    band_key,
    commit_key,
    commits_key,
    lock_key,
    parse_store_url,
    scene_key,
    staging_key,
    url_of,
)
from scenestore.storage import (
    GRID_VARS,
    _open_checked,
    band_names,
    check_group_grid,
    json_safe,
    write_band_array,
)

if TYPE_CHECKING:
    from scenestore.manager import StoreManager

logger = logging.getLogger(__name__)

#: Checksum scheme of records written to object stores (see the module docstring).
TREE_SCHEME = "blake2b-tree"
_COMMITS_GROUP = {"zarr_format": 3, "node_type": "group", "attributes": {"scenestore": "commits"}}


def tree_checksum(digests: dict[str, tuple[int, bytes]]) -> str:
    """``blake2b-tree:<hex>`` over chunk names (relative to the array), lengths and digests."""
    total = hashlib.blake2b(digest_size=16)
    for name in sorted(digests):
        size, digest = digests[name]
        total.update(name.encode() + b"\0" + size.to_bytes(8, "little") + digest)
    return f"{TREE_SCHEME}:{total.hexdigest()}"


def chunk_digest(data: bytes) -> bytes:
    """The per-chunk digest that :func:`tree_checksum` combines."""
    return hashlib.blake2b(data, digest_size=16).digest()


class _RecordingStore(WrapperStore[Any]):
    """A zarr store wrapper that hashes every chunk written under one array prefix."""

    def __init__(self, store: Any, prefix: str = "", chunks: dict | None = None) -> None:
        super().__init__(store)
        self.prefix = prefix.rstrip("/") + "/c/"
        self.chunks: dict[str, tuple[int, bytes]] = {} if chunks is None else chunks
        self._guard = threading.Lock()

    def _with_store(self, store: Any) -> _RecordingStore:
        return type(self)(store, self.prefix[: -len("/c/")], self.chunks)

    async def set(self, key: str, value: Any) -> None:
        await self._store.set(key, value)
        if key.startswith(self.prefix):
            data = value.to_bytes()
            name = key[len(self.prefix) - 2 :]  # "c/0/0", as the local fingerprint names it
            with self._guard:
                self.chunks[name] = (len(data), chunk_digest(data))

    async def delete(self, key: str) -> None:
        await self._store.delete(key)
        if key.startswith(self.prefix):
            with self._guard:
                self.chunks.pop(key[len(self.prefix) - 2 :], None)


class ObjectScenes:
    """The scenes of one object-storage store (``s3://bucket/prefix``).

    Constructing one does no I/O; the client connects on first use.

    Args:
        url: The store URL.

    Raises:
        InvalidRequestError: If the URL is not a valid object-store URL.
    """

    def __init__(self, url: str) -> None:
        self.url = parse_store_url(url)
        self.client = ObjectClient(self.url)
        self._zarr: Any = None
        self._held: dict[str, LeaseLock] = {}

    def __str__(self) -> str:
        return str(self.url)

    @property
    def zarr_store(self) -> Any:
        """zarr's own ``ObjectStore`` over this store's obstore client."""
        if self._zarr is None:
            from zarr.storage import ObjectStore

            self._zarr = ObjectStore(self.client.store)
        return self._zarr

    # -- presence ------------------------------------------------------------------------------

    def exists(self, identifier: str) -> bool:
        """Whether the scene's group exists (one HEAD request)."""
        return self.client.exists(f"{scene_key(identifier)}/zarr.json")

    def committed_bands(self, identifier: str) -> set[str]:
        """The bands whose commit record exists: one listing, nothing else."""
        prefix = commits_key(identifier) + "/"
        names = (key[len(prefix) :] for key, _ in self.client.list(prefix))
        return {
            n[: -len(RECORD_SUFFIX)]
            for n in names
            if n.endswith(RECORD_SUFFIX) and "/" not in n and n != "zarr.json"
        }

    def read_commit(self, identifier: str, band: str) -> CommitRecord | None:
        """A band's commit record, or None if the band is not committed.

        Raises:
            DamagedSceneError: If the record object is not a commit record.
        """
        key = commit_key(identifier, band)
        found = self.client.get(key)
        if found is None:
            return None
        return parse_record(found[0], band=band, where=url_of(self.url, key))

    def write_commit(self, identifier: str, record: CommitRecord) -> None:
        """Commit a band (put-if-absent, after all its chunks are written).

        Raises:
            StoreError: If a record appeared meanwhile (another writer committed the band).
        """
        payload = json.dumps(asdict(record), indent=1).encode()
        if self.client.put_if_absent(commit_key(identifier, record.band), payload) is None:
            raise StoreError(
                f"Band {record.band} of scene {identifier!r} in {str(self.url)!r} was committed "
                "by another writer while this one wrote it; expected one writer per scene at a "
                "time (the scene lock). This writer committed nothing; run "
                "`scenestore verify` on the scene."
            )

    def drop_commit(self, identifier: str, band: str) -> None:
        """Withdraw a band's commit record (before overwriting or deleting the band)."""
        self.client.delete([commit_key(identifier, band)])

    def stored_bytes(self, identifier: str, bands: list[str]) -> int:
        """Bytes the given band arrays occupy in the store."""
        return sum(size for b in bands for _, size in self.client.list(band_key(identifier, b)))

    # -- locking and writability ---------------------------------------------------------------

    @contextmanager
    def lock(self, identifier: str, *, timeout_s: float = 3600.0) -> Iterator[LeaseLock]:
        """Hold the scene's lease lock; :meth:`save` checks it before every commit."""
        with LeaseLock(self.client, lock_key(identifier), timeout_s=timeout_s) as lease:
            self._held[identifier] = lease
            try:
                yield lease
            finally:
                self._held.pop(identifier, None)

    def check_writable(self) -> str:
        """Write and delete a probe object, before any download.

        Raises:
            StoreError: If the bucket is missing, unreachable or not writable.
        """
        import uuid

        probe = f".locks/.probe-{uuid.uuid4().hex}"
        self.client.put(probe, b"")
        self.client.delete([probe])
        return str(self.url)

    # -- writing -------------------------------------------------------------------------------

    def save(
        self,
        manager: StoreManager[Any],
        dataset: xr.Dataset,
        identifier: str,
        encodings: dict[str, dict],
    ) -> int:
        """Write and commit the bands of ``dataset``, like the local ``StoreManager._save``.

        Args:
            manager: The manager whose save this is (it writes the bands, several at a time).
            dataset: The bands, aligned with their zarr chunks.
            identifier: The scene.
            encodings: Each band's encoding, with chunks.

        Returns:
            Bytes of the committed band arrays.
        """
        bands = band_names(dataset)
        present = self.committed_bands(identifier)
        if present:
            group = zarr.open_group(self.zarr_store, path=scene_key(identifier), mode="r")
            check_group_grid(group, dataset, identifier=identifier, where=str(self.url))
        else:
            self._create_scene(identifier, dataset)
        staging = f"{scene_key(identifier)}/_staging"
        self.client.delete_prefix(staging)
        try:
            written = manager.write_each_band(
                bands,
                lambda band: self._write_band(
                    identifier,
                    dataset,
                    band,
                    encodings[band],
                    replace=band in present,
                    fresh=not present,
                ),
                identifier=identifier,
            )
        finally:
            self.client.delete_prefix(staging)
        logger.info("Stored %s bands %s in %s (%d bytes)", identifier, bands, self.url, written)
        return written

    def _create_scene(self, identifier: str, ds: xr.Dataset) -> None:
        """Write the scene group with its grid only (no band is committed, so nothing is lost)."""
        key = scene_key(identifier)
        self.client.delete_prefix(key)  # leftovers of a writer killed before its first commit
        grid = xr.Dataset(coords={n: ds.coords[n] for n in GRID_VARS if n in ds.coords})
        grid.attrs = json_safe(dict(ds.attrs))
        grid.to_zarr(self.zarr_store, group=key, mode="w", consolidated=False, zarr_format=3)
        self.client.put(f"{commits_key(identifier)}/zarr.json", json.dumps(_COMMITS_GROUP).encode())

    def _write_band(
        self, identifier: str, ds: xr.Dataset, band: str, enc: dict, *, replace: bool, fresh: bool
    ) -> int:
        """Write one band (staged if it replaces a committed one), then commit it.

        ``fresh`` says the scene was just created empty, so no leftovers need deleting.
        """
        final = band_key(identifier, band)
        target = staging_key(identifier, band) if replace else final
        if not fresh:
            self.client.delete_prefix(target)  # what a killed writer left there
        var = ds[band]
        recorder = _RecordingStore(self.zarr_store, target)
        write_band_array(recorder, target, var, enc)
        chunks = dict(recorder.chunks)
        if replace:
            self.drop_commit(identifier, band)
            self.client.delete_prefix(final)
            for key, _ in self.client.list(target):
                self.client.copy(key, final + key[len(target) :])
        lease = self._held.get(identifier)
        if lease is not None:
            lease.check()
        shape = tuple(int(n) for n in var.shape)
        nbytes = sum(size for size, _ in chunks.values())
        self.write_commit(
            identifier,
            CommitRecord(
                band=band,
                shape=shape,
                chunks=tuple(int(c) for c in enc.get("chunks", shape)),
                dtype=str(enc.get("dtype", var.dtype)),
                source=var.attrs.get("source"),
                chunk_count=len(chunks),
                nbytes=nbytes,
                checksum=tree_checksum(chunks),
            ),
        )
        return nbytes

    # -- reading -------------------------------------------------------------------------------

    def open(
        self, identifier: str, bands: list[str], *, eager: bool = False, verify: bool = False
    ) -> xr.Dataset:
        """Open committed bands of a stored scene, lazily (dask) unless ``eager``.

        Chunks are checked as they are read (:class:`scenestore.integrity.CheckedStore`);
        ``verify`` first compares each band's chunk objects (one LIST per band: count and
        bytes) and metadata with its commit record, as :func:`scenestore.storage.open_scene`.

        Raises:
            SceneNotFoundError: If the scene is not stored.
            IncompleteSceneError: If a requested band is not committed.
            DamagedSceneError: If metadata, a record or a chunk is damaged.
        """
        if not self.exists(identifier):
            raise SceneNotFoundError(
                f"Scene {identifier!r} is not in the store {str(self.url)!r}; expected it to be "
                "downloaded first (download_and_store or `scenestore ingest`)."
            )
        present = self.committed_bands(identifier)
        missing = [b for b in bands if b not in present]
        if missing:
            raise IncompleteSceneError(
                f"Scene {identifier!r} in {str(self.url)!r} lacks bands {missing}; stored: "
                f"{sorted(present)}. Expected a complete scene: download the missing bands first."
            )
        if verify:  # the metadata reads cost a request each: only when asked
            for band in bands:
                self._verify_before_open(identifier, band)
        key = scene_key(identifier)
        store = CheckedStore(self.zarr_store, identifier, root=key)
        return _open_checked(store, key, bands, identifier=identifier, eager=eager)

    def _verify_before_open(self, identifier: str, band: str) -> None:
        """A band's record and zarr.json must parse and agree, as must its chunk objects."""
        from scenestore.commit import layout_mismatch
        from scenestore.integrity import damaged

        root = band_key(identifier, band)
        found = self.client.get(f"{root}/zarr.json")
        try:
            meta = json.loads(found[0]) if found is not None else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            what = "missing" if found is None else "unreadable"
            raise damaged(identifier, band, f"array metadata zarr.json is {what}")
        record = self.read_commit(identifier, band)
        if record is None:
            return
        problem = layout_mismatch(meta, record)
        if problem is None and record.chunk_count is not None:
            sizes = [size for _key, size in self.client.list(f"{root}/c/")]
            if len(sizes) != record.chunk_count:
                problem = f"{len(sizes)} chunk objects where {record.chunk_count} were committed"
            elif record.nbytes is not None and sum(sizes) != record.nbytes:
                problem = (
                    f"chunk objects hold {sum(sizes)} B where {record.nbytes} B were committed"
                )
        if problem:
            raise damaged(identifier, band, problem)
