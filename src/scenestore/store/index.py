"""The store index: what every stored scene is, answered without reading the scenes.

The index is derived data; commit records stay the truth. It lives in the store itself, on every
backend, in two parts::

    .index/scenes.gpkg                  the snapshot: a GeoPackage (SQLite) with one row per scene
    .index/journal/<ns>.<tag>.<id>.json one change each: a scene's entry after it, or its removal

**The snapshot** is a GeoPackage 1.4 file, table ``scenes``: footprint polygon (EPSG:4326),
identifier, source item id, collection, provider profile, MGRS tile, sensing time (UTC),
cloud cover, processing baseline, committed bands and each one's bytes, scene bytes, ingest
time. QGIS, GDAL/OGR, geopandas (``geopandas.read_file(path, layer="scenes")``), DuckDB
(``st_read`` or the sqlite extension) and pandas (``read_sql`` over ``sqlite3``) open it as it is.

**The journal** takes every change. A writer holds the scene's lock while it appends an entry
under a name of its own (sensing nothing else), so concurrent writers never lose each other's
updates and no index-wide lock is needed on the write path. Readers read the journal, then the
snapshot, and apply the entries the snapshot has not folded in, oldest first. When the journal
grows past :data:`COMPACT_AFTER` entries, a writer that gets the index lock folds it into a new
snapshot (which names the entries it folded) and deletes them.

**Never claiming a band that is not committed.** A band's entry is journaled only after its
record is written; before a record is withdrawn (a replaced band, ``verify --repair``, a removal)
an entry without the band is journaled first. A writer killed at any point therefore leaves an
index that claims at most what is committed. Readers also check the index against the store:
a scene directory the index does not know, or whose ``_commits`` changed since it was indexed
(a directory's modification time, on a local store), or an indexed scene that is gone, is read
from its commit records and corrected; a missing or damaged index is rebuilt with a warning.
Object stores have no cheap change time: there a scene changed by a writer that does not keep
the index (``SCENESTORE_INDEX=off``, or the previous release) shows its old bands until
``scenestore index --rebuild``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from scenestore.errors import (
    DamagedSceneError,
    InvalidIdentifierError,
    LeaseHeldError,
    ScenestoreError,
    StoreError,
    UnsafePathError,
)
from scenestore.store.client import StoreClient
from scenestore.store.layout import (
    COMMITS_DIR,
    LOCKS_DIR,
    RECORD_SUFFIX,
    commits_key,
    identifier_of_key,
    lock_key,
    scene_key,
)
from scenestore.store.records import parse_record
from scenestore.tiles import tile_of

logger = logging.getLogger(__name__)

INDEX_DIR = ".index"
SNAPSHOT_KEY = f"{INDEX_DIR}/scenes.gpkg"
JOURNAL_DIR = f"{INDEX_DIR}/journal"
#: Taken (never waited for long) by whoever folds the journal into a new snapshot.
INDEX_LOCK = f"{LOCKS_DIR}/.index.lock"
#: Journal entries after which a writer folds them into the snapshot.
COMPACT_AFTER = 200
#: Scenes a reader finds unindexed or changed beyond which it rebuilds the whole index.
REBUILD_AT = 200
FORMAT_VERSION = 1
#: Group attribute with the scene grid's footprint (lon/lat GeoJSON and bbox), written at creation.
FOOTPRINT_ATTR = "scenestore_footprint"
#: ``SCENESTORE_INDEX=off`` skips index upkeep (bulk loads; run ``index --rebuild`` after).
INDEX_ENV = "SCENESTORE_INDEX"
_THREADS = 8
_GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
_GPKG_VERSION = 10400


@dataclass(frozen=True)
class SceneInfo:
    """One stored scene as the index (and every inventory) sees it.

    Attributes:
        identifier: Scene identifier.
        bands: Committed bands, sorted.
        size_bytes: Bytes the whole scene occupies in the store.
        datetime: Sensing time (ISO 8601, UTC), if recorded.
        tile: MGRS tile, if recorded.
        cloud_cover: ``eo:cloud_cover`` in percent, if recorded.
        attrs: The scene's attributes when read from the scene itself ({} from the index).
        damaged: One line per problem found in the scene's small metadata (group or band
            ``zarr.json``, commit records); empty for a sound scene. Chunks are not read:
            ``scenestore verify`` checks them.
        item_id: The source STAC item's id.
        collection: The source STAC collection.
        provider: The provider profile it was ingested with.
        processing_baseline: ``s2:processing_baseline``, if recorded.
        band_bytes: Bytes of each committed band's array.
        ingested_at: When its newest band was committed (ISO 8601 UTC).
        bbox: Footprint bounds in lon/lat (W, S, E, N), if known.
        geometry: Footprint as a GeoJSON geometry in lon/lat, if known.
        stamp: The ``_commits`` change time when indexed (local stores), for staleness checks.
    """

    identifier: str
    bands: tuple[str, ...]
    size_bytes: int
    datetime: str | None = None
    tile: str | None = None
    cloud_cover: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    damaged: tuple[str, ...] = ()
    item_id: str | None = None
    collection: str | None = None
    provider: str | None = None
    processing_baseline: str | None = None
    band_bytes: dict[str, int] = field(default_factory=dict, repr=False)
    ingested_at: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    geometry: dict[str, Any] | None = field(default=None, repr=False)
    stamp: str | None = field(default=None, repr=False)

    def as_record(self) -> dict[str, Any]:
        """The inventory entry as JSON-ready values (what ``scenestore ls --json`` prints)."""
        return {
            "identifier": self.identifier,
            "datetime": self.datetime,
            "tile": self.tile,
            "cloud_cover": self.cloud_cover,
            "bands": list(self.bands),
            "size_bytes": self.size_bytes,
            "source_item": self.item_id,
            "collection": self.collection,
            "provider": self.provider,
            "processing_baseline": self.processing_baseline,
            "band_bytes": dict(self.band_bytes),
            "ingested_at": self.ingested_at,
            "bbox": list(self.bbox) if self.bbox else None,
            "damaged": list(self.damaged),
        }


@dataclass(frozen=True)
class IndexQuery:
    """An offline search of the index: the options of the online search, plus bands present.

    Attributes:
        bbox: Area of interest bounds in lon/lat (W, S, E, N), or None.
        geometry: Area of interest as a GeoJSON geometry in lon/lat (exact test), or None.
        start: First sensing day (inclusive, UTC), or None.
        end: Last sensing day (inclusive, UTC), or None.
        max_cloud: Highest cloud cover accepted, in percent, or None.
        tiles: MGRS tiles to keep; empty for all.
        bands: Bands every scene found must have committed; empty for any.
    """

    bbox: tuple[float, float, float, float] | None = None
    geometry: dict[str, Any] | None = None
    start: date | None = None
    end: date | None = None
    max_cloud: float | None = None
    tiles: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()


def index_enabled() -> bool:
    """Whether writers keep the index (``SCENESTORE_INDEX=off`` turns it off)."""
    return os.environ.get(INDEX_ENV, "").strip().lower() not in {"off", "0", "false", "no"}


# -- deriving an entry from the truth ------------------------------------------------------------


def derive(client: StoreClient, identifier: str) -> SceneInfo | None:
    """A scene's entry read from the scene itself (one listing, its records and group metadata).

    Returns None when it is no scene (yet): neither group metadata nor a record; a scene being
    created, or a writer's leftover from before it wrote anything.

    Raises:
        UnsafePathError: If the scene (or part of it) is reached through a link.
        InvalidIdentifierError: If the identifier is not safe.
        StoreError: If the store cannot be read.
    """
    key = scene_key(identifier)
    # The change time first: a change after it makes the next reader look again.
    stamp = client.stamp(commits_key(identifier))
    objects = client.list(key)
    sizes = dict(objects)
    records_dir = f"{key}/{COMMITS_DIR}/"
    bands, bad, written = [], [], []
    for name in sizes:
        rest = name[len(records_dir) :] if name.startswith(records_dir) else ""
        if not rest.endswith(RECORD_SUFFIX) or "/" in rest or rest.startswith("."):
            continue
        band = rest[: -len(RECORD_SUFFIX)]
        if band == "zarr":
            continue
        payload = client.get(name)
        if payload is None:  # withdrawn since the listing
            continue
        try:
            record = parse_record(payload, band=band, where=client.href(name))
        except DamagedSceneError:
            bad.append(band)
            continue
        bands.append(band)
        written.append(record.written_at)
    group_meta = f"{key}/zarr.json"
    if group_meta not in sizes and not bands and not bad:
        return None
    attrs, group_problem = group_attrs(client.get(group_meta))
    # A group problem matters once something is committed; before that it is a killed
    # writer's leftover, which the next ingest replaces.
    damaged = [f"group zarr.json {group_problem}"] if group_problem and (bands or bad) else []
    damaged += [f"{band}: commit record damaged" for band in sorted(bad)]
    damaged += [
        f"{b}: array zarr.json missing"
        for b in sorted(bands)
        if f"{key}/{b}/zarr.json" not in sizes
    ]
    band_bytes = {
        b: sum(size for k, size in objects if k.startswith(f"{key}/{b}/")) for b in sorted(bands)
    }
    footprint = attrs.get(FOOTPRINT_ATTR)
    if not isinstance(footprint, dict) and bands:
        footprint = _grid_footprint(client, key)
    bbox, geometry = _checked_footprint(footprint)
    cloud = attrs.get("eo:cloud_cover")
    return SceneInfo(
        identifier=identifier,
        bands=tuple(sorted(bands)),
        size_bytes=sum(sizes.values()),
        datetime=_utc(attrs.get("datetime")),
        tile=tile_of({"id": attrs.get("stac_id", identifier), "properties": attrs}),
        cloud_cover=float(cloud) if isinstance(cloud, int | float) else None,
        attrs=attrs,
        damaged=tuple(damaged),
        item_id=_text(attrs.get("stac_id")),
        collection=_text(attrs.get("stac_collection")),
        provider=_text(attrs.get("scenestore_profile")),
        processing_baseline=_text(attrs.get("s2:processing_baseline")),
        band_bytes=band_bytes,
        ingested_at=max(written) if written else None,
        bbox=bbox,
        geometry=geometry,
        stamp=stamp,
    )


def group_attrs(payload: bytes | None) -> tuple[dict[str, Any], str | None]:
    """A scene group's attributes from its ``zarr.json`` bytes, and what is wrong with it.

    Returns:
        The attributes ({} when unusable) and None, "missing" or "unreadable".
    """
    if payload is None:
        return {}, "missing"
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}, "unreadable"
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return {}, "unreadable"
    attrs = doc.get("attributes", {})
    return (attrs, None) if isinstance(attrs, dict) else ({}, "unreadable")


def grid_footprint(crs: Any, transform: Sequence[float], shape: tuple[int, int]) -> dict[str, Any]:
    """A grid's outline in lon/lat (densified, so UTM edges stay true) and its bbox.

    Returns:
        ``{"bbox": [W, S, E, N], "geometry": <GeoJSON>}``, what :data:`FOOTPRINT_ATTR` holds.
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox

    geobox = GeoBox(shape, Affine(*transform), crs)
    edge = max(abs(transform[0]) * shape[1], abs(transform[4]) * shape[0])
    # Four segments per edge keep the outline true to the UTM grid without thousands of points.
    extent = geobox.extent.to_crs("EPSG:4326", resolution=edge / 4)
    left, bottom, right, top = extent.boundingbox
    return {"bbox": [left, bottom, right, top], "geometry": extent.json}


