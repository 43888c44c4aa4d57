"""Band arrays in zarr: writing them chunk-aligned and hashed as written, checking grids, opening.

Everything here works on a zarr store (any backend's, :meth:`StoreClient.zarr_store`) and
knows nothing of STAC or of which bands are wanted; the commit protocol
(:mod:`scenestore.store.scenes`) decides presence.
"""

from __future__ import annotations

import json
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zarr
from zarr.core.buffer import BufferPrototype
from zarr.core.buffer.cpu import Buffer as CpuBuffer
from zarr.core.buffer.cpu import NDBuffer
from zarr.storage import WrapperStore

from scenestore.errors import (
    CoordinateMismatchError,
    DamagedSceneError,
    SourceMismatchError,
    StoreError,
)
from scenestore.redact import redact, strip_query
from scenestore.store.layout import choose_chunk, covers_whole_chunks
from scenestore.store.records import chunk_digest

if TYPE_CHECKING:  # xarray loads on first use: `ls`, `rm` and `verify` never need it
    import xarray as xr

#: Coordinates that describe the grid rather than a band.
GRID_VARS = ("x", "y", "spatial_ref")


def band_names(ds: xr.Dataset) -> list[str]:
    """Return the data variables of a scene Dataset that are bands (not grid variables)."""
    return [str(v) for v in ds.data_vars if v not in GRID_VARS]


def array_values(group: zarr.Group, name: str) -> np.ndarray[Any, Any]:
    """Read the whole array ``name`` of ``group`` (a coordinate such as ``x``) into numpy."""
    # zarr types group[name] as Array | Group; a scene's grid names are arrays, and a group in
    # their place still fails on the read (TypeError) as an untyped read did.
    return np.asarray(cast("zarr.Array[Any]", group[name])[...])


def json_safe(value: Any) -> Any:
    """Turn STAC property values into something zarr attributes (JSON) can hold."""
    return json.loads(json.dumps(value, default=str))


def fit_encodings(
    encodings: dict[str, dict[str, Any]], ds: xr.Dataset
) -> dict[str, dict[str, Any]]:
    """Fill in chunk shapes that fit each band's array where an encoding leaves them out.

    A band whose variable encoding names ``chunks`` (the source cut its reads for them) keeps
    them. Otherwise chunks are in scene-grid (``y``/``x``) pixels. A band on a grid nested
    ``f`` times coarser (:mod:`scenestore.store.native`) gets the chunk that covers the same
    ground, the scene chunk divided by ``f``, when ``f`` divides it; otherwise a divisor of
    its own shape.

    Returns:
        A copy of ``encodings`` in which every band has ``chunks`` dividing its shape
        (:func:`scenestore.store.layout.choose_chunk`) unless the encoding named its own.
    """
    fitted = {}
    for band, enc in encodings.items():
        enc = dict(enc)
        if band in ds:
            var = ds[band]
            given = var.encoding.get("chunks")
            if not enc.get("chunks") and given and len(given) == var.ndim:
                # the source cut its reads for these chunks (scenestore.stac: COG tile rows)
                enc["chunks"] = tuple(int(c) for c in given)
                fitted[band] = enc
                continue
            native = tuple(str(d) for d in var.dims[-2:]) != ("y", "x") and "x" in ds.sizes
            factor = ds.sizes["x"] // int(var.shape[-1]) if native and var.shape[-1] else 1
            if factor > 1:
                scene = enc.get("chunks") or tuple(
                    choose_chunk(int(ds.sizes[d])) for d in ("y", "x")
                )
                enc["chunks"] = tuple(
                    int(c) // factor
                    if int(c) % factor == 0 and int(c) // factor <= int(n)
                    else choose_chunk(int(n))
                    for c, n in zip(scene, var.shape, strict=True)
                )
            elif not enc.get("chunks"):
                enc["chunks"] = tuple(choose_chunk(int(n)) for n in var.shape)
        fitted[band] = enc
    return fitted


def align_chunks(ds: xr.Dataset, encodings: dict[str, dict[str, Any]]) -> xr.Dataset:
    """Rechunk dask-backed bands so that each task writes whole zarr chunks.

    A band whose dask blocks already cover whole zarr chunks (a row strip of several chunks,
    say) is left as it is: each task then writes its chunks without a lock, and even a no-op
    rechunk costs graph work.
    """
    out = ds
    for band in band_names(ds):
        chunks = encodings.get(band, {}).get("chunks")
        have = ds[band].chunks
        if not chunks or have is None or covers_whole_chunks(have, chunks, ds[band].shape):
            continue
        if out is ds:
            out = ds.copy()
        out[band] = ds[band].chunk(dict(zip(ds[band].dims, chunks, strict=True)))
    return out


