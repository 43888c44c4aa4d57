"""Scene zarr I/O: create a scene group, check its grid, append bands, open it.

Everything here works on one ``<identifier>.zarr`` directory and knows nothing of STAC or of
which bands are wanted; the commit protocol (:mod:`scenestore.commit`) decides presence.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.core.buffer import BufferPrototype
from zarr.core.buffer.cpu import Buffer as CpuBuffer
from zarr.core.buffer.cpu import NDBuffer

from scenestore.commit import ensure_commits_group
from scenestore.errors import (
    CoordinateMismatchError,
    DamagedSceneError,
    IncompleteSceneError,
    SceneNotFoundError,
    SourceMismatchError,
    UnsafePathError,
)
from scenestore.fsafety import inside_store, remove_tree_inside
from scenestore.layout import STAGING_DIR, choose_chunk, covers_whole_chunks, identifier_of
from scenestore.redact import redact, strip_query

#: Coordinates that describe the grid rather than a band.
GRID_VARS = ("x", "y", "spatial_ref")


def band_names(ds: xr.Dataset) -> list[str]:
    """Return the data variables of a scene Dataset that are bands (not grid variables)."""
    return [str(v) for v in ds.data_vars if v not in GRID_VARS]


def json_safe(value: Any) -> Any:
    """Turn STAC property values into something zarr attributes (JSON) can hold."""
    return json.loads(json.dumps(value, default=str))


def fit_encodings(encodings: dict[str, dict], ds: xr.Dataset) -> dict[str, dict]:
    """Fill in chunk shapes that fit each band's array where an encoding leaves them out.

    Returns:
        A copy of ``encodings`` in which every band has ``chunks`` dividing its shape
        (:func:`scenestore.layout.choose_chunk`) unless the encoding named its own.
    """
    fitted = {}
    for band, enc in encodings.items():
        enc = dict(enc)
        if not enc.get("chunks") and band in ds:
            enc["chunks"] = tuple(choose_chunk(int(n)) for n in ds[band].shape)
        fitted[band] = enc
    return fitted


def align_chunks(ds: xr.Dataset, encodings: dict[str, dict]) -> xr.Dataset:
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


def create_scene(scene: Path, ds: xr.Dataset) -> None:
    """Write a new scene group holding only the grid (x, y, spatial_ref) and scene attributes.

    Anything already in ``scene`` is replaced: callers only do this when no band is committed.
    The directory itself is kept (only its entries are cleared), so a concurrent ``ls`` or
    ``prune`` that has just listed the scene never sees it vanish and come back.
    """
    if scene.is_dir():
        for entry in list(scene.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:  # a file, or a link (removed itself, never followed)
                entry.unlink()
    else:
        scene.mkdir()
    grid = xr.Dataset(coords={name: ds.coords[name] for name in GRID_VARS if name in ds.coords})
    grid.attrs = json_safe(dict(ds.attrs))
    grid.to_zarr(scene, mode="a", consolidated=False, zarr_format=3, compute=True)
    ensure_commits_group(scene)


def check_grid(scene: Path, ds: xr.Dataset, *, identifier: str) -> None:
    """Check that ``ds`` lies on the stored scene's grid (close, not equal: floats round).

    Raises:
        CoordinateMismatchError: If shape, coordinates (beyond 1/1000 of a pixel) or CRS differ.
    """
    try:
        group = zarr.open_group(scene, mode="r")
    except (OSError, ValueError, KeyError) as err:  # zarr.json deleted or garbage
        raise DamagedSceneError(
            f"Scene {identifier!r} in {scene.parent} has committed bands but its group "
            "metadata (zarr.json) is missing or unreadable; run `scenestore verify --repair`, "
            "then ingest again."
        ) from err
    check_group_grid(group, ds, identifier=identifier, where=str(scene.parent))


def check_group_grid(group: zarr.Group, ds: xr.Dataset, *, identifier: str, where: str) -> None:
    """:func:`check_grid` on an open scene group (any zarr store); ``where`` names the store.

    Raises:
        CoordinateMismatchError: If shape, coordinates (beyond 1/1000 of a pixel) or CRS differ.
    """
    for dim in ("x", "y"):
        stored = np.asarray(group[dim][...])
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
        _crs_of(dict(group["spatial_ref"].attrs), what=f"Stored scene {identifier!r}")
        if "spatial_ref" in group
        else None
    )
    new_crs = (
        _crs_of(dict(ds["spatial_ref"].attrs), what=f"New bands of scene {identifier!r}")
        if "spatial_ref" in ds.coords
        else None
    )
    if stored_crs is not None and new_crs is not None and stored_crs != new_crs:
        raise CoordinateMismatchError(
            f"Scene {identifier!r}: new bands are in {new_crs.to_string()} but the stored scene "
            f"in {where} is in {stored_crs.to_string()}; expected the stored CRS."
        )


def prepare_staging(scene: Path) -> None:
    """Create the staging group, once, before bands are staged into it concurrently.

    Raises:
        UnsafePathError: If the scene or its ``_staging`` is a symlink (never written through).
    """
    zarr.open_group(inside_store(scene.parent, scene / STAGING_DIR), mode="a", zarr_format=3)


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
        da.store(
            var.data.astype(array.dtype), target, lock=False, compute=True, scheduler=block_pool()
        )
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
    from scenestore.integrity import with_checksum

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

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        #: Whether any block written held a pixel other than the fill value. Once one has,
        #: no further block is scanned, so a band with data pays for about one block.
        self.has_data = False

    def __setitem__(self, key: Any, value: Any) -> None:
        if not self.has_data:
            self.has_data = bool(np.any(np.asarray(value) != self.array.fill_value))
        self.array.set_basic_selection(key, value, prototype=_WRITE_PROTOTYPE)


def write_bands(scene: Path, ds: xr.Dataset, encodings: dict[str, dict]) -> Path:
    """Write one band array into the staging group, streaming dask blocks to disk.

    Nothing under the band's own name changes here: :func:`promote_staged` moves the finished
    array into place, so a failed or killed download never damages a band already stored.

    Returns:
        The staged array directory.
    """
    from zarr.storage import LocalStore

    (band,) = band_names(ds)
    target = staged_array(scene, band)
    shutil.rmtree(target, ignore_errors=True)
    write_band_array(LocalStore(scene / STAGING_DIR), band, ds[band], encodings[band])
    return target


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


def promote_staged(scene: Path, band: str) -> None:
    """Move a fully written staged band array to its final name (its commit must be dropped)."""
    staged = staged_array(scene, band)
    target = inside_store(scene.parent, scene / band)
    remove_tree_inside(scene.parent, target)
    staged.rename(target)


def clear_staging(scene: Path) -> None:
    """Remove what a killed or failed writer left in the staging group.

    Raises:
        UnsafePathError: If ``_staging`` is a symlink: what it points to is never deleted.
    """
    _remove_quietly(scene, scene / STAGING_DIR)


def array_bytes(scene: Path, band: str) -> int:
    """Return the bytes a stored band array occupies on disk."""
    root = scene / band
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


@dataclass(frozen=True)
class Fingerprint:
    """What a band array's chunk files add up to (see :func:`fingerprint`)."""

    chunk_count: int
    nbytes: int
    checksum: str


