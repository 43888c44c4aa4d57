"""The ``StoreManager`` contract: a generic, abstract store of scenes as zarr v3 groups.

Names, arguments and defaults follow the raw data store contract (``shared/spec``). Where the
original was fragile, scenestore does better:

* preconditions raise typed errors (:mod:`scenestore.errors`), never ``assert``;
* a band is present only once its commit record is written, after all its chunks, and a
  committed band is replaced only once its replacement is whole (:mod:`scenestore.store.scenes`),
  so a failed or killed download never damages a band that was already stored;
* identifiers are validated before they become keys or path names (:mod:`scenestore.ids`);
* ``missing_bands`` reads the commit records (a listing and a few hundred bytes per band),
  not the dataset;
* ``open`` is lazy (dask) unless asked to load eagerly, and keeps stored dtypes;
* ``load`` returns every requested band, also when some were stored and some downloaded;
* writers to one scene take a per-scene lock, so overlapping runs do not race.

The store is one :class:`~scenestore.store.SceneStore` whatever the location: a directory, an
object-store URL (``s3://bucket/prefix``) or ``memory://name``; the manager has no backend
branches (:mod:`scenestore.store`).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from scenestore.errors import InvalidRequestError, StoreRequiredError
from scenestore.store import SceneStore, open_store
from scenestore.store.arrays import align_chunks, band_names, fit_encodings
from scenestore.store.scenes import LOCK_TIMEOUT_S

if TYPE_CHECKING:  # annotations only: xarray loads with the pixel stack
    import xarray as xr

logger = logging.getLogger(__name__)

SceneItem = TypeVar("SceneItem")


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
        #: The store as given (a ``str`` path becomes a ``Path``; URLs stay strings).
        self.store: Path | str | None = (
            None if store is None else Path(store) if _is_path(store) else str(store)
        )
        #: The scenes of the store, on whichever backend its location names (None: no store).
        self.scenes: SceneStore | None = None if self.store is None else open_store(self.store)

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

    def download_for_store(self, item: str | SceneItem, bands: list[str]) -> xr.Dataset:
        """Fetch bands of one scene as they are to be stored (what ingest and forced loads save).

        The default is :meth:`download_scene_from_source`: bands stored as given. A subclass
        may return bands on coarser grids nested in the scene's y/x (dimensions such as
        ``y_20m``/``x_20m`` with their coordinates, see :mod:`scenestore.store.native`) to
        store them at their native resolution; :meth:`open` still gives them on y/x.
        """
        return self.download_scene_from_source(item, bands)

    # -- what the base class does -------------------------------------------------------------

    def exists(self, identifier: str) -> bool:
        """Return whether ``<store>/<identifier>.zarr`` exists (False without a store)."""
        return self.scenes is not None and self.scenes.exists(identifier)

    def missing_bands(self, identifier: str) -> list[str]:
        """Return the bands of ``self.bands`` the stored scene lacks (all without a store).

        Reads the commit records (one listing and a few hundred bytes per band); never opens
        the dataset. A garbage record counts as missing, so the band is fetched again.
        """
        if self.scenes is None:
            return list(self.bands)
        present = self.scenes.committed_bands(identifier)
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
        scenes = self._require_store("download_and_store")
        started = time.perf_counter()
        identifier = self.identifier(item)
        if not self.missing_bands(identifier):
            logger.debug("Scene %s is complete; nothing to download", identifier)
            return IngestResult(identifier, skipped=True, seconds=time.perf_counter() - started)
        with scenes.lock(identifier, timeout_s=LOCK_TIMEOUT_S):
            # Another writer may have stored bands while we waited for the lock.
            missing = self.missing_bands(identifier)
            if not missing:
                return IngestResult(identifier, skipped=True, seconds=time.perf_counter() - started)
            logger.info("Downloading %s bands %s", identifier, missing)
            dataset = self.download_for_store(item, missing)
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
        if self.scenes is None:
            return self.download_scene_from_source(item, list(self.bands))
        if force:
            with self.scenes.lock(identifier, timeout_s=LOCK_TIMEOUT_S):
                self._save(self.download_for_store(item, list(self.bands)), identifier)
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
        resolution: str = "scene",
    ) -> xr.Dataset:
        """Open a complete scene from the store only; never touches the network.

        Bands stored at their native resolution (Sentinel-2's 20 m and 60 m bands, layout 2)
        come on the scene's 10 m grid by default, each native pixel repeated lazily, block by
        block: the same Dataset, value for value, as a scene stored with every band at 10 m.

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
            resolution: ``"scene"`` (default): every band on the scene grid ``y``/``x``.
                ``"native"``: each band on the grid it is stored on, e.g. B05 on
                ``y_20m``/``x_20m`` (5490 px for a full tile) with its own pixel-centre
                coordinates, nested in ``y``/``x`` (same origin, 2 x 2 10 m pixels per 20 m
                pixel); bands of scenes stored with every band at 10 m come at 10 m.

        Raises:
            StoreRequiredError: If the manager has no store.
            SceneNotFoundError: If the scene is not stored.
            IncompleteSceneError: If a band of ``self.bands`` is missing.
            InvalidRequestError: If ``harmonize`` and a reflectance band lacks scale/offset, or
                ``resolution`` is neither "scene" nor "native".
            DamagedSceneError: If the scene's metadata, a commit record or a chunk is damaged.
        """
        self._require_store("open")
        ds = self._open(
            self.identifier(item),
            eager=eager and not harmonize,
            verify=verify,
            resolution=resolution,
        )
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
        scenes = self._require_store("save_to_store")
        with scenes.lock(identifier, timeout_s=LOCK_TIMEOUT_S):
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
        return 0 if self.scenes is None else self.scenes.stored_bytes(identifier, bands)

    def _open(
        self,
        identifier: str,
        *,
        eager: bool = False,
        verify: bool = False,
        resolution: str = "scene",
    ) -> xr.Dataset:
        scenes = self._require_store("open")
        return scenes.open(
            identifier, list(self.bands), eager=eager, verify=verify, resolution=resolution
        )

    def _save(self, dataset: xr.Dataset, identifier: str) -> int:
        """Write and commit the bands of ``dataset``; the caller holds the scene lock."""
        scenes = self._require_store("save_to_store")
        bands = band_names(dataset)
        if not bands:
            raise InvalidRequestError(
                f"Dataset for scene {identifier!r} has no band variables; expected at least one."
            )
        encodings = fit_encodings(self.encodings(bands), dataset)
        dataset = align_chunks(dataset, encodings)
        return scenes.save(
            dataset,
            identifier,
            encodings,
            translate=lambda err: self.translate_error(err, identifier),
        )

    def check_writable(self) -> Path | str:
        """Check, before any download, that the store can be created and written to.

        Raises:
            StoreRequiredError: If the manager has no store.
            StoreError: If the store is a file, not writable, or its bucket is missing.
        """
        scenes = self._require_store("check_writable")
        scenes.client.check_writable()
        return self.store if self.store is not None else str(scenes)

    def _require_store(self, operation: str) -> SceneStore:
        if self.scenes is None:
            raise StoreRequiredError(
                f"{operation} needs a store, but this {type(self).__name__} was created with "
                "store=None; expected a directory, e.g. store='./scenes'."
            )
        return self.scenes


def _is_path(store: object) -> bool:
    """A ``Path``, or a string that names no URL scheme scenestore knows."""
    from scenestore.store import store_location

    return isinstance(store, Path) or isinstance(store_location(str(store)), Path)


__all__ = ["IngestResult", "SceneItem", "StoreManager"]