def scene_footprint(grid: Any) -> dict[str, Any] | None:
    """The footprint of a scene grid: a Dataset or zarr group with ``x``, ``y``, ``spatial_ref``.

    Returns:
        What :func:`grid_footprint` returns, or None for a grid without a CRS or coordinates.
    """
    from scenestore.store.arrays import crs_of

    try:
        x, y = grid["x"][...], grid["y"][...]
        x, y = getattr(x, "values", x), getattr(y, "values", y)
        res_x = float(x[1] - x[0]) if x.size > 1 else 10.0
        res_y = float(y[1] - y[0]) if y.size > 1 else -10.0
        transform = [res_x, 0.0, float(x[0]) - res_x / 2, 0.0, res_y, float(y[0]) - res_y / 2]
        crs = crs_of(dict(grid["spatial_ref"].attrs))
        return grid_footprint(crs, transform, (int(y.size), int(x.size)))
    except (OSError, ValueError, KeyError, TypeError, IndexError, ScenestoreError) as err:
        logger.debug("No footprint for the grid: %s", err)
        return None


def _grid_footprint(client: StoreClient, key: str) -> dict[str, Any] | None:
    """The footprint of a scene stored without :data:`FOOTPRINT_ATTR` (read from its grid)."""
    import zarr

    try:
        group: Any = zarr.open_group(client.zarr_store(read_only=True), path=key, mode="r")
    except (OSError, ValueError, KeyError, ScenestoreError) as err:
        logger.debug("No footprint for %s: %s", key, err)
        return None
    return scene_footprint(group)


