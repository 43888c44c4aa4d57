"""The ``StoreManager`` contract: a generic, abstract store of scenes as zarr v3 groups.

Names, arguments and defaults follow the raw data store contract (``shared/spec``). Where the
original was fragile, scenestore does better:

* preconditions raise typed errors (:mod:`scenestore.errors`), never ``assert``;
* a band is present only once its commit record is written, after all its chunks
  (:mod:`scenestore.commit`); bands are written to a staging group and moved into place, so a
  failed or killed download never damages a band that was already stored;
* identifiers are validated before they become path names (:mod:`scenestore.ids`);
* ``missing_bands`` reads one directory listing, not the dataset;
* ``open`` is lazy (dask) unless asked to load eagerly, and keeps stored dtypes;
* ``load`` returns every requested band, also when some were stored and some downloaded;
* writers to one scene take a per-scene file lock, so overlapping runs do not race.

A store given as an object-store URL (``s3://bucket/prefix``) keeps the same layout and
promises with conditional writes instead of rename and file locks (:mod:`scenestore.objstore`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import xarray as xr
from filelock import FileLock

from scenestore.commit import CommitRecord, drop_commit, valid_committed_bands, write_commit
from scenestore.errors import (
    InvalidRequestError,
    ScenestoreError,
    StoreError,
    StoreRequiredError,
    store_io_error,
)
from scenestore.fsafety import checked_scene, inside_store, remove_tree_inside
from scenestore.layout import LOCKS_DIR, lock_path, scene_path
from scenestore.objstore.location import is_object_url
from scenestore.storage import (
    align_chunks,
    band_names,
    check_grid,
    clear_staging,
    create_scene,
    fingerprint,
    fit_encodings,
    open_scene,
    prepare_staging,
    promote_staged,
    write_bands,
)

if TYPE_CHECKING:
    from scenestore.objstore.scenes import ObjectScenes

logger = logging.getLogger(__name__)

SceneItem = TypeVar("SceneItem")

#: Bands of one scene written at once (each streams its own chunks with dask).
BANDS_IN_FLIGHT = 4

#: Seconds a writer waits for another writer of the same scene before giving up.
LOCK_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class IngestResult:
    """What one ``ingest`` call did to one scene.

    Attributes:
        identifier: The scene identifier.
        fetched: Bands downloaded and committed by this call (empty when nothing was missing).
        bytes_written: Bytes the committed arrays occupy on disk.
        seconds: Wall time of the call.
        skipped: True when the scene was already complete and nothing was downloaded.
        error: One-line reason when the scene failed (set by batch callers, never raised here).
    """

    identifier: str
    fetched: tuple[str, ...] = ()
    bytes_written: int = 0
    seconds: float = 0.0
    skipped: bool = False
    error: str | None = None


class StoreManager(ABC, Generic[SceneItem]):
    """Keeps scenes of one source as ``<store>/<identifier>.zarr``, one variable per band.

    Args:
        bands: The bands this manager handles.
        store: Directory holding one zarr store per scene (a ``str`` becomes a ``Path``), or
            an object-storage URL such as ``s3://bucket/prefix`` (kept as the string; see
            :mod:`scenestore.objstore`); ``None`` means no store: everything is downloaded and
            nothing is kept.

    Raises:
        InvalidRequestError: If ``bands`` is empty or repeats a band.
    """

    def __init__(self, bands: list[str], store: str | Path | None = None) -> None:
        bands = list(bands)
        if not bands:
            raise InvalidRequestError(f"Empty band list {bands!r}; expected at least one band.")
        if len(set(bands)) != len(bands):
            raise InvalidRequestError(f"Band list {bands!r} repeats a band; expected each once.")
        self.bands = bands
        #: The object-storage backend when ``store`` is a URL (None for a local store).
        self.objects: ObjectScenes | None = None
        if is_object_url(store):
            from scenestore.objstore.scenes import ObjectScenes

            self.objects = ObjectScenes(str(store))
            self.store: Path | str | None = str(store)
        else:
            self.store = Path(store) if isinstance(store, str) else store

    # -- what a subclass supplies -------------------------------------------------------------

    @abstractmethod
    def identifier(self, item: str | SceneItem) -> str:
        """Return the scene's unique identifier, from an id string or an item."""

    @abstractmethod
    def encodings(self, bands: list[str]) -> dict[str, dict]:
        """Return the zarr encoding per band (dtype, compressors, chunks, fill value)."""

    @abstractmethod
    def download_scene_from_source(self, item: str | SceneItem, bands: list[str]) -> xr.Dataset:
        """Fetch the given bands of one scene as a Dataset on x/y with a spatial_ref coordinate."""

    # -- what the base class does -------------------------------------------------------------

    def exists(self, identifier: str) -> bool:
        """Return whether ``<store>/<identifier>.zarr`` exists (False without a store)."""
        if self.store is None:
            return False
        if self.objects is not None:
            return self.objects.exists(identifier)
        return scene_path(self.store, identifier).exists()

    def missing_bands(self, identifier: str) -> list[str]:
        """Return the bands of ``self.bands`` the stored scene lacks (all without a store).

        Reads the commit records (one directory listing and a few hundred bytes per band);
        never opens the dataset. A garbage record counts as missing, so the band is fetched
        again. On an object store it is one LIST of the records (a record there is one PUT,
        whole or absent; ``verify`` finds one damaged from outside).
        """
        if self.store is None:
            return list(self.bands)
        if self.objects is not None:
            present = self.objects.committed_bands(identifier)
        else:
            present, _damaged = valid_committed_bands(checked_scene(self.store, identifier))
        return [b for b in self.bands if b not in present]

    def complete(self, identifier: str) -> bool:
        """Return whether no band is missing."""
        return not self.missing_bands(identifier)

    def download_and_store(self, item: str | SceneItem) -> None:
        """Download the missing bands of a scene and save them; nothing if none is missing.

        Raises:
            StoreRequiredError: If the manager has no store.
        """
        self.ingest(item)

    def ingest(self, item: str | SceneItem) -> IngestResult:
        """Like :meth:`download_and_store`, but report what was fetched.

        Raises:
            StoreRequiredError: If the manager has no store.
        """
        store = self._require_store("download_and_store")
        started = time.perf_counter()
        identifier = self.identifier(item)
        if not self.missing_bands(identifier):
            logger.debug("Scene %s is complete; nothing to download", identifier)
            return IngestResult(identifier, skipped=True, seconds=time.perf_counter() - started)
        with self._lock(store, identifier):
            # Another writer may have stored bands while we waited for the lock.
            missing = self.missing_bands(identifier)
            if not missing:
                return IngestResult(identifier, skipped=True, seconds=time.perf_counter() - started)
            logger.info("Downloading %s bands %s", identifier, missing)
            dataset = self.download_scene_from_source(item, missing)
            written = self._save(dataset, identifier)
        return IngestResult(
            identifier,
            fetched=tuple(missing),
            bytes_written=written,
            seconds=time.perf_counter() - started,
        )

    def load(self, item: str | SceneItem, force: bool = False) -> xr.Dataset:
        """Return every band of ``self.bands`` for a scene, downloading what is needed.

        Args:
            item: The scene, as an id string or an item.
            force: Download all bands from the source even if stored, and save them over what
                was stored (when there is a store).

        Returns:
            A Dataset with every requested band. With a store it is opened lazily from the
            store after saving (the original returned only the newly downloaded bands).
        """
        identifier = self.identifier(item)
        if self.store is None:
            return self.download_scene_from_source(item, list(self.bands))
        if force:
            with self._lock(self.store, identifier):
                self._save(self.download_scene_from_source(item, list(self.bands)), identifier)
        elif self.missing_bands(identifier):
            self.ingest(item)
        return self._open(identifier)

    def open(
        self,
        item: str | SceneItem,
        *,
        eager: bool = False,
        harmonize: bool = False,
        verify: bool = False,
    ) -> xr.Dataset:
        """Open a complete scene from the store only; never touches the network.

        Every chunk read is checked against its crc32c checksum (bands written before
        checksums: against its Blosc header's length); a damaged chunk raises
        :class:`~scenestore.errors.DamagedSceneError` naming the scene, band and chunk, when
        it is computed (at once with ``eager``).

        Args:
            item: The scene, as an id string or an item.
            eager: Load all bands into memory (stored dtypes are kept) instead of lazily.
            verify: Before opening, check each band's metadata and chunk files (count and
                bytes) against its commit record, so a deleted chunk is found instead of
                read as fill. Lists the chunk files and reads none (about a millisecond
                for a full tile's 13 bands); ``scenestore verify`` re-hashes every byte.
            harmonize: Turn reflectance bands into float32 reflectance with each band's stored
                ``scale``/``offset`` (nodata becomes NaN); SCL is kept as stored. See
                :mod:`scenestore.reflectance`.

        Raises:
            StoreRequiredError: If the manager has no store.
            SceneNotFoundError: If the scene is not stored.
            IncompleteSceneError: If a band of ``self.bands`` is missing.
            InvalidRequestError: If ``harmonize`` and a reflectance band lacks scale/offset.
            DamagedSceneError: If the scene's metadata, a commit record or a chunk is damaged.
        """
        self._require_store("open")
        ds = self._open(self.identifier(item), eager=eager and not harmonize, verify=verify)
        if not harmonize:
            return ds
        from scenestore.reflectance import harmonize as to_reflectance

        ds = to_reflectance(ds)
        return ds.load() if eager else ds

    def save_to_store(self, dataset: xr.Dataset, identifier: str) -> None:
        """Save the bands of ``dataset`` as scene ``identifier``.

        A new scene is written whole. For a stored scene, the coordinates must match the
        stored ones (within 1/1000 of a pixel) and the stored x/y are kept; new bands are
        added and bands already there are replaced.

        Raises:
            StoreRequiredError: If the manager has no store.
            CoordinateMismatchError: If the grid differs from the stored scene's; the store is
                left unchanged.
        """
        store = self._require_store("save_to_store")
        with self._lock(store, identifier):
            self._save(dataset, identifier)

    def translate_error(self, err: Exception, identifier: str) -> Exception:
        """Map an exception raised while fetching and writing a scene to a scenestore error.

        Subclasses map their source's failures (HTTP status, timeouts) to
        :class:`~scenestore.errors.SourceError` / ``TransientSourceError``; the default
        returns ``err`` unchanged.
        """
        return err

    # -- internals ----------------------------------------------------------------------------

    def stored_bytes(self, identifier: str, bands: list[str]) -> int:
        """Return the bytes the given stored band arrays occupy (0 without a store)."""
        if self.store is None:
            return 0
        if self.objects is not None:
            return self.objects.stored_bytes(identifier, bands)
        from scenestore.storage import array_bytes

        scene = checked_scene(self.store, identifier, entries=bands)
        return sum(array_bytes(scene, b) for b in bands)

    def _open(self, identifier: str, *, eager: bool = False, verify: bool = False) -> xr.Dataset:
        store = self._require_store("open")
        if self.objects is not None:
            return self.objects.open(identifier, list(self.bands), eager=eager, verify=verify)
        return open_scene(
            checked_scene(store, identifier, entries=self.bands),
            list(self.bands),
            eager=eager,
            verify=verify,
        )

    def _save(self, dataset: xr.Dataset, identifier: str) -> int:
        """Write and commit the bands of ``dataset``; the caller holds the scene lock."""
        store = self._require_store("save_to_store")
        bands = band_names(dataset)
        if not bands:
            raise InvalidRequestError(
                f"Dataset for scene {identifier!r} has no band variables; expected at least one."
            )
        encodings = fit_encodings(self.encodings(bands), dataset)
        dataset = align_chunks(dataset, encodings)
        if self.objects is not None:
            return self.objects.save(self, dataset, identifier, encodings)
        # A linked scene, _commits or band is refused: a write never goes through a link.
        scene = checked_scene(store, identifier, entries=bands)
        self._ensure_store_dir(store)
        present, _damaged = valid_committed_bands(scene)
        if present:
            check_grid(scene, dataset, identifier=identifier)
        try:
            if not present:
                # New scene, or leftovers of a writer killed before its first commit.
                create_scene(scene, dataset)
            clear_staging(scene)
            prepare_staging(scene)
            try:
                written = self.write_each_band(
                    bands,
                    lambda band: self._write_band(scene, dataset, band, encodings[band]),
                    identifier=identifier,
                )
            finally:
                clear_staging(scene)
        except Exception as err:
            if not present:
                self._drop_empty_scene(store, scene)
            # Disk full or read-only is this machine's failure: not the source's, not retried.
            local = store_io_error(err, scene)
            if local is not None and local is not err:
                raise local from err
            raise
        logger.info("Stored %s bands %s (%d bytes)", identifier, bands, written)
        return written

    @staticmethod
    def _drop_empty_scene(store: Path, scene: Path) -> None:
        """Remove a scene group this failed run created and no band was committed to.

        Without this a failed download leaves an empty group that ``ls`` lists. The caller
        holds the scene lock, so no other writer can be committing to it.
        """
        try:
            if scene.is_dir() and not valid_committed_bands(scene)[0]:
                remove_tree_inside(store, scene)
        except OSError as err:  # the run's own error matters more than the leftover
            logger.warning("Could not remove the empty scene group %s: %s", scene, err)

    def write_each_band(
        self, bands: list[str], write: Callable[[str], int], *, identifier: str
    ) -> int:
        """Write and commit each band on its own, :data:`BANDS_IN_FLIGHT` at a time.

        A failed read costs only its band: the other bands still finish and commit, so a retry
        fetches what is still missing, not the whole scene.

        Args:
            bands: Bands to write.
            write: Writes and commits one band; returns its bytes.
            identifier: The scene, for error messages.

        Returns:
            Bytes written over all bands.

        Raises:
            ScenestoreError: The first band's failure, source failures translated by
                :meth:`translate_error` (lazy datasets fetch while writing, so they surface
                here).
        """
        written, errors = 0, []
        with ThreadPoolExecutor(
            max_workers=min(len(bands), BANDS_IN_FLIGHT), thread_name_prefix="band"
        ) as pool:
            for future in [pool.submit(write, band) for band in bands]:
                try:
                    written += future.result()
                except Exception as err:  # collected: the other bands still finish and commit
                    errors.append(err)
        if errors:
            err = errors[0]
            if isinstance(err, ScenestoreError):
                raise err
            # Disk full or read-only is this machine's failure: not the source's, not retried.
            local = store_io_error(err, self.store)
            if local is not None:
                raise local from err
            raise self.translate_error(err, identifier) from err
        return written

    def _write_band(self, scene: Path, dataset: xr.Dataset, band: str, enc: dict) -> int:
        """Stage, fingerprint, promote and commit one band; return its bytes on disk."""
        staged = write_bands(scene, dataset[[band]], {band: enc})
        # Fingerprint the staged copy: promotion is a rename, the bytes do not change.
        print_ = fingerprint(staged)
        drop_commit(scene, band)
        promote_staged(scene, band)
        shape = tuple(int(n) for n in dataset[band].shape)
        write_commit(
            scene,
            CommitRecord(
                band=band,
                shape=shape,
                chunks=tuple(int(c) for c in enc.get("chunks", shape)),
                dtype=str(enc.get("dtype", dataset[band].dtype)),
                source=dataset[band].attrs.get("source"),
                chunk_count=print_.chunk_count,
                nbytes=print_.nbytes,
                checksum=print_.checksum,
            ),
        )
        return print_.nbytes

    def check_writable(self) -> Path | str:
        """Check, before any download, that the store can be created and written to.

        Raises:
            StoreRequiredError: If the manager has no store.
            StoreError: If the store path is a file or not writable.
        """
        store = self._require_store("check_writable")
        if self.objects is not None:
            return self.objects.check_writable()
        self._ensure_store_dir(store)
        probe = inside_store(store, store / LOCKS_DIR)
        try:
            probe.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=probe, prefix=".probe-"):
                pass
        except OSError as err:
            raise StoreError(
                f"Store {str(store)!r} is not writable ({err.strerror}); expected a directory "
                "this user can write to."
            ) from err
        return store

    def _require_store(self, operation: str) -> Any:
        if self.store is None:
            raise StoreRequiredError(
                f"{operation} needs a store, but this {type(self).__name__} was created with "
                "store=None; expected a directory, e.g. store='./scenes'."
            )
        return self.store

    @staticmethod
    def _ensure_store_dir(store: Path) -> None:
        if store.exists() and not store.is_dir():
            raise StoreError(
                f"Store path {str(store)!r} is a file; expected a directory (or a path to create)."
            )
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"Cannot create the store directory {str(store)!r}: {err.strerror}; expected a "
                "writable location."
            ) from err

    def _lock(self, store: Path, identifier: str) -> FileLock | AbstractContextManager[Any]:
        if self.objects is not None:
            return self.objects.lock(identifier, timeout_s=LOCK_TIMEOUT_S)
        self._ensure_store_dir(store)
        # filelock opens the lock with O_TRUNC: a linked .locks or lock file is refused.
        path = inside_store(store, lock_path(store, identifier))
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"Cannot write to the store {str(store)!r}: {err.strerror}; expected a writable "
                "directory."
            ) from err
        return FileLock(path, timeout=LOCK_TIMEOUT_S)


__all__ = ["IngestResult", "SceneItem", "StoreManager"]
