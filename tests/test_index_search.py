"""Offline search answers exactly what a scan of the entries would, whatever the query.

The index narrows a query with an R*Tree of footprint bounds and B-trees on time and tile,
and decodes footprints and band bytes only when read; these tests hold its answers against
a plain filter over the same entries, and an index written before those search indexes.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from scenestore.store.entries import IndexQuery, SceneInfo
from scenestore.store.gpkg import (
    SELECT_COLUMNS,
    info_of_row,
    load_snapshot,
    new_snapshot,
    snapshot_bytes,
    upsert,
)
from scenestore.store.index import StoreIndex

TILES = ("33UUP", "33UVP", "32TNS", "06WVC")
BANDS = ("B02", "B03", "B04", "B08", "SCL")
DAY0 = date(2023, 1, 1)


def scene(k: int, west: float, south: float, days: int, cloud: float | None, tile: str,
          bands: tuple[str, ...]) -> SceneInfo:  # fmt: skip
    east, north = west + 1.0, south + 0.9
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return SceneInfo(
        identifier=f"es-l2a_S2B_T{tile}_{k:05d}_L2A",
        bands=tuple(sorted(bands)),
        size_bytes=1000 * len(bands),
        datetime=f"{DAY0 + timedelta(days=days)}T10:{k % 60:02d}:00Z",
        tile=tile,
        cloud_cover=cloud,
        band_bytes={b: 1000 for b in bands},
        bbox=(west, south, east, north),
        geometry={"type": "Polygon", "coordinates": [ring]},
        item_id=f"item-{k}",
    )


scenes = st.lists(
    st.builds(
        scene,
        st.integers(0, 99_999),
        st.floats(-30, 30, allow_nan=False).map(lambda v: round(v, 4)),
        st.floats(40, 70, allow_nan=False).map(lambda v: round(v, 4)),
        st.integers(0, 700),
        st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
        st.sampled_from(TILES),
        st.sets(st.sampled_from(BANDS), max_size=4).map(tuple),
    ),
    max_size=60,
    unique_by=lambda s: s.identifier,
)
queries = st.builds(
    IndexQuery,
    bbox=st.one_of(
        st.none(),
        st.tuples(st.floats(-32, 30), st.floats(38, 70), st.floats(0, 8), st.floats(0, 5)).map(
            lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
        ),
    ),
    start=st.one_of(st.none(), st.integers(0, 700).map(lambda d: DAY0 + timedelta(days=d))),
    end=st.one_of(st.none(), st.integers(0, 700).map(lambda d: DAY0 + timedelta(days=d))),
    max_cloud=st.one_of(st.none(), st.floats(0, 100)),
    tiles=st.sets(st.sampled_from(TILES), max_size=2).map(tuple),
    bands=st.sets(st.sampled_from(BANDS), max_size=2).map(tuple),
)


def matches(info: SceneInfo, q: IndexQuery) -> bool:
    """The search's documented rule, written as plainly as possible."""
    assert info.bbox is not None and info.datetime is not None
    if q.bbox is not None:
        w, s, e, n = q.bbox
        if info.bbox[2] < w or info.bbox[0] > e or info.bbox[3] < s or info.bbox[1] > n:
            return False
    sensed = date.fromisoformat(info.datetime[:10])
    if (q.start and sensed < q.start) or (q.end and sensed > q.end):
        return False
    if q.max_cloud is not None and (info.cloud_cover is None or info.cloud_cover > q.max_cloud):
        return False
    if q.tiles and info.tile not in q.tiles:
        return False
    return set(q.bands) <= set(info.bands)


def index_of(entries: list[SceneInfo]) -> StoreIndex:
    conn = new_snapshot()
    for info in entries:
        upsert(conn, info.identifier, info)
    return StoreIndex(None, conn)  # type: ignore[arg-type]  # search reads only the database


@settings(max_examples=150, deadline=None)
@given(entries=scenes, q=queries)
def test_search_finds_exactly_what_a_scan_finds(entries, q):
    found = index_of(entries).search(q)
    want = sorted((i for i in entries if matches(i, q)), key=lambda i: (i.datetime, i.identifier))
    assert [f.identifier for f in found] == [w.identifier for w in want]
    # what is decoded on read is what was stored
    assert found == want