def check_group_grid(group: zarr.Group, ds: xr.Dataset, *, identifier: str, where: str) -> None:
    """Check that ``ds`` lies on a stored scene's grid (close, not equal: floats round).

    ``where`` names the store in messages.

    Raises:
        CoordinateMismatchError: If shape, coordinates (beyond 1/1000 of a pixel) or CRS differ.
    """
    for dim in ("x", "y"):
        stored = array_values(group, dim)
        new = np.asarray(ds[dim].values)
        if stored.shape != new.shape:
            raise CoordinateMismatchError(
                f"Scene {identifier!r}: new bands have {new.size} {dim} values but the stored "
                f"scene in {where} has {stored.size}; expected the stored grid."
            )
        step = abs(float(stored[1] - stored[0])) if stored.size > 1 else 1.0
        diff = float(np.max(np.abs(stored - new))) if stored.size else 0.0
        if diff > step * 1e-3:
            raise CoordinateMismatchError(
                f"Scene {identifier!r}: new bands' {dim} coordinates differ from the stored ones "
                f"in {where} by up to {diff:g} (pixel size {step:g}); expected the stored "
                "grid. Use load(..., force=True) after deleting the scene to replace it."
            )
    stored_crs = (
        crs_of(dict(group["spatial_ref"].attrs), what=f"Stored scene {identifier!r}")
        if "spatial_ref" in group
        else None
    )
    new_crs = (
        crs_of(dict(ds["spatial_ref"].attrs), what=f"New bands of scene {identifier!r}")
        if "spatial_ref" in ds.coords
        else None
    )
    if stored_crs is not None and new_crs is not None and stored_crs != new_crs:
        raise CoordinateMismatchError(
            f"Scene {identifier!r}: new bands are in {new_crs.to_string()} but the stored scene "
            f"in {where} is in {stored_crs.to_string()}; expected the stored CRS."
        )


def write_band_array(store: Any, name: str, var: xr.DataArray, enc: dict[str, Any]) -> None:
    """Create one band array at ``name`` in a zarr store and stream ``var`` into it.

    The array is created with zarr directly (xarray's ``to_zarr`` costs tens of milliseconds
    per call, which small scenes pay 13 times); its metadata is what xarray writes and reads:
    ``dimension_names`` y/x and the band's attributes.

    Args:
        store: A zarr v3 store (a local directory or an object store).
        name: The array's path in the store.
        var: The band, dask-backed (streamed block by block) or in memory.
        enc: The band's encoding (dtype, chunks, fill value, compressors).
    """
    import dask.array as da

    attrs = json_safe(dict(var.attrs))
    attrs["grid_mapping"] = "spatial_ref"
    coverage = attrs.get(FOOTPRINT_COVERAGE)
    array = zarr.create_array(
        store=store,
        name=name,
        shape=var.shape,
        dtype=enc.get("dtype", var.dtype),
        chunks=tuple(enc.get("chunks") or var.shape),
        fill_value=enc.get("fill_value", 0),
        compressors=_checked_compressors(enc.get("compressors", "auto")),
        attributes=attrs,
        dimension_names=[str(d) for d in var.dims],
        zarr_format=3,
    )
    target = _ChunkWriter(array)
    if isinstance(var.data, da.Array):
        # Blocks cover whole zarr chunks (align_chunks), so tasks write without a lock. An
        # explicit local scheduler: dask's default would import distributed and, inside a
        # Dask worker, hand each block back to the cluster from within a task.
        try:
            # dask types targets as array-likes, but any object with __setitem__ is one.
            da.store(
                var.data.astype(array.dtype), target, lock=False, compute=True,  # type: ignore[arg-type]
                scheduler=block_pool(),
            )
        except BaseException:
            # dask raises the first failed block while others are still being written: let
            # none land after the caller has cleaned up (or a rerun has written the band).
            target.close()
            raise
    else:
        target[...] = np.asarray(var.data, dtype=array.dtype)
    if (
        isinstance(coverage, int | float)
        and coverage >= MIN_COVERAGE_FOR_DATA
        and not target.has_data
    ):
        raise SourceMismatchError(
            f"Band {name} from {redact(strip_query(str(attrs.get('source', '?'))))!r} is "
            f"entirely nodata, but the item's footprint covers {coverage:.0%} of the scene "
            "grid; nothing was committed (the asset does not hold what its item says: report "
            "it to the data provider, or skip the scene)."
        )


