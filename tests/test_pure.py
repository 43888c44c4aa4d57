"""Pure core: identifiers, bands, chunking, AOIs, dates and queries (no I/O)."""

from __future__ import annotations

import json
import string
from datetime import date
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenestore.aoi import parse_bbox, parse_geojson
from scenestore.bands import ALL_BANDS, normalize_bands
from scenestore.errors import InvalidIdentifierError, InvalidRequestError
from scenestore.ids import validate_identifier
from scenestore.profiles import epsg_of, get_profile, normalize_tile, require_utm, tile_of
from scenestore.search import build_query
from scenestore.store.layout import choose_chunk, covers_whole_chunks, scene_path

SAFE = string.ascii_letters + string.digits + "._+-"


@given(text=st.text(min_size=1, max_size=300))
def test_any_accepted_identifier_stays_inside_the_store(text, tmp_path_factory):
    store = tmp_path_factory.getbasetemp() / "store"
    try:
        validate_identifier(text)
    except InvalidIdentifierError as err:
        assert repr(text[:40])[:20] in str(err) or "characters long" in str(err)
        return
    path = scene_path(store, text)
    assert path.parent == store and path.resolve().parent == store.resolve()
    assert "/" not in text and "\\" not in text and ".." not in text
    assert all(ch in SAFE for ch in text) and text[0].isalnum()


@given(
    st.text(alphabet=SAFE, min_size=1, max_size=200).filter(
        lambda s: s[0].isalnum() and ".." not in s
    )
)
def test_safe_identifiers_are_accepted(text):
    assert validate_identifier(text) == text


@pytest.mark.parametrize(
    "bad", ["", "../x", "a/b", "a\\b", "..", ".", ".x", "a\nb", "a b", "x" * 201, None]
)
def test_bad_identifiers_name_the_value(bad):
    with pytest.raises(InvalidIdentifierError, match="Scene identifier"):
        validate_identifier(bad)


@given(st.lists(st.sampled_from(ALL_BANDS + tuple(b.lower() for b in ALL_BANDS)), min_size=1))
def test_band_normalisation_is_canonical_ordered_and_unique(bands):
    out = normalize_bands(bands)
    assert out == [b for b in ALL_BANDS if b in {x.upper() for x in bands}]
    assert normalize_bands(",".join(bands)) == out


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "Empty band list"),
        (["B13"], "Unknown band 'B13'"),
        ("B02,,B99", "Unknown band 'B99'"),
        (" , ", "Empty band list"),
    ],
)
def test_bad_bands_are_rejected(bad, match):
    with pytest.raises(InvalidRequestError, match=match):
        normalize_bands(bad)


@given(st.integers(min_value=1, max_value=30000), st.integers(min_value=64, max_value=4096))
@settings(max_examples=300)
def test_chunks_divide_the_array(size, target):
    chunk = choose_chunk(size, target)
    assert size % chunk == 0
    assert chunk == size if size <= target else chunk <= size


def test_full_tile_chunks():
    assert choose_chunk(10980) == 1830 and choose_chunk(5490) == 1830 and choose_chunk(120) == 120


@pytest.mark.parametrize(
    # W > E ("3,0,1,1") crosses the antimeridian and is valid STAC; W == E is empty.
    "bbox",
    ["1,2,3", "a,b,c,d", "1,0,1,1", "0,3,1,1", "0,0,200,1", "0,-91,1,1", "nan,0,1,1"],
)
def test_bad_bboxes_are_rejected(bbox):
    with pytest.raises(InvalidRequestError, match="bbox"):
        parse_bbox(bbox)


@given(st.floats(-180, 179), st.floats(-90, 89), st.floats(0.001, 1), st.floats(0.001, 1))
def test_valid_bboxes_round_trip(w, s, dw, dh):
    e, n = min(w + dw, 180), min(s + dh, 90)
    if e > w and n > s:
        assert parse_bbox(f"{w},{s},{e},{n}") == (w, s, e, n)


def test_geojson_forms(tmp_path):
    poly = {"type": "Polygon", "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 51], [10, 50]]]}
    feature = {"type": "Feature", "properties": {}, "geometry": poly}
    fc = {"type": "FeatureCollection", "features": [feature]}
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(fc))
    for form in (poly, feature, fc, json.dumps(poly), path, str(path)):
        assert parse_geojson(form).bounds == (10, 50, 11, 51)


@pytest.mark.parametrize(
    "aoi, match",
    [
        ("{not json", "not valid JSON"),
        ({"type": "Polygon", "coordinates": [[1, 2]]}, "not valid GeoJSON"),
        ({"type": "FeatureCollection", "features": []}, "not valid GeoJSON"),
        ("/no/such/file.geojson", "Cannot read AOI file"),
    ],
)
def test_bad_geojson_is_rejected(aoi, match):
    with pytest.raises(InvalidRequestError, match=match):
        parse_geojson(aoi)


