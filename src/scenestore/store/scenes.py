"""The scenes of one store, on any backend: the commit protocol, writing, opening, presence.

Written once against :class:`~scenestore.store.client.StoreClient`:

* **Commit record last.** A band is present only once ``_commits/<BAND>.json`` exists and
  parses. The record is one whole object, created with put-if-absent after every chunk write
  has returned, so a writer killed mid-band leaves no record, and a writer that lost its lock
  cannot commit over another writer's record.
* **A committed band is never touched until its replacement is whole.** A band that is not
  committed is written straight under its final name (after deleting whatever a killed writer
  left there): without a record it is not present. A replacement is written to
  ``_staging/<BAND>``; then the old record is withdrawn, the old array deleted, the staged one
  moved into place (one rename on a directory, a server-side copy on an object store) and the
  new record written last.
* **Checksums as written.** Chunk bytes are hashed as zarr writes them
  (:class:`~scenestore.store.arrays.RecordingStore`), so a commit costs no second read of the
  band (:mod:`scenestore.store.records`).
* **One writer per scene**: callers hold :meth:`SceneStore.lock` (a file lock on a directory,
  a lease object elsewhere), which is checked again just before every commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from scenestore.errors import (
    DamagedSceneError,
    IncompleteSceneError,
    SceneNotFoundError,
    ScenestoreError,
    StoreError,
)
from scenestore.store import index
from scenestore.store.arrays import (
    GRID_VARS,
    RecordingStore,
    SceneWrites,
    array_values,
    band_names,
    check_group_grid,
    json_safe,
    open_checked,
    write_band_array,
)
from scenestore.store.client import SceneLock, StoreClient
from scenestore.store.entries import FOOTPRINT_ATTR, scene_footprint
from scenestore.store.integrity import CheckedStore, damaged
from scenestore.store.layout import (
    RECORD_SUFFIX,
    band_key,
    commit_key,
    commits_key,
    lock_key,
    scene_key,
    staging_key,
)
from scenestore.store.native import (
    BASE_DIMS,
    GRID_ATTR,
    LAYOUT_ATTR,
    LAYOUT_VERSION,
    band_grid,
    grid_record,
    nest_factor,
    nested_coords,
    to_scene_grid,
)
from scenestore.store.records import (
    COMMITS_GROUP,
    CommitRecord,
    layout_mismatch,
    parse_record,
    record_bytes,
    tree_checksum,
)

if TYPE_CHECKING:  # xarray loads on first use: `ls`, `rm` and `verify` never need it
    import xarray as xr

logger = logging.getLogger(__name__)

#: Bands of one scene written at once (each streams its own chunks with dask).
BANDS_IN_FLIGHT = 4
#: Seconds a writer waits for another writer of the same scene before giving up.
LOCK_TIMEOUT_S = 3600.0

_GROUP_JSON = "zarr.json"


class SceneStore:
    """The scenes of one store (a directory, an object-store prefix or memory).

    Constructing one does no I/O.

    Args:
        client: The store's backend.
    """

    def __init__(self, client: StoreClient) -> None:
        self.client = client
        self._held: dict[str, SceneLock] = {}
        self._held_guard = threading.Lock()

    def __str__(self) -> str:
        return self.client.location

    def __repr__(self) -> str:
        return f"SceneStore({self.client!r})"

    # -- presence ------------------------------------------------------------------------------

    def exists(self, identifier: str) -> bool:
        """Whether the scene is in the store: its group metadata or a commit record exists."""
        key = scene_key(identifier)
        return self.client.exists(f"{key}/{_GROUP_JSON}") or bool(self.recorded_bands(identifier))

    def recorded_bands(self, identifier: str) -> set[str]:
        """The bands that have a record (sound or not): one listing, nothing read."""
        prefix = commits_key(identifier) + "/"
        names = (key[len(prefix) :] for key, _ in self.client.list(prefix))
        return {
            n[: -len(RECORD_SUFFIX)]
            for n in names
            if n.endswith(RECORD_SUFFIX)
            and "/" not in n
            and n != _GROUP_JSON
            and not n.startswith(".")
        }

    def committed(self, identifier: str) -> tuple[set[str], dict[str, str]]:
        """The bands whose record exists and parses, and each damaged record's problem.

        A garbage record commits nothing: :meth:`StoreManager.missing_bands` counts its band
        as missing (so a rerun fetches it again) and ``verify`` reports it. Reads every record
        (a few hundred bytes each).
        """
        records, bad = self.records(identifier)
        return set(records), bad

    def records(self, identifier: str) -> tuple[dict[str, CommitRecord], dict[str, str]]:
        """Each committed band's parsed record, and each damaged record's problem."""
        good, bad = {}, {}
        for band in self.recorded_bands(identifier):
            key = commit_key(identifier, band)
            payload = self.client.get(key)
            if payload is None:  # withdrawn since the listing
                continue
            try:
                good[band] = parse_record(payload, band=band, where=self.client.href(key))
            except DamagedSceneError as err:
                bad[band] = str(err)
        return good, bad

    def committed_bands(self, identifier: str) -> set[str]:
        """The bands whose commit record exists and parses."""
        return self.committed(identifier)[0]

    def read_commit(self, identifier: str, band: str) -> CommitRecord | None:
        """A band's commit record, or None if the band is not committed.

        Raises:
            DamagedSceneError: If the record is not a commit record.
        """
        key = commit_key(identifier, band)
        payload = self.client.get(key)
        return (
            None
            if payload is None
            else parse_record(payload, band=band, where=self.client.href(key))
        )

    def drop_commit(self, identifier: str, band: str) -> None:
        """Withdraw a band's commit record (before its array is overwritten or deleted)."""
        self.client.delete([commit_key(identifier, band)])

    def stored_bytes(self, identifier: str, bands: list[str]) -> int:
        """Bytes the given band arrays occupy in the store."""
        return sum(size for b in bands for _, size in self.client.list(band_key(identifier, b)))

    def array_meta(self, identifier: str, band: str) -> dict[str, Any]:
        """A committed band's parsed ``zarr.json``.

        Raises:
            DamagedSceneError: If it is missing or not a JSON object.
        """
        import json

        payload = self.client.get(f"{band_key(identifier, band)}/{_GROUP_JSON}")
        try:
            meta = json.loads(payload) if payload is not None else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            what = "missing" if payload is None else "unreadable"
            raise damaged(identifier, band, f"array metadata zarr.json is {what}")
        return meta

    def group(self, identifier: str) -> zarr.Group:
        """The scene's zarr group, read-only, every chunk checked as it is read."""
        key = scene_key(identifier)
        store = CheckedStore(self.client.zarr_store(read_only=True), identifier, root=key)
        return zarr.open_group(store, path=key, mode="r")

    # -- locking -------------------------------------------------------------------------------

    @contextmanager
    def lock(self, identifier: str, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[SceneLock]:
        """Hold the scene's writer lock; :meth:`save` checks it again before every commit.

        Raises:
            LeaseHeldError: If another writer holds it longer than ``timeout_s``.
        """
        with self.client.lock(lock_key(identifier), timeout_s=timeout_s) as held:
            with self._held_guard:
                self._held[identifier] = held
            try:
                yield held
            finally:
                with self._held_guard:
                    self._held.pop(identifier, None)

    def writer_active(self, identifier: str) -> bool:
        """Whether some writer holds the scene's lock now (never takes it)."""
        return self.client.lock_held(lock_key(identifier))

    # -- writing -------------------------------------------------------------------------------

    def save(
        self,
        dataset: xr.Dataset,
        identifier: str,
        encodings: dict[str, dict[str, Any]],
        *,
        translate: Callable[[Exception], Exception] | None = None,
    ) -> int:
        """Write and commit the bands of ``dataset``; the caller holds the scene's lock.

        Args:
            dataset: The bands, aligned with their zarr chunks.
            identifier: The scene.
            encodings: Each band's encoding, with chunks.
            translate: Maps a failure of the band's source (a lazy dataset fetches while it is
                written) to a scenestore error; store failures are mapped by the backend.

        Returns:
            Bytes of the committed band arrays.

        Raises:
            CoordinateMismatchError: If the grid differs from the stored scene's.
            DamagedSceneError: If the stored scene's group metadata is damaged.
        """
        bands = band_names(dataset)
        # Every band on y/x or on a grid nested in it, checked before anything is written.
        factors = {band: nest_factor(dataset, band, identifier=identifier) for band in bands}
        present, bad = self.committed(identifier)
        key = scene_key(identifier)
        group = None
        if present:
            try:
                group = zarr.open_group(self.client.zarr_store(read_only=True), path=key, mode="r")
            except (OSError, ValueError, KeyError) as err:  # zarr.json deleted or garbage
                if isinstance(err, StoreError):
                    raise
                raise DamagedSceneError(
                    f"Scene {identifier!r} in {self.client.location} has committed bands but its "
                    "group metadata (zarr.json) is missing or unreadable; run `scenestore verify "
                    "--repair`, then ingest again."
                ) from err
            check_group_grid(group, dataset, identifier=identifier, where=self.client.location)
            layout = group.attrs.get(LAYOUT_ATTR, 1)
            if (not isinstance(layout, int) or layout < LAYOUT_VERSION) and max(
                factors.values()
            ) > 1:
                # A scene of the older layout keeps every band on y/x: readers of that
                # release (and the scene's own layout record) stay right.
                dataset, encodings = _on_scene_grid(dataset, bands, encodings, factors)
                factors = dict.fromkeys(bands, 1)
        dataset = _with_grid_attrs(dataset, factors)
        replaced = present & set(bands)
        if replaced:  # the index stops claiming them before their records are withdrawn
            index.withdraw(self.client, identifier, replaced)
        try:
            if not present:
                # New scene, or leftovers of a writer killed before its first commit.
                self._create_scene(identifier, dataset)
            elif group is not None:
                self._ensure_native_coords(identifier, group, dataset, factors, present)
            for band in bands:
                if band in bad:  # a garbage record commits nothing: withdraw it
                    self.drop_commit(identifier, band)
            self.client.delete_prefix(staging_key(identifier))
            try:
                written = self._write_each(
                    bands,
                    lambda band: self._write_band(
                        identifier,
                        dataset,
                        band,
                        encodings[band],
                        replace=band in present,
                        fresh=not present,
                    ),
                    translate=translate,
                )
            finally:
                self.client.delete_prefix(staging_key(identifier))
        except Exception as err:
            if not present:
                self._drop_empty_scene(identifier)
            # Disk full or read-only is this machine's failure: not the source's, not retried.
            local = self.client.io_error(err)
            if local is not None and local is not err:
                raise local from err
            raise
        finally:
            # After the records: what the index claims is committed (failed bands are not).
            # A writer that lost its lock (a lease that expired) journals nothing: the new
            # holder may be withdrawing a band this entry would still claim.
            if self._still_held(identifier):
                index.record(self.client, identifier)
        logger.info("Stored %s bands %s in %s (%d bytes)", identifier, bands, self, written)
        return written

    def _still_held(self, identifier: str) -> bool:
        """Whether the scene's lock (if taken through :meth:`lock`) is still this writer's."""
        with self._held_guard:
            held = self._held.get(identifier)
        try:
            if held is not None:
                held.check()
        except StoreError as err:
            logger.warning("Not updating the index of %s: %s", identifier, err)
            return False
        return True

    def _write_each(
        self,
        bands: list[str],
        write: Callable[[str], int],
        *,
        translate: Callable[[Exception], Exception] | None,
    ) -> int:
        """Write and commit each band on its own, :data:`BANDS_IN_FLIGHT` at a time.

        A failed read costs only its band: the others still finish and commit, so a retry
        fetches what is still missing, not the whole scene. The first failure is raised.
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
            first = errors[0]
            if isinstance(first, ScenestoreError):
                raise first
            local = self.client.io_error(first)
            if local is not None:
                raise local from first
            raise (translate(first) if translate else first) from first
        return written

    def _create_scene(self, identifier: str, ds: xr.Dataset) -> None:
        """Write the scene group with its grid only (no band is committed, so nothing is lost).

        Leftovers of a killed writer are cleared entry by entry: the scene itself is kept, so
        a concurrent ``ls`` or ``prune`` that has just listed it never sees it vanish and return.
        """
        key = scene_key(identifier)
        for child in self.client.children(key):
            self.client.delete_prefix(f"{key}/{child}")
        # Files directly in the scene: its zarr.json, or a temp file of a killed zarr write.
        self.client.delete([k for k, _ in self.client.list(key) if "/" not in k[len(key) + 1 :]])
        names = list(GRID_VARS) + sorted(
            {d for b in band_names(ds) for d in band_grid(ds[b]) if d not in BASE_DIMS}
        )
        import xarray as xr

        grid = xr.Dataset(coords={n: ds.coords[n] for n in names if n in ds.coords})
        attrs = {**ds.attrs, LAYOUT_ATTR: LAYOUT_VERSION}
        footprint = scene_footprint(ds)
        if footprint is not None:  # what the index and offline search read, without the grid
            attrs[FOOTPRINT_ATTR] = footprint
        grid.attrs = json_safe(attrs)
        grid.to_zarr(
            SceneWrites(self.client.zarr_store()),
            group=key,
            mode="a",
            consolidated=False,
            zarr_format=3,
        )
        import json

        self.client.put(
            f"{commits_key(identifier)}/{_GROUP_JSON}", json.dumps(COMMITS_GROUP).encode()
        )

    def _ensure_native_coords(
        self,
        identifier: str,
        group: zarr.Group,
        ds: xr.Dataset,
        factors: dict[str, int],
        present: set[str],
    ) -> None:
        """Write the coordinates of native grids a stored scene does not hold yet.

        Coordinates are written before any band on their grid, so a committed band's grid is
        whole; coordinates a killed writer left half-written (no band on them committed) are
        written again. Values are those nested in the stored y/x, whatever the dataset says.

        Raises:
            DamagedSceneError: If the coordinates of a grid a committed band lies on are
                missing or off the stored grid.
        """
        key = scene_key(identifier)
        used: dict[str, str] = {}
        for band in present:
            try:
                grid = self.array_meta(identifier, band).get("attributes", {}).get(GRID_ATTR)
            except DamagedSceneError:
                continue
            if isinstance(grid, dict):
                for dim in grid.get("dims", []):
                    used.setdefault(str(dim), band)
        for band, factor in factors.items():
            if factor == 1:
                continue
            for dim, base_dim in zip(band_grid(ds[band]), BASE_DIMS, strict=True):
                expected = nested_coords(array_values(group, base_dim), factor)
                try:
                    stored = array_values(group, dim)
                except (KeyError, OSError, ValueError, TypeError):
                    stored = None
                step = abs(float(expected[1] - expected[0])) if expected.size > 1 else 1.0
                if (
                    stored is not None
                    and stored.shape == expected.shape
                    and float(np.max(np.abs(stored - expected), initial=0.0)) <= step * 1e-3
                ):
                    continue
                if dim in used:
                    raise damaged(
                        identifier,
                        used[dim],
                        f"coordinates {dim} of its grid are missing or off the scene grid",
                    )
                array = zarr.create_array(
                    store=SceneWrites(self.client.zarr_store()),
                    name=f"{key}/{dim}",
                    shape=expected.shape,
                    dtype="float64",
                    chunks=expected.shape,
                    attributes=json_safe(dict(ds[dim].attrs)),
                    dimension_names=[dim],
                    fill_value=np.nan,
                    zarr_format=3,
                    overwrite=True,
                )
                array[...] = expected

    def _drop_empty_scene(self, identifier: str) -> None:
        """Remove a scene this failed run created and no band was committed to.

        Without this a failed download leaves an empty group that ``ls`` lists. The caller
        holds the scene lock, so no other writer can be committing to it.
        """
        try:
            if not self.committed(identifier)[0]:
                self.client.delete_prefix(scene_key(identifier))
        except (OSError, ScenestoreError) as err:  # the run's own error matters more
            logger.warning("Could not remove the empty scene %s: %s", identifier, err)

    def _write_band(
        self,
        identifier: str,
        ds: xr.Dataset,
        band: str,
        enc: dict[str, Any],
        *,
        replace: bool,
        fresh: bool,
    ) -> int:
        """Write one band (staged if it replaces a committed one), then commit it.

        ``fresh`` says the scene was just created empty, so no leftovers need deleting.
        """
        final = band_key(identifier, band)
        target = staging_key(identifier, band) if replace else final
        if not fresh:
            self.client.delete_prefix(target)  # what a killed writer left there
        var = ds[band]
        recorder = RecordingStore(SceneWrites(self.client.zarr_store()), target)
        write_band_array(recorder, target, var, enc)
        chunks = dict(recorder.chunks)
        if replace:
            self.drop_commit(identifier, band)
            self.client.delete_prefix(final)
            self.client.move(target, final)
        with self._held_guard:
            held = self._held.get(identifier)
        if held is not None:
            held.check()
        shape = tuple(int(n) for n in var.shape)
        nbytes = sum(size for size, _ in chunks.values())
        record = CommitRecord(
            band=band,
            shape=shape,
            chunks=tuple(int(c) for c in enc.get("chunks", shape)),
            dtype=str(enc.get("dtype", var.dtype)),
            source=var.attrs.get("source"),
            chunk_count=len(chunks),
            nbytes=nbytes,
            checksum=tree_checksum(chunks),
        )
        if not self.client.put_if_absent(commit_key(identifier, band), record_bytes(record)):
            raise StoreError(
                f"Band {band} of scene {identifier!r} in {self.client.location!r} was committed "
                "by another writer while this one wrote it; expected one writer per scene at a "
                "time (the scene lock). This writer committed nothing; run `scenestore verify` "
                "on the scene."
            )
        return nbytes

    # -- reading -------------------------------------------------------------------------------

    def open(
        self,
        identifier: str,
        bands: list[str],
        *,
        eager: bool = False,
        verify: bool = False,
        resolution: str = "scene",
    ) -> xr.Dataset:
        """Open committed bands of a stored scene, lazily (dask) unless ``eager``.

        Every chunk is checked as it is read (:class:`~scenestore.store.integrity.CheckedStore`).

        Args:
            identifier: The scene.
            bands: Bands that must be committed.
            eager: Load them into memory.
            resolution: ``"scene"``: every band on the scene grid (``y``/``x``), bands stored
                on a coarser nested grid repeated onto it lazily, block by block (the same
                values nearest resampling gives); ``"native"``: each band as stored, on its
                own grid (``y_20m``/``x_20m``... with their coordinates).
            verify: Before reading, check each band's array metadata and chunks (count and
                bytes, from one listing) against its commit record: catches a deleted chunk,
                which zarr would read as fill. No chunk is read.

        Raises:
            SceneNotFoundError: If the scene is not stored.
            IncompleteSceneError: If a requested band is not committed.
            DamagedSceneError: If the scene's or a band's metadata, a commit record or (when
                read, or checked with ``verify``) a chunk is damaged.
        """
        if resolution not in ("scene", "native"):
            from scenestore.errors import InvalidRequestError

            raise InvalidRequestError(
                f"Unknown resolution {resolution!r}; expected 'scene' (every band on the scene "
                "grid) or 'native' (each band on the grid it is stored on)."
            )
        present, bad = self.records(identifier)
        key = scene_key(identifier)
        if not self.client.exists(f"{key}/{_GROUP_JSON}"):
            if present or bad:
                raise DamagedSceneError(
                    f"Scene {identifier!r} in {self.client.location} has committed bands but no "
                    "group metadata (zarr.json); run `scenestore verify --repair`, then ingest "
                    "again."
                )
            raise SceneNotFoundError(
                f"Scene {identifier!r} is not in the store {self.client.location}; expected it "
                "to be downloaded first (download_and_store or `scenestore ingest`)."
            )
        for band in bands:
            if band in bad:
                raise DamagedSceneError(bad[band])
        missing = [b for b in bands if b not in present]
        if missing:
            raise IncompleteSceneError(
                f"Scene {identifier!r} in {self.client.location} lacks bands {missing}; stored: "
                f"{sorted(present)}. Expected a complete scene: download the missing bands first."
            )
        for band in bands:
            meta = self.array_meta(identifier, band)
            if verify:
                record = present[band]
                problem = layout_mismatch(meta, record) or self.chunks_problem(
                    identifier, band, record
                )
                if problem:
                    raise damaged(identifier, band, problem)
        store = CheckedStore(self.client.zarr_store(read_only=True), identifier, root=key)
        return open_checked(
            store, key, bands, identifier=identifier, eager=eager, scene_grid=resolution == "scene"
        )

    def chunks_problem(self, identifier: str, band: str, record: CommitRecord | None) -> str | None:
        """Compare a band's chunks (count, bytes: one listing) with its record, reading none.

        Returns:
            A sentence naming the difference, or None when they agree (or the record is older
            than chunk counts).
        """
        if record is None or record.chunk_count is None:
            return None
        sizes = [size for _key, size in self.client.list(f"{band_key(identifier, band)}/c")]
        if len(sizes) != record.chunk_count:
            return f"{len(sizes)} chunk files where {record.chunk_count} were committed"
        if record.nbytes is not None and sum(sizes) != record.nbytes:
            return f"chunk files hold {sum(sizes)} B where {record.nbytes} B were committed"
        return None


def _with_grid_attrs(ds: xr.Dataset, factors: dict[str, int]) -> xr.Dataset:
    """``ds`` with each native band's grid recorded in its attributes (:data:`GRID_ATTR`)."""
    if max(factors.values(), default=1) == 1:
        return ds
    out = ds.copy()
    for band, factor in factors.items():
        if factor > 1:
            out[band].attrs = {**ds[band].attrs, GRID_ATTR: grid_record(ds, band, factor)}
    return out


def _on_scene_grid(
    ds: xr.Dataset,
    bands: list[str],
    encodings: dict[str, dict[str, Any]],
    factors: dict[str, int],
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """Native bands repeated onto the scene grid, their chunks scaled back to scene pixels."""
    out = to_scene_grid(ds, bands)
    out.attrs = dict(ds.attrs)
    fitted = {}
    for band, enc in encodings.items():
        enc = dict(enc)
        factor = factors.get(band, 1)
        if factor > 1 and enc.get("chunks"):
            enc["chunks"] = tuple(int(c) * factor for c in enc["chunks"])
        fitted[band] = enc
    return out, fitted


__all__ = ["BANDS_IN_FLIGHT", "LOCK_TIMEOUT_S", "SceneStore"]
