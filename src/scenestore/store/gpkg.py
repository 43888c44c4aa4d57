"""The store index's snapshot as a GeoPackage 1.4 file (SQLite): one row per scene.

Table ``scenes``: a footprint polygon (EPSG:4326, GeoPackage geometry: the ``GP`` header, an
envelope, then ISO WKB), identifier, source item id, collection, provider profile, MGRS tile,
sensing time (UTC), cloud cover, processing baseline, committed bands and each one's bytes, scene
bytes, ingest time. Table ``scenestore_index`` holds the format version and the journal entries
folded in. Searches use ``scenestore_bounds``, an R*Tree of the bounds (see
:data:`_SEARCH_INDEXES`), and B-trees on sensing time and tile. QGIS, GDAL/OGR, geopandas
(``read_file(path, layer="scenes")``), DuckDB and pandas (``read_sql`` over :mod:`sqlite3`)
read it. Snapshots are built in memory and stored whole.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from scenestore.store.entries import SceneInfo, stored_scene_info
from scenestore.store.wkb import gpkg_geometry

FORMAT_VERSION = 1
_GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
_GPKG_VERSION = 10400


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
_FIELD_OF_COLUMN = {
    "geom": "geometry",
    "min_x": "_west",
    "min_y": "_south",
    "max_x": "_east",
    "max_y": "_north",
}
#: The columns an entry is read from (``SELECT``), and the SceneInfo field (or bound) of each.
SELECT_COLUMNS = ("geom", *_NAMES)
SELECT = ", ".join("ifnull(size_bytes, 0)" if n == "size_bytes" else n for n in SELECT_COLUMNS)
_ROW_FIELDS = tuple(_FIELD_OF_COLUMN.get(n, n) for n in SELECT_COLUMNS)
_INSERT = (
    f"INSERT INTO scenes ({', '.join(SELECT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SELECT_COLUMNS))})"
)


def new_snapshot() -> sqlite3.Connection:
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
        {_SEARCH_INDEXES}
        INSERT INTO gpkg_contents (table_name, data_type, identifier, description)
            VALUES ('scenestore_index', 'attributes', 'scenestore_index',
                    'The index format and the journal entries folded in');
        """
    )
    conn.execute(
        "INSERT INTO scenestore_index VALUES ('format_version', ?)", (str(FORMAT_VERSION),)
    )
    return conn


#: What searches use: an R*Tree of the footprint bounds (SQLite stores its corners as 32-bit
#: floats rounded outwards, so it finds candidates and the exact bounds columns decide), and
#: B-trees on sensing time and tile. The R*Tree is scenestore's own, not the GeoPackage
#: ``gpkg_rtree_index`` extension (whose triggers need SQL functions plain SQLite lacks), so
#: other readers filter on the bounds columns.
_SEARCH_INDEXES = """
    CREATE VIRTUAL TABLE IF NOT EXISTS scenestore_bounds USING rtree(id, minx, maxx, miny, maxy);
    CREATE INDEX IF NOT EXISTS scenes_datetime ON scenes (datetime);
    CREATE INDEX IF NOT EXISTS scenes_tile ON scenes (tile);
"""


def _ensure_search_indexes(conn: sqlite3.Connection) -> None:
    """Give a snapshot its search indexes, and its R*Tree one row for each scene with bounds.

    A snapshot written before the indexes existed gets them; one whose R*Tree another tool has
    let fall out of step (rows added or deleted without it) gets it rebuilt, not trusted.
    """
    conn.executescript(_SEARCH_INDEXES)
    (indexed,) = conn.execute("SELECT count(*) FROM scenestore_bounds").fetchone()
    (bounded,) = conn.execute("SELECT count(*) FROM scenes WHERE min_x IS NOT NULL").fetchone()
    if indexed != bounded:
        conn.execute("DELETE FROM scenestore_bounds")
        conn.execute(
            "INSERT INTO scenestore_bounds SELECT fid, min_x, max_x, min_y, max_y FROM scenes "
            "WHERE min_x IS NOT NULL"
        )


_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
)


def row_of(info: SceneInfo) -> tuple[Any, ...]:
    bbox = info.bbox or (None, None, None, None)
    return (
        gpkg_geometry(info.geometry, info.bbox),
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


def info_of_row(row: Sequence[Any]) -> SceneInfo:
    """A row of ``SELECT {SELECT}`` as an entry (its text and geometry decoded when read)."""
    return stored_scene_info(zip(_ROW_FIELDS, row, strict=True))


def upsert(conn: sqlite3.Connection, identifier: str, info: SceneInfo | None) -> None:
    conn.execute(
        "DELETE FROM scenestore_bounds WHERE id IN "
        "(SELECT fid FROM scenes WHERE identifier = ?)",
        (identifier,),
    )
    conn.execute("DELETE FROM scenes WHERE identifier = ?", (identifier,))
    if info is not None:
        fid = conn.execute(_INSERT, row_of(info)).lastrowid
        if info.bbox is not None:
            west, south, east, north = info.bbox
            conn.execute(
                "INSERT INTO scenestore_bounds VALUES (?, ?, ?, ?, ?)",
                (fid, west, east, south, north),
            )


def snapshot_bytes(conn: sqlite3.Connection, folded: Iterable[str]) -> bytes:
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


def load_snapshot(payload: bytes) -> tuple[sqlite3.Connection, set[str]]:
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
        conn.execute(f"SELECT {SELECT} FROM scenes LIMIT 1").fetchall()
        _ensure_search_indexes(conn)
        folded = set(json.loads(meta.get("folded", "[]")))
    except (sqlite3.Error, ValueError, TypeError) as err:
        conn.close()
        raise ValueError(str(err) or type(err).__name__) from err
    return conn, folded


__all__ = [
    "FORMAT_VERSION",
    "SELECT",
    "SELECT_COLUMNS",
    "info_of_row",
    "load_snapshot",
    "new_snapshot",
    "snapshot_bytes",
    "upsert",
]