#: Attribute (set by the source, e.g. :mod:`scenestore.stac`) giving the fraction of the grid
#: the item's footprint covers; a band written without one non-fill pixel where it is at
#: least :data:`MIN_COVERAGE_FOR_DATA` is refused.
FOOTPRINT_COVERAGE = "footprint_coverage"

#: A band entirely nodata although the footprint says this much of the grid has data is not
#: what the source holds (a wrong CRS, an empty COG); a sliver of footprint may truly be empty.
MIN_COVERAGE_FOR_DATA = 0.1


def _checked_compressors(compressors: Any) -> list[Any]:
    """The band's compressors with crc32c last, checked on every read (:mod:`.integrity`)."""
    from scenestore.store.integrity import with_checksum

    if isinstance(compressors, str) and compressors == "auto":
        from zarr.codecs import ZstdCodec

        compressors = [ZstdCodec()]  # zarr's own default for numeric v3 arrays
    return with_checksum(compressors)


class _IntegerNDBuffer(NDBuffer):
    """zarr's numpy chunk buffer, with an empty-chunk test that is cheap for integer bands.

    Before writing a chunk zarr asks whether all of it equals the fill value (such chunks are
    not written). It answers with ``numpy.array_equal(..., equal_nan=True)``, and numpy (2.4)
    only knows that *signed* integers cannot hold NaN: for uint16 and uint8 it runs ``isnan``
    and copies the chunk through a boolean mask, ~10 ms per 1830 px chunk instead of ~0.2 ms;
    a full tile's ingest went from 34 s to 27 s of CPU without it. Integers have no NaN, so
    ``==`` is the same answer. Upstream: zarr-developers/zarr-python#2710 and the open PR
    #4382; drop this class once the zarr this project locks has a cheap test.
    """

    def all_equal(self, other: Any, equal_nan: bool = True) -> bool:
        data = self._data
        if other is not None and data.dtype.kind in "biu" and np.ndim(other) == 0:
            return bool(np.all(data == other))
        return super().all_equal(other, equal_nan=equal_nan)


#: The buffers band writes use (zarr's default CPU buffers but for the chunk test above).
_WRITE_PROTOTYPE = BufferPrototype(buffer=CpuBuffer, nd_buffer=_IntegerNDBuffer)


class _ChunkWriter:
    """A ``da.store`` target that writes into a zarr array with :data:`_WRITE_PROTOTYPE`."""

    def __init__(self, array: zarr.Array[Any]) -> None:
        self.array = array
        #: Whether any block written held a pixel other than the fill value. Once one has,
        #: no further block is scanned, so a band with data pays for about one block.
        self.has_data = False
        self._writing = 0
        self._closed = False
        self._idle = threading.Condition()

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._idle:
            if self._closed:  # the band failed: a block still in flight writes nothing
                return
            self._writing += 1
        try:
            if not self.has_data:
                self.has_data = bool(np.any(np.asarray(value) != self.array.fill_value))
            self.array.set_basic_selection(key, value, prototype=_WRITE_PROTOTYPE)
        finally:
            with self._idle:
                self._writing -= 1
                self._idle.notify_all()

    def close(self) -> None:
        """Refuse further blocks and wait until those being written are written."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._writing == 0)


#: Blocks (row strips of whole chunks) read, decoded and compressed at once, across every
#: band and scene being written. GDAL reads and Blosc release the GIL, so twice the cores keeps
#: both busy while requests wait; each block of a full tile holds ~100 MB while in flight.
BLOCKS_IN_FLIGHT = 4

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def block_pool() -> ThreadPoolExecutor:
    """The process-wide thread pool that reads and writes band blocks (created on first use).

    One pool shared by every band being written bounds the work in flight (and so memory and
    open requests) however many bands and scenes are written at once.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=BLOCKS_IN_FLIGHT, thread_name_prefix="block")
        return _pool


class SceneWrites(WrapperStore[Any]):
    """A zarr store wrapper for writing scene groups into a store's root.

    zarr writes the metadata of every parent group it creates, so writing ``<id>.zarr/B02``
    would make the store's root a zarr group too (``<store>/zarr.json``): the store is a
    directory of scenes, not one zarr hierarchy, and nothing is written to its root.
    """

    def _with_store(self, store: Any) -> SceneWrites:
        return type(self)(store)

    async def set(self, key: str, value: Any) -> None:
        if key != "zarr.json":
            await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        if key != "zarr.json":
            await self._store.set_if_not_exists(key, value)