def fingerprint(array_dir: Path) -> Fingerprint:
    """Count, measure and hash the chunk files of one zarr array directory.

    The hash (BLAKE2b) covers each chunk file's path relative to the array and its bytes, in
    path order, so a missing, extra, truncated or altered chunk changes it.
    """
    digest = hashlib.blake2b(digest_size=16)
    count = nbytes = 0
    chunk_root = array_dir / "c"
    files = sorted(p for p in chunk_root.rglob("*") if p.is_file()) if chunk_root.is_dir() else []
    for path in files:
        data = path.read_bytes()
        digest.update(str(path.relative_to(array_dir)).encode() + b"\0")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        count += 1
        nbytes += len(data)
    return Fingerprint(count, nbytes, f"blake2b:{digest.hexdigest()}")


def staged_array(scene: Path, band: str) -> Path:
    """The staging directory of a band being written (refused if reached through a link)."""
    return inside_store(scene.parent, scene / STAGING_DIR / band)


def remove_arrays(scene: Path, bands: list[str]) -> None:
    """Delete band arrays (their commit records must already be gone)."""
    for band in bands:
        _remove_quietly(scene, scene / band)


def _remove_quietly(scene: Path, path: Path) -> None:
    """Delete a directory of ``scene`` (the store is its parent), ignoring all but link errors."""
    try:
        remove_tree_inside(scene.parent, path)
    except UnsafePathError:
        raise
    except OSError:  # as rmtree(ignore_errors=True) did: leftovers are cleared on the next run
        pass