@settings(max_examples=30, deadline=None)
@given(entries=scenes, q=queries)
def test_rewritten_and_removed_entries_leave_no_stale_bounds(entries, q):
    conn = index_of(entries)._conn
    moved = [replace(i, bbox=(100.0, 0.0, 101.0, 1.0)) for i in entries[::2]]
    for info in moved:
        upsert(conn, info.identifier, info)
    for info in entries[1::3]:
        upsert(conn, info.identifier, None)
    gone = {i.identifier for i in entries[1::3]}
    now = {i.identifier: i for i in entries if i.identifier not in gone}
    now.update({i.identifier: i for i in moved if i.identifier not in gone})
    found = StoreIndex(None, conn).search(q)  # type: ignore[arg-type]
    assert {f.identifier for f in found} == {k for k, i in now.items() if matches(i, q)}
    (bounds,) = conn.execute("SELECT count(*) FROM scenestore_bounds").fetchone()
    assert bounds == len(now)


def test_an_index_written_before_the_search_indexes_gains_them_on_read():
    entries = [scene(k, -10 + k, 50, k, 10.0, TILES[k % 4], ("B02", "B03")) for k in range(20)]
    conn = index_of(entries)._conn
    conn.executescript(
        "DROP TABLE scenestore_bounds; DROP INDEX scenes_datetime; DROP INDEX scenes_tile;"
    )
    old = snapshot_bytes(conn, ())
    loaded, _ = load_snapshot(old)
    q = IndexQuery(bbox=(-5.5, 50.2, -2.5, 50.4), tiles=(TILES[1],))
    found = StoreIndex(None, loaded).search(q)  # type: ignore[arg-type]
    assert [f.identifier for f in found] == [i.identifier for i in entries if matches(i, q)]
    assert found
    # another tool adds a row without the R*Tree: the next read rebuilds it, not trusts it
    loaded.execute(
        "INSERT INTO scenes (identifier, datetime, bands, min_x, min_y, max_x, max_y) "
        "VALUES ('es-l2a_S2B_T33UVP_99999_L2A', '2023-01-02T10:00:00Z', ',B02,', "
        "-4, 50.3, -3, 50.35)"
    )
    again, _ = load_snapshot(snapshot_bytes(loaded, ()))
    area = IndexQuery(bbox=(-3.6, 50.31, -3.5, 50.32))
    hits = StoreIndex(None, again).search(area)  # type: ignore[arg-type]
    assert "es-l2a_S2B_T33UVP_99999_L2A" in {h.identifier for h in hits}


def test_index_entries_decode_on_read_and_compare_pickle_like_plain_ones():
    info = scene(7, 1.0, 45.0, 3, 12.5, "33UUP", ("B02", "SCL"))
    (entry,) = index_of([info]).search(IndexQuery())
    assert entry == info
    assert entry.geometry == info.geometry and entry.band_bytes == {"B02": 1000, "SCL": 1000}
    assert pickle.loads(pickle.dumps(entry)) == info
    assert replace(entry, tile="33UVP").tile == "33UVP"
    assert SceneInfo("x", (), 0).band_bytes == {} and SceneInfo("x", (), 0).geometry is None
    bare = SceneInfo(
        "es-l2a_S2B_T33UUP_00008_L2A", (), 0, damaged=("B02: commit record damaged",)
    )
    (entry,) = index_of([bare]).search(IndexQuery())
    assert entry == bare
    assert (entry.bbox, entry.geometry, entry.bands, entry.band_bytes) == (None, None, (), {})


def test_empty_or_null_stored_values_read_as_empty_fields():
    # Another tool editing the GeoPackage may leave text (or the geometry) empty or NULL: the
    # entry reads as a scene without bands, damage, band bytes or footprint, never a decoding
    # error. (The bounds are REAL columns: NULL.)
    for blank in ("", None):
        values = dict.fromkeys(SELECT_COLUMNS, blank)
        values.update(identifier="s1", size_bytes=0, geom=b"" if blank == "" else None)
        values.update(dict.fromkeys(("min_x", "min_y", "max_x", "max_y")))
        info = info_of_row(tuple(values[c] for c in SELECT_COLUMNS))
        assert (info.bands, info.damaged, info.band_bytes) == ((), (), {})
        assert (info.geometry, info.bbox) == (None, None)