def _checked_footprint(
    footprint: object,
) -> tuple[tuple[float, float, float, float] | None, dict[str, Any] | None]:
    if not isinstance(footprint, dict):
        return None, None
    try:
        west, south, east, north = (float(v) for v in footprint["bbox"])
        geometry = footprint["geometry"]
        if not isinstance(geometry, dict) or geometry.get("type") not in {
            "Polygon",
            "MultiPolygon",
        }:
            geometry = None
    except (KeyError, TypeError, ValueError):
        return None, None
    return (west, south, east, north), geometry


def _utc(value: object) -> str | None:
    """Sensing time as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``, so text order is time order."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat() + "Z"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- the journal -------------------------------------------------------------------------------

_last_ns = 0


def _journal_key(identifier: str) -> str:
    global _last_ns
    # Strictly increasing in this process, so one writer's entries keep their order.
    now = max(time.time_ns(), _last_ns + 1)
    _last_ns = now
    return f"{JOURNAL_DIR}/{now:020d}.{uuid.uuid4().hex[:8]}.{identifier}.json"


def _journal_identifier(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    parts = name.split(".", 2)
    if len(parts) != 3 or not parts[2].endswith(".json"):
        return None
    return parts[2][: -len(".json")]


def _entry_doc(info: SceneInfo | None, identifier: str) -> bytes:
    if info is None:
        return json.dumps({"identifier": identifier, "removed": True}).encode()
    doc = asdict(info)
    doc.pop("attrs")
    return json.dumps(doc).encode()


def _entry_of_doc(doc: dict[str, Any]) -> SceneInfo | None:
    if doc.get("removed"):
        return None
    doc = dict(doc)
    doc["bands"] = tuple(doc.get("bands", ()))
    doc["damaged"] = tuple(doc.get("damaged", ()))
    if doc.get("bbox") is not None:
        doc["bbox"] = tuple(doc["bbox"])
    known = SceneInfo.__dataclass_fields__
    return SceneInfo(**{k: v for k, v in doc.items() if k in known})


def _append(client: StoreClient, identifier: str, info: SceneInfo | None) -> None:
    client.put(_journal_key(identifier), _entry_doc(info, identifier))


def _guarded(what: str, identifier: str, action: Any) -> None:
    """Run an index update; a failure is warned about, never raised (the data is committed)."""
    try:
        action()
    except (OSError, ScenestoreError) as err:
        logger.warning(
            "The store index was not updated after %s scene %s (%s); the scenes are fine: run "
            "`scenestore index --rebuild` to bring the index up to date.",
            what,
            identifier,
            str(err).splitlines()[0] if str(err) else type(err).__name__,
        )


def record(client: StoreClient, identifier: str) -> None:
    """Journal a scene's entry as it now is (after commits); the caller holds its lock."""
    if not index_enabled():
        return

    def update() -> None:
        _append(client, identifier, derive(client, identifier))
        compact(client, only_if_due=True)

    _guarded("writing", identifier, update)