def test_query_validation():
    q = build_query(
        start="2024-06-01",
        end="2024-06-30",
        bbox="10,50,11,51",
        max_cloud=20,
        tiles="t33uup, 33UVP",
    )
    assert (
        q.start == date(2024, 6, 1) and q.tiles == ("33UUP", "33UVP") and q.bbox == (10, 50, 11, 51)
    )
    assert q.datetime_range == "2024-06-01T00:00:00Z/2024-06-30T23:59:59.999Z"
    cases = [
        (dict(start="2024-06-30", end="2024-06-01", bbox="0,0,1,1"), "before start date"),
        (
            dict(start="2024-06-01", end="2024-06-30", bbox="0,0,1,1", max_cloud=101),
            "outside 0-100",
        ),
        (dict(start="2024-06-01", end="2024-06-30", bbox="0,0,1,1", max_cloud=-1), "outside 0-100"),
        (dict(start="June", end="2024-06-30", bbox="0,0,1,1"), "Invalid start date 'June'"),
        (dict(start="2024-06-01", end="2024-06-30"), "exactly one area"),
        (
            dict(start="2024-06-01", end="2024-06-30", bbox="0,0,1,1", tiles="XYZ"),
            "Invalid MGRS tile 'XYZ'",
        ),
    ]
    for kwargs, match in cases:
        with pytest.raises(InvalidRequestError, match=match):
            build_query(**kwargs)


def test_profile_lookup_and_crs_discovery():
    with pytest.raises(InvalidRequestError, match="Unknown provider profile 'nope'"):
        get_profile("nope")
    es = get_profile("earth-search")
    assert es.asset_key("B8A") == "nir08" and len(es.asset_keys) == 13
    assert epsg_of({"properties": {"proj:epsg": 32633}}) == 32633
    assert epsg_of({"properties": {}, "assets": {"B04_10m": {"proj:code": "EPSG:32736"}}}) == 32736
    assert normalize_tile("T06VVN") == "6VVN"
    assert tile_of({"id": "x", "properties": {"grid:code": "MGRS-39QTA"}}) == "39QTA"
    assert tile_of({"id": "x", "properties": {"s2:mgrs_tile": "13TDE"}}) == "13TDE"
    with pytest.raises(Exception, match="expected a WGS 84 UTM zone"):
        require_utm("item", 4326)


def test_native_grids_that_nest_are_read_natively_and_others_warped():
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from scenestore.grid import WARP, coarsen, nest_factor, plan_reads

    tile = GeoBox((10980, 10980), Affine(10, 0, 199980, 0, -10, 2100000), "EPSG:32639")
    def asset(res, n, x0=199980):
        return {
            "proj:shape": [n, n],
            "proj:transform": [res, 0, x0, 0, -res, 2100000],
        }
    assert nest_factor(asset(10, 10980), tile, 1830) == WARP  # native 10 m: read directly
    assert nest_factor(asset(20, 5490), tile, 1830) == 2
    assert nest_factor(asset(60, 1830), tile, 1830) == 6
    assert nest_factor(asset(20, 5490, x0=199990), tile, 1830) == WARP  # shifted origin
    assert nest_factor(asset(60, 1830), tile, 1000) == WARP  # chunk not a multiple of 6
    assert nest_factor({}, tile, 1830) == WARP  # no grid fields
    item = {"assets": {"red": asset(10, 10980), "scl": asset(20, 5490), "coastal": asset(60, 1830)}}
    plan = plan_reads(item, {"B04": "red", "SCL": "scl", "B01": "coastal"}, tile, 1830)
    assert plan == {1: {"B04": "red"}, 2: {"SCL": "scl"}, 6: {"B01": "coastal"}}
    assert coarsen(tile, 6).shape == (1830, 1830) and coarsen(tile, 6).affine.a == 60


@given(
    st.integers(1, 40),  # chunks along the axis
    st.integers(1, 500),  # chunk edge
    st.integers(0, 499),  # pixels of a last, partial chunk
    st.data(),
)
def test_blocks_of_whole_chunks_need_no_rechunk(n, edge, rest, data):
    rest = rest % edge
    size = n * edge + rest
    # Blocks made of whole chunks (a row strip, say), the last one ending at the array's end.
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, n - 1 + bool(rest))), max_size=5)))
    ends = [c * edge for c in cuts if c * edge < size] + [size]
    blocks = tuple(b - a for a, b in pairwise([0, *ends]))
    assert covers_whole_chunks((blocks,), (edge,), (size,))
    if edge > 1:
        # A block boundary inside a chunk means two tasks would write one chunk.
        inside = min(edge - 1, size - 1)
        assert not covers_whole_chunks(((inside, size - inside),), (edge,), (size,))


def test_row_strips_of_a_full_tile_cover_whole_chunks():
    strips = ((1830,) * 6, (10980,))
    assert covers_whole_chunks(strips, (1830, 1830), (10980, 10980))
    assert not covers_whole_chunks(((1000, 9980), (10980,)), (1830, 1830), (10980, 10980))


def test_sensing_day_is_the_utc_day_of_an_iso_time():
    from datetime import date

    from scenestore.aoi import sensing_day

    assert sensing_day("2024-06-01T10:20:30Z") == date(2024, 6, 1)
    assert sensing_day("2024-06-01T23:30:00-02:00") == date(2024, 6, 2)
    assert sensing_day("2024-06-01T10:20:30") == date(2024, 6, 1)  # no offset: UTC
    assert sensing_day(None) is None and sensing_day("not a time") is None
