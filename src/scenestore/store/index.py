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

import gc
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date
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
from scenestore.store.entries import (
    FOOTPRINT_ATTR,
    SCENE_INFO_FIELDS,
    IndexQuery,
    SceneInfo,
    checked_footprint,
    grid_footprint,
    group_attrs,
    scene_footprint,
    stored_footprint,
    text_or_none,
    utc_text,
)
from scenestore.store.gpkg import (
    SELECT,
    SELECT_COLUMNS,
    info_of_row,
    load_snapshot,
    new_snapshot,
    snapshot_bytes,
    upsert,
)
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
from scenestore.store.wkb import wkb_of
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
#: ``SCENESTORE_INDEX=off`` skips index upkeep (bulk loads; run ``index --rebuild`` after).
INDEX_ENV = "SCENESTORE_INDEX"
_THREADS = 8
_DATETIME, _IDENTIFIER = SELECT_COLUMNS.index("datetime"), SELECT_COLUMNS.index("identifier")


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
        footprint = stored_footprint(client, key)
    bbox, geometry = checked_footprint(footprint)
    cloud = attrs.get("eo:cloud_cover")
    return SceneInfo(
        identifier=identifier,
        bands=tuple(sorted(bands)),
        size_bytes=sum(sizes.values()),
        datetime=utc_text(attrs.get("datetime")),
        tile=tile_of({"id": attrs.get("stac_id", identifier), "properties": attrs}),
        cloud_cover=float(cloud) if isinstance(cloud, int | float) else None,
        attrs=attrs,
        damaged=tuple(damaged),
        item_id=text_or_none(attrs.get("stac_id")),
        collection=text_or_none(attrs.get("stac_collection")),
        provider=text_or_none(attrs.get("scenestore_profile")),
        processing_baseline=text_or_none(attrs.get("s2:processing_baseline")),
        band_bytes=band_bytes,
        ingested_at=max(written) if written else None,
        bbox=bbox,
        geometry=geometry,
        stamp=stamp,
    )


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
    # Not asdict: it deep-copies the footprint, a tenth of an entry's upkeep in an ingest.
    doc = {name: getattr(info, name) for name in SCENE_INFO_FIELDS if name != "attrs"}
    return json.dumps(doc).encode()


def _entry_of_doc(doc: dict[str, Any]) -> SceneInfo | None:
    if doc.get("removed"):
        return None
    doc = dict(doc)
    doc["bands"] = tuple(doc.get("bands", ()))
    doc["damaged"] = tuple(doc.get("damaged", ()))
    if doc.get("bbox") is not None:
        doc["bbox"] = tuple(doc["bbox"])
    return SceneInfo(**{k: v for k, v in doc.items() if k in SCENE_INFO_FIELDS})


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
                conn, folded = load_snapshot(payload)
            except ValueError as err:
                problem = f"damaged ({err})"
        if conn is None:
            conn = new_snapshot()
        for key, doc in entries:
            if key.rsplit("/", 1)[-1] in folded:
                continue
            try:
                upsert(conn, doc["identifier"], _entry_of_doc(doc))
            except (TypeError, ValueError, KeyError, sqlite3.Error):
                logger.warning("Ignoring the damaged index entry %s.", client.href(key))
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
            upsert(self._conn, identifier, None)
        derived = derive_many(self.client, stale)
        for identifier, info in derived.items():
            upsert(self._conn, identifier, info)
        if gone or derived:
            _journal_corrections(self.client, [*gone, *derived])

    def scenes(self) -> list[SceneInfo]:
        """Every indexed scene, sorted by identifier."""
        rows = self._conn.execute(f"SELECT {SELECT} FROM scenes ORDER BY identifier").fetchall()
        return _entries_of(rows)

    def get(self, identifier: str) -> SceneInfo | None:
        """One scene's entry (with its footprint), or None if the index has none."""
        row = self._conn.execute(
            f"SELECT {SELECT} FROM scenes WHERE identifier = ?", (identifier,)
        ).fetchone()
        return None if row is None else info_of_row(row)

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
            where.append(
                "fid IN (SELECT id FROM scenestore_bounds "
                "WHERE maxx >= ? AND minx <= ? AND maxy >= ? AND miny <= ?)"
            )
            where.append("max_x >= ? AND min_x <= ? AND max_y >= ? AND min_y <= ?")
            args += [west, east, south, north] * 2
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
        sql = f"SELECT {SELECT} FROM scenes"
        if where:
            sql += " WHERE " + " AND ".join(f"({w})" for w in where)
        # Sorted here, not by SQL: its sorter copies whole rows (a tenth of a 4,000-hit query),
        # and SQLite could walk the datetime index in order, reading every row.
        rows = self._conn.execute(sql, args).fetchall()
        rows.sort(key=_sensed_then_identifier)
        if query.geometry is not None and rows:
            rows = _intersecting(rows, query.geometry)
        return _entries_of(rows)

    def snapshot_bytes(self) -> bytes:
        """The index as one GeoPackage file's bytes (journal folded in)."""
        return snapshot_bytes(self._conn, ())


def _entries_of(rows: list[Any]) -> list[SceneInfo]:
    """Index rows as entries, the cyclic garbage collector paused meanwhile.

    Entries hold no reference cycles, and building thousands of them would otherwise run a
    collection of the caller's whole heap every few searches (a 4,000-hit search over 50,000
    scenes: its slowest runs took twice the median with the collector running).
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return [info_of_row(row) for row in rows]
    finally:
        if paused:
            gc.enable()


def _sensed_then_identifier(row: Sequence[Any]) -> tuple[str, str]:
    # Scenes without a sensing time first, as SQL sorts NULL.
    return (row[_DATETIME] or "", row[_IDENTIFIER])


def _bounds(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    from shapely.geometry import shape

    west, south, east, north = shape(geometry).bounds
    return (west, south, east, north)


def _intersecting(rows: list[Any], geometry: dict[str, Any]) -> list[Any]:
    import shapely
    from shapely.geometry import shape

    area = shape(geometry)
    with_geom = [r for r in rows if r[0]]
    shapes = shapely.from_wkb([wkb_of(r[0]) for r in with_geom])
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
        conn = new_snapshot()
        for identifier, info in derive_many(client, names).items():
            upsert(conn, identifier, info)
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
    client.put(SNAPSHOT_KEY, snapshot_bytes(index._conn, [k.rsplit("/", 1)[-1] for k in folded]))
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