def withdraw(client: StoreClient, identifier: str, bands: Iterable[str]) -> None:
    """Journal a scene's entry without ``bands``, before their records are withdrawn.

    The caller holds the scene's lock. Raises nothing: a failure is warned about.
    """
    if not index_enabled():
        return
    gone = set(bands)

    def update() -> None:
        info = derive(client, identifier)
        if info is not None:
            kept = tuple(b for b in info.bands if b not in gone)
            info = replace(
                info,
                bands=kept,
                band_bytes={b: n for b, n in info.band_bytes.items() if b in kept},
            )
        _append(client, identifier, info)

    _guarded("changing", identifier, update)


def forget(client: StoreClient, identifier: str) -> None:
    """Journal a scene's removal, before any of its records is withdrawn (caller holds its lock)."""
    if index_enabled():
        _guarded("removing", identifier, lambda: _append(client, identifier, None))


# -- the snapshot (GeoPackage) -----------------------------------------------------------------

_COLUMNS = (
    ("identifier", "TEXT NOT NULL UNIQUE"),
    ("item_id", "TEXT"),
    ("collection", "TEXT"),
    ("provider", "TEXT"),
    ("tile", "TEXT"),
    ("datetime", "TEXT"),
    ("cloud_cover", "REAL"),
    ("processing_baseline", "TEXT"),
    ("bands", "TEXT"),  # ",B02,B03," so one band is found with instr()
    ("band_bytes", "TEXT"),  # JSON object
    ("size_bytes", "INTEGER"),
    ("ingested_at", "TEXT"),
    ("damaged", "TEXT"),  # JSON list
    ("min_x", "REAL"),
    ("min_y", "REAL"),
    ("max_x", "REAL"),
    ("max_y", "REAL"),
    ("stamp", "TEXT"),
)
_NAMES = [name for name, _ in _COLUMNS]
_SELECT = ", ".join(["geom", *_NAMES])
_INSERT = f"INSERT INTO scenes ({_SELECT}) VALUES ({', '.join('?' * (len(_NAMES) + 1))})"