class RecordingStore(WrapperStore[Any]):
    """A zarr store wrapper that hashes every chunk written under one array prefix, as written.

    ``chunks`` maps each chunk's name relative to the array (``c/0/1``) to its length and
    digest (:func:`scenestore.store.records.chunk_digest`): the makings of the commit record's
    checksum, without reading the band back.
    """

    def __init__(
        self, store: Any, prefix: str = "", chunks: dict[str, tuple[int, bytes]] | None = None
    ) -> None:
        super().__init__(store)
        self.prefix = prefix.rstrip("/") + "/c/"
        self.chunks: dict[str, tuple[int, bytes]] = {} if chunks is None else chunks
        self._guard = threading.Lock()

    def _with_store(self, store: Any) -> RecordingStore:
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


def open_checked(
    store: Any,
    group: str | None,
    bands: list[str],
    *,
    identifier: str,
    eager: bool,
    scene_grid: bool = False,
) -> xr.Dataset:
    """Open bands of a scene group through a checking store; metadata zarr cannot parse, and
    (eagerly) chunks that fail to decode, become :class:`DamagedSceneError`.

    With ``scene_grid`` bands stored on a native grid are repeated onto the scene grid, lazily
    (:func:`scenestore.store.native.to_scene_grid`); otherwise each band comes as stored.
    """
    import xarray as xr

    from scenestore.store.integrity import damaged
    from scenestore.store.native import to_scene_grid

    try:
        with warnings.catch_warnings():
            # Entries the protocol ignores by design (a replacement in _staging, a killed
            # writer's temp file) are no zarr nodes; `scenestore verify` reports the leftovers.
            warnings.filterwarnings("ignore", "Object at .* is not recognized", UserWarning)
            # chunks={} keeps the stored chunking; no fill masking, so uint16 stays uint16.
            ds: xr.Dataset = xr.open_zarr(
                store, group=group, consolidated=False, chunks={}, mask_and_scale=False
            )
        if "spatial_ref" in ds.data_vars:
            ds = ds.set_coords("spatial_ref")
        absent = [b for b in bands if b not in ds]
        if absent:  # committed, but zarr found no array there
            raise damaged(identifier, absent[0], "array metadata zarr.json is missing")
        # to_scene_grid takes y/x from the whole group: a native band alone does not carry them
        ds = to_scene_grid(ds, bands) if scene_grid else ds[bands]
    except StoreError:  # damage named already, a link refused, or the store unreachable
        raise
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise DamagedSceneError(
            f"Scene {identifier!r}: zarr cannot open its metadata ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:100] if str(err) else ''}); run `scenestore verify "
            "--repair`, then ingest again."
        ) from err
    if not eager:
        return ds
    try:
        return ds.load()
    except DamagedSceneError:
        raise
    except (ValueError, RuntimeError) as err:  # a codec's failure on bytes the guard let pass
        raise damaged(identifier, "?", f"a chunk fails to decode ({err})") from err


def parse_crs(text: Any, *, what: str) -> Any:
    """Turn a CRS in any form pyproj accepts (WKT, ``EPSG:32633``, a PROJ string, an EPSG
    integer) into a ``pyproj.CRS``; compare the results with ``==`` (pyproj equality).

    Args:
        text: The CRS as given.
        what: What holds it, for the error message (e.g. "Scene 'x' spatial_ref").

    Raises:
        InvalidRequestError: If pyproj cannot parse it.
    """
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    from scenestore.errors import InvalidRequestError

    try:
        return CRS.from_user_input(text)
    except (CRSError, TypeError, ValueError) as err:
        shown = str(text) if len(str(text)) <= 80 else f"{str(text)[:77]}..."
        raise InvalidRequestError(
            f"{what} has CRS {shown!r}, which pyproj cannot parse; expected WKT, an EPSG code "
            "such as 'EPSG:32633' or a PROJ string."
        ) from err


def crs_text(attrs: dict[str, Any]) -> Any:
    """The CRS a ``spatial_ref`` variable's attributes give (``crs_wkt``, then ``spatial_ref``)."""
    return attrs.get("crs_wkt") or attrs.get("spatial_ref") or None


def crs_of(attrs: dict[str, Any], *, what: str = "spatial_ref") -> Any:
    text = crs_text(attrs)
    return parse_crs(text, what=what) if text else None