def open_scene(
    scene: Path, bands: list[str], *, eager: bool = False, verify: bool = False
) -> xr.Dataset:
    """Open committed bands of a stored scene, lazily (dask) unless ``eager``.

    Every chunk is checked as it is read (:class:`scenestore.integrity.CheckedStore`).

    Args:
        scene: The scene directory.
        bands: Bands that must be committed.
        eager: Load them into memory.
        verify: Before reading, check each band's array metadata and chunk files (count and
            bytes) against its commit record: catches a deleted chunk, which zarr would read
            as fill. Costs a directory listing and a stat per chunk file; no chunk is read.

    Raises:
        SceneNotFoundError: If the scene is not stored.
        IncompleteSceneError: If a requested band is not committed.
        DamagedSceneError: If the scene's or a band's metadata, a commit record or (when read,
            or checked with ``verify``) a chunk is damaged.
    """
    from zarr.storage import LocalStore

    from scenestore.commit import layout_mismatch, read_commit, valid_committed_bands
    from scenestore.integrity import CheckedStore, damaged

    identifier = identifier_of(scene) or scene.name
    present, bad_records = valid_committed_bands(scene)
    if not (scene / "zarr.json").is_file():
        if present or bad_records:
            raise DamagedSceneError(
                f"Scene {identifier!r} in {scene.parent} has committed bands but no group "
                "metadata (zarr.json); run `scenestore verify --repair`, then ingest again."
            )
        raise SceneNotFoundError(
            f"Scene {identifier!r} is not in the store {scene.parent}; expected it to be "
            "downloaded first (download_and_store or `scenestore ingest`)."
        )
    for band in bands:
        if band in bad_records:
            raise DamagedSceneError(bad_records[band])
    missing = [b for b in bands if b not in present]
    if missing:
        raise IncompleteSceneError(
            f"Scene {identifier!r} in {scene.parent} lacks bands {missing}; stored: "
            f"{sorted(present)}. Expected a complete scene: download the missing bands first."
        )
    for band in bands:
        try:
            meta = json.loads((scene / band / "zarr.json").read_bytes())
        except (OSError, ValueError) as err:
            what = "missing" if isinstance(err, FileNotFoundError) else "unreadable"
            raise damaged(identifier, band, f"array metadata zarr.json is {what}") from err
        if verify:
            record = read_commit(scene, band)
            problem = (
                None if record is None else layout_mismatch(meta, record)
            ) or chunk_files_problem(scene / band, record)
            if problem:
                raise damaged(identifier, band, problem)
    store = CheckedStore(LocalStore(scene, read_only=True), identifier)
    return _open_checked(store, None, bands, identifier=identifier, eager=eager)


def _open_checked(
    store: Any, group: str | None, bands: list[str], *, identifier: str, eager: bool
) -> xr.Dataset:
    """Open bands of a scene group through a checking store; metadata zarr cannot parse, and
    (eagerly) chunks that fail to decode, become :class:`DamagedSceneError`."""
    from scenestore.integrity import damaged

    try:
        # chunks={} keeps the stored chunking; no fill masking, so uint16 stays uint16.
        ds = xr.open_zarr(
            store, group=group, consolidated=False, chunks={}, mask_and_scale=False
        )
        if "spatial_ref" in ds.data_vars:
            ds = ds.set_coords("spatial_ref")
        absent = [b for b in bands if b not in ds]
        if absent:  # committed, but zarr found no array there
            raise damaged(identifier, absent[0], "array metadata zarr.json is missing")
        ds = ds[bands]
    except DamagedSceneError:
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


def chunk_files_problem(array_dir: Path, record: Any) -> str | None:
    """Compare a band's chunk files (count, bytes) with its commit record, reading no chunk.

    Returns:
        A sentence naming the difference, or None when they agree (or the record is older
        than chunk counts).
    """
    if record is None or record.chunk_count is None:
        return None
    chunk_root = array_dir / "c"
    files = [p for p in chunk_root.rglob("*") if p.is_file()] if chunk_root.is_dir() else []
    if len(files) != record.chunk_count:
        return f"{len(files)} chunk files where {record.chunk_count} were committed"
    nbytes = sum(p.stat().st_size for p in files)
    if record.nbytes is not None and nbytes != record.nbytes:
        return f"chunk files hold {nbytes} B where {record.nbytes} B were committed"
    return None


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


def _crs_of(attrs: dict[str, Any], *, what: str = "spatial_ref") -> Any:
    text = crs_text(attrs)
    return parse_crs(text, what=what) if text else None