def _new_snapshot() -> sqlite3.Connection:
    """An empty GeoPackage in memory with the ``scenes`` feature table."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript(
        f"""
        PRAGMA application_id = {_GPKG_APPLICATION_ID};
        PRAGMA user_version = {_GPKG_VERSION};
        CREATE TABLE gpkg_spatial_ref_sys (
            srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY,
            organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL,
            definition TEXT NOT NULL, description TEXT);
        INSERT INTO gpkg_spatial_ref_sys VALUES
            ('Undefined cartesian SRS', -1, 'NONE', -1, 'undefined', NULL),
            ('Undefined geographic SRS', 0, 'NONE', 0, 'undefined', NULL),
            ('WGS 84 geodetic', 4326, 'EPSG', 4326, '{_WGS84_WKT}', 'longitude/latitude');
        CREATE TABLE gpkg_contents (
            table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
            identifier TEXT UNIQUE, description TEXT DEFAULT '',
            last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
            CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
        CREATE TABLE gpkg_geometry_columns (
            table_name TEXT NOT NULL, column_name TEXT NOT NULL,
            geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL,
            z TINYINT NOT NULL, m TINYINT NOT NULL,
            CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name));
        CREATE TABLE scenes (fid INTEGER PRIMARY KEY AUTOINCREMENT, geom BLOB,
            {", ".join(f"{name} {kind}" for name, kind in _COLUMNS)});
        INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id)
            VALUES ('scenes', 'features', 'scenes', 'Scenes stored by scenestore', 4326);
        INSERT INTO gpkg_geometry_columns VALUES ('scenes', 'geom', 'GEOMETRY', 4326, 0, 0);
        CREATE TABLE scenestore_index (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO gpkg_contents (table_name, data_type, identifier, description)
            VALUES ('scenestore_index', 'attributes', 'scenestore_index',
                    'The index format and the journal entries folded in');
        """
    )
    conn.execute(
        "INSERT INTO scenestore_index VALUES ('format_version', ?)", (str(FORMAT_VERSION),)
    )
    return conn


_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
)


def _row(info: SceneInfo) -> tuple[Any, ...]:
    bbox = info.bbox or (None, None, None, None)
    return (
        _gpkg_geometry(info.geometry, info.bbox),
        info.identifier,
        info.item_id,
        info.collection,
        info.provider,
        info.tile,
        info.datetime,
        info.cloud_cover,
        info.processing_baseline,
        "," + ",".join(info.bands) + ",",
        json.dumps(info.band_bytes),
        info.size_bytes,
        info.ingested_at,
        json.dumps(list(info.damaged)),
        *bbox,
        info.stamp,
    )


def _info_of_row(row: Sequence[Any], *, with_geometry: bool = False) -> SceneInfo:
    (geom, ident, item, coll, prov, tile, when, cloud, base, bands, band_bytes, size, ingested,
     damaged, min_x, min_y, max_x, max_y, stamp) = row  # fmt: skip
    return SceneInfo(
        identifier=ident,
        bands=tuple(b for b in (bands or "").split(",") if b),
        size_bytes=int(size or 0),
        datetime=when,
        tile=tile,
        cloud_cover=cloud,
        damaged=tuple(json.loads(damaged or "[]")),
        item_id=item,
        collection=coll,
        provider=prov,
        processing_baseline=base,
        band_bytes=json.loads(band_bytes or "{}"),
        ingested_at=ingested,
        bbox=None if min_x is None else (min_x, min_y, max_x, max_y),
        geometry=_geojson_of_gpkg(geom) if with_geometry and geom else None,
        stamp=stamp,
    )


def _upsert(conn: sqlite3.Connection, identifier: str, info: SceneInfo | None) -> None:
    conn.execute("DELETE FROM scenes WHERE identifier = ?", (identifier,))
    if info is not None:
        conn.execute(_INSERT, _row(info))


def _snapshot_bytes(conn: sqlite3.Connection, folded: Iterable[str]) -> bytes:
    conn.execute(
        "INSERT OR REPLACE INTO scenestore_index VALUES ('folded', ?)",
        (json.dumps(sorted(folded)),),
    )
    bounds = conn.execute(
        "SELECT min(min_x), min(min_y), max(max_x), max(max_y) FROM scenes"
    ).fetchone()
    conn.execute(
        "UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ?, "
        "last_change = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE table_name = 'scenes'",
        bounds,
    )
    conn.commit()
    return conn.serialize()


def _load_snapshot(payload: bytes) -> tuple[sqlite3.Connection, set[str]]:
    """The snapshot's database in memory and the journal entries it folded in.

    Raises:
        ValueError: If the bytes are not an index snapshot of this format.
    """
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        conn.deserialize(payload)
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        meta = dict(conn.execute("SELECT key, value FROM scenestore_index").fetchall())
        if app_id != _GPKG_APPLICATION_ID or meta.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"not an index of format {FORMAT_VERSION}")
        conn.execute(f"SELECT {_SELECT} FROM scenes LIMIT 1").fetchall()
        folded = set(json.loads(meta.get("folded", "[]")))
    except (sqlite3.Error, ValueError, TypeError) as err:
        conn.close()
        raise ValueError(str(err) or type(err).__name__) from err
    return conn, folded


# -- GeoPackage geometry: the "GP" header, an envelope, then ISO WKB ---------------------------


def _gpkg_geometry(geometry: dict[str, Any] | None, bbox: Sequence[float] | None) -> bytes | None:
    if geometry is None or bbox is None:
        return None
    polygons = (
        [geometry["coordinates"]]
        if geometry["type"] == "Polygon"
        else list(geometry["coordinates"])
    )
    west, south, east, north = bbox
    # Version 0, flags: little endian (bit 0), envelope [minx, maxx, miny, maxy] (bits 1-3 = 1).
    header = b"GP" + bytes([0, 0b0000_0011]) + struct.pack("<i4d", 4326, west, east, south, north)
    return header + _wkb(polygons, multi=geometry["type"] == "MultiPolygon")


def _wkb(polygons: list[Any], *, multi: bool) -> bytes:
    def polygon(rings: list[Any]) -> bytes:
        out = [struct.pack("<BII", 1, 3, len(rings))]
        for ring in rings:
            out.append(struct.pack("<I", len(ring)))
            out.extend(struct.pack("<2d", float(p[0]), float(p[1])) for p in ring)
        return b"".join(out)

    if not multi:
        return polygon(polygons[0])
    return struct.pack("<BII", 1, 6, len(polygons)) + b"".join(polygon(p) for p in polygons)


def _geojson_of_gpkg(blob: bytes) -> dict[str, Any] | None:
    flags = blob[3]
    envelope = (0, 32, 48, 48, 64)[(flags >> 1) & 0b111]
    data, pos = blob[8 + envelope :], 0

    def read(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def polygon() -> list[Any]:
        read("B")
        (_, rings) = read("II")
        out = []
        for _ in range(rings):
            (count,) = read("I")
            out.append([list(read("2d")) for _ in range(count)])
        return out

    _, kind = struct.unpack_from("<BI", data, 0)
    if kind == 3:
        return {"type": "Polygon", "coordinates": polygon()}
    if kind == 6:
        read("B")
        (_, count) = read("II")
        return {"type": "MultiPolygon", "coordinates": [polygon() for _ in range(count)]}
    return None


# -- reading -----------------------------------------------------------------------------------


class StoreIndex:
    """The index of one store, read into memory (an SQLite database) and checked against it.

    Use :meth:`read`; then :meth:`scenes` lists every scene and :meth:`search` answers queries.
    """

    def __init__(self, client: StoreClient, conn: sqlite3.Connection) -> None:
        self.client = client
        self._conn = conn
        #: Scenes the last check found changed, new or gone (corrected in memory).
        self.corrected = 0
        #: Whether the last read rebuilt the index (missing, damaged or far behind).
        self.rebuilt = False

    @classmethod
    def read(cls, client_or_scenes: Any, *, check: bool = True) -> StoreIndex:
        """Read a store's index: the journal, then the snapshot, then (``check``) the store.

        A missing or damaged snapshot is rebuilt with a warning (in memory only when the
        store cannot be written). Corrections the check finds are journaled when the store
        is writable and the scene is not being written right now.

        Raises:
            StoreError: If the store is missing or cannot be read.
        """
        client: StoreClient = getattr(client_or_scenes, "client", client_or_scenes)
        client.check_readable()
        entries = _read_journal(client)
        payload = client.get(SNAPSHOT_KEY)
        problem = None
        conn: sqlite3.Connection | None = None
        folded: set[str] = set()
        if payload is not None:
            try:
                conn, folded = _load_snapshot(payload)
            except ValueError as err:
                problem = f"damaged ({err})"
        if conn is None:
            conn = _new_snapshot()
        for key, doc in entries:
            if key.rsplit("/", 1)[-1] not in folded:
                _upsert(conn, doc.get("identifier", ""), _entry_of_doc(doc))
        index = cls(client, conn)
        # No snapshot and no journal: a store of the previous release (or never indexed).
        unindexed = payload is None and not entries and check and bool(client.children())
        if problem is not None or unindexed:
            what = problem or "missing"
            logger.warning(
                "The store index of %s is %s; rebuilding it from the scenes' commit records.",
                client.location,
                what,
            )
            return rebuild(client)
        if check:
            index.check()
        return index

    def check(self) -> None:
        """Compare the index with the store's scenes and correct what differs (see module)."""
        present = {i for n in self.client.children() if (i := identifier_of_key(n))}
        indexed = dict(self._conn.execute("SELECT identifier, stamp FROM scenes").fetchall())
        gone = set(indexed) - present
        stale = sorted(present - set(indexed))
        for identifier in sorted(present & set(indexed)):
            stamp = self.client.stamp(commits_key(identifier))
            if stamp is not None and stamp != indexed[identifier]:
                stale.append(identifier)
        self.corrected = len(gone) + len(stale)
        if len(stale) > REBUILD_AT:
            logger.warning(
                "The store index of %s lacks or has stale entries for %d scenes; rebuilding it.",
                self.client.location,
                len(stale),
            )
            fresh = rebuild(self.client)
            self._conn, self.rebuilt = fresh._conn, True
            return
        for identifier in sorted(gone):
            _upsert(self._conn, identifier, None)
        derived = derive_many(self.client, stale)
        for identifier, info in derived.items():
            _upsert(self._conn, identifier, info)
        if gone or derived:
            _journal_corrections(self.client, [*gone, *derived])

    def scenes(self) -> list[SceneInfo]:
        """Every indexed scene, sorted by identifier."""
        rows = self._conn.execute(f"SELECT {_SELECT} FROM scenes ORDER BY identifier").fetchall()
        return [_info_of_row(row) for row in rows]

    def get(self, identifier: str) -> SceneInfo | None:
        """One scene's entry (with its footprint), or None if the index has none."""
        row = self._conn.execute(
            f"SELECT {_SELECT} FROM scenes WHERE identifier = ?", (identifier,)
        ).fetchone()
        return None if row is None else _info_of_row(row, with_geometry=True)

    def search(self, query: IndexQuery) -> list[SceneInfo]:
        """The indexed scenes matching ``query``, sorted by sensing time then identifier.

        A scene matches when its footprint intersects the area (exactly, for a geometry; by
        bounds for a bbox), it was sensed within the days (UTC), its cloud cover is at most
        ``max_cloud`` (a scene without one does not match a cloud limit), its tile is one of
        ``tiles`` and it has every band of ``bands`` committed.
        """
        where: list[str] = []
        args: list[Any] = []
        area = query.bbox
        if query.geometry is not None and area is None:
            area = _bounds(query.geometry)
        if area is not None:
            west, south, east, north = area
            where.append("max_x >= ? AND min_x <= ? AND max_y >= ? AND min_y <= ?")
            args += [west, east, south, north]
        if query.start is not None:
            where.append("datetime >= ?")
            args.append(query.start.isoformat())
        if query.end is not None:
            where.append("datetime < ?")
            args.append(date.fromordinal(query.end.toordinal() + 1).isoformat())
        if query.max_cloud is not None:
            where.append("cloud_cover <= ?")
            args.append(query.max_cloud)
        if query.tiles:
            where.append(f"tile IN ({', '.join('?' * len(query.tiles))})")
            args += [t.upper().lstrip("T") for t in query.tiles]
        for band in query.bands:
            where.append("instr(bands, ?) > 0")
            args.append(f",{band},")
        sql = f"SELECT {_SELECT} FROM scenes"
        if where:
            sql += " WHERE " + " AND ".join(f"({w})" for w in where)
        rows = self._conn.execute(sql + " ORDER BY datetime, identifier", args).fetchall()
        if query.geometry is not None and rows:
            rows = _intersecting(rows, query.geometry)
        return [_info_of_row(row, with_geometry=True) for row in rows]

    def snapshot_bytes(self) -> bytes:
        """The index as one GeoPackage file's bytes (journal folded in)."""
        return _snapshot_bytes(self._conn, ())


def _bounds(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    from shapely.geometry import shape

    west, south, east, north = shape(geometry).bounds
    return (west, south, east, north)


def _intersecting(rows: list[Any], geometry: dict[str, Any]) -> list[Any]:
    import shapely
    from shapely.geometry import shape

    area = shape(geometry)
    with_geom = [r for r in rows if r[0]]
    shapes = shapely.from_wkb([bytes(r[0][8 + 32 :]) for r in with_geom])
    hits = shapely.intersects(shapes, area)
    return [r for r, hit in zip(with_geom, hits, strict=True) if hit]


def _read_journal(client: StoreClient) -> list[tuple[str, dict[str, Any]]]:
    """Every journal entry as (key, document), oldest first; unreadable ones are skipped."""
    keys = sorted(k for k, _ in client.list(JOURNAL_DIR) if k.endswith(".json"))
    out = []
    for key in keys:
        payload = client.get(key)
        if payload is None:  # folded and deleted since the listing: the snapshot has it
            continue
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict) or doc.get("identifier") != _journal_identifier(key):
                raise ValueError("not an index entry")
        except ValueError:
            logger.warning("Ignoring the damaged index entry %s.", client.href(key))
            continue
        out.append((key, doc))
    return out


def derive_many(client: StoreClient, identifiers: Sequence[str]) -> dict[str, SceneInfo | None]:
    """Entries read from the scenes themselves; a scene reached through a link is skipped."""

    def one(identifier: str) -> tuple[str, SceneInfo | None, bool]:
        try:
            return identifier, derive(client, identifier), True
        except (UnsafePathError, InvalidIdentifierError) as err:
            logger.warning(
                "Skipping scene %r, never following a link out of the store: %s", identifier, err
            )
            return identifier, None, False

    if len(identifiers) < 4:
        results = [one(i) for i in identifiers]
    else:
        with ThreadPoolExecutor(_THREADS, thread_name_prefix="index") as pool:
            results = list(pool.map(one, identifiers))
    return {ident: info for ident, info, ok in results if ok}


def _journal_corrections(client: StoreClient, identifiers: Iterable[str]) -> None:
    """Journal fresh entries of scenes no writer holds now (best effort: a read-only store is fine).

    The entry is derived again under the scene's lock, so it cannot overtake a writer's.
    """
    if not index_enabled():
        return
    for identifier in identifiers:
        try:
            with client.lock(lock_key(identifier), timeout_s=0):
                _append(client, identifier, derive(client, identifier))
        except LeaseHeldError:
            continue  # its writer journals it
        except (OSError, ScenestoreError) as err:
            logger.debug("Index correction of %s not written: %s", identifier, err)
            return  # a read-only store: the corrections stay in memory


# -- folding and rebuilding --------------------------------------------------------------------


def compact(client: StoreClient, *, only_if_due: bool = False) -> bool:
    """Fold the journal into a new snapshot, if no one else is doing it; return whether done.

    Raises:
        StoreError: If the store cannot be read or written.
    """
    if only_if_due and len(client.list(JOURNAL_DIR)) < COMPACT_AFTER:
        return False
    try:
        with client.lock(INDEX_LOCK, timeout_s=0):
            done = [k for k, _ in client.list(JOURNAL_DIR)]
            # Entries journaled after this listing may be read into the snapshot too: every
            # reader applies them again on top, which changes nothing (each is a whole entry).
            index = StoreIndex.read(client, check=False)
            _save(client, index, done)
    except LeaseHeldError:
        return False
    return True


def rebuild(client: StoreClient, *, wait_s: float = 60.0) -> StoreIndex:
    """Build the index anew from every scene's commit records (``scenestore index --rebuild``).

    The journal entries that exist when it starts are folded in (the scenes are read after
    them); entries journaled while it runs stay and are applied on top. On a store that
    cannot be written the rebuilt index is returned but not saved, with a warning.

    Raises:
        StoreError: If the store is missing or cannot be read.
        LeaseHeldError: If another rebuild or compaction holds the index lock for ``wait_s``.
    """
    client.check_readable()

    def build() -> StoreIndex:
        names = [i for n in client.children() if (i := identifier_of_key(n))]
        conn = _new_snapshot()
        for identifier, info in derive_many(client, names).items():
            _upsert(conn, identifier, info)
        index = StoreIndex(client, conn)
        index.rebuilt = True
        return index

    try:
        client.check_writable()
    except StoreError:
        logger.warning(
            "The store %s is not writable; its index is rebuilt in memory only.", client.location
        )
        return build()
    with client.lock(INDEX_LOCK, timeout_s=wait_s) as held:
        done = [k for k, _ in client.list(JOURNAL_DIR)]
        index = build()
        held.check()
        _save(client, index, done)
    fresh = StoreIndex.read(client, check=False)
    fresh.rebuilt = True
    return fresh


def _save(client: StoreClient, index: StoreIndex, folded: list[str]) -> None:
    """Write the snapshot naming the journal entries it folded in, then delete them."""
    client.put(SNAPSHOT_KEY, _snapshot_bytes(index._conn, [k.rsplit("/", 1)[-1] for k in folded]))
    client.delete(folded)


def index_status(client: StoreClient) -> dict[str, Any]:
    """What the index holds and how far behind its snapshot is (``scenestore index``)."""
    payload = client.get(SNAPSHOT_KEY)
    journal = client.list(JOURNAL_DIR)
    return {
        "snapshot": client.href(SNAPSHOT_KEY) if payload is not None else None,
        "snapshot_bytes": len(payload) if payload is not None else 0,
        "journal_entries": len(journal),
    }


__all__ = [
    "FOOTPRINT_ATTR",
    "INDEX_DIR",
    "IndexQuery",
    "SceneInfo",
    "StoreIndex",
    "compact",
    "derive",
    "derive_many",
    "forget",
    "grid_footprint",
    "group_attrs",
    "index_enabled",
    "index_status",
    "rebuild",
    "record",
    "scene_footprint",
    "withdraw",
]
