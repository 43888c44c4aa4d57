"""The search cache key: SceneQuery.to_json / from_json, canonical and stable (pure, no I/O)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenestore.errors import InvalidRequestError
from scenestore.search import SceneQuery, build_query

coordinate = st.floats(-170, 170, allow_nan=False).map(lambda v: round(v, 6))
days = st.integers(0, 400).map(lambda n: date.fromordinal(date(2024, 1, 1).toordinal() + n))
tile_lists = st.lists(st.sampled_from(["33UUP", "39QTA", "13TDE", "01CCV"]))
cloud = st.none() | st.floats(0, 100) | st.integers(0, 100)


@settings(deadline=None)
@given(w=coordinate, s=st.floats(-80, 80).map(lambda v: round(v, 6)),
       size=st.floats(0.001, 5), end=days, cloud=cloud, tiles=tile_lists)
def test_query_json_round_trips_and_is_canonical(w, s, size, end, cloud, tiles):
    query = build_query(start=date(2024, 1, 1), end=end, bbox=(w, s, w + size, s + size),
                        max_cloud=cloud, tiles=tiles)
    text = query.to_json()
    assert SceneQuery.from_json(text) == query
    assert SceneQuery.from_json(text).to_json() == text
    # Tile order and repeats do not change the text (nor, so, the cache key).
    same = build_query(start=query.start, end=query.end, bbox=(w, s, w + size, s + size),
                       max_cloud=cloud, tiles=list(reversed(tiles)) * 2)
    assert same.to_json() == text


@settings(deadline=None)
@given(west=st.floats(150, 179).map(lambda v: round(v, 3)), width=st.floats(2, 30), end=days)
def test_antimeridian_and_geojson_queries_round_trip(west, width, end):
    east = round(west + width - 360 if west + width > 180 else west + width, 3)
    crossing = build_query(start="2024-01-01", end=end, bbox=(west, -10, east, 10))
    assert SceneQuery.from_json(crossing.to_json()) == crossing
    ring = [[west, 0], [min(west + 1, 180), 0], [west, 1], [west, 0]]
    polygon = build_query(start="2024-01-01", end=end,
                          aoi={"type": "Polygon", "coordinates": [ring]})
    assert SceneQuery.from_json(polygon.to_json()) == polygon


def test_query_json_is_the_text_the_flow_cache_has_always_keyed_on():
    # Captured from flows.params.query_key before it moved here: a change in this text would
    # silently empty every deployment's search cache.
    query = build_query(start="2024-06-01", end="2024-06-30", bbox=(10, 50, 11, 51),
                        tiles=["39QTA", "33UUP", "13TDE"])
    assert query.to_json() == (
        '{"end":"2024-06-30","geometry":{"coordinates":[[[11.0,50.0],[11.0,51.0],[10.0,51.0],'
        '[10.0,50.0],[11.0,50.0]]],"type":"Polygon"},"max_cloud":null,"start":"2024-06-01",'
        '"tiles":["13TDE","33UUP","39QTA"]}'
    )
    crossing = build_query(start="2024-06-01", end="2024-06-30", bbox=(170, -10, -170, 10),
                           max_cloud=12.5)
    assert crossing.to_json() == (
        '{"end":"2024-06-30","geometry":{"coordinates":[[[[180.0,-10.0],[180.0,10.0],'
        '[170.0,10.0],[170.0,-10.0],[180.0,-10.0]]],[[[-170.0,-10.0],[-170.0,10.0],'
        '[-180.0,10.0],[-180.0,-10.0],[-170.0,-10.0]]]],"type":"MultiPolygon"},'
        '"max_cloud":12.5,"start":"2024-06-01","tiles":[]}'
    )


@pytest.mark.parametrize(
    "aoi",
    [
        # Drawn across the antimeridian, unsplit: the library splits it into two parts.
        {"type": "Polygon", "coordinates": [[[179, 0], [-179, 0], [-179, 1], [179, 1], [179, 0]]]},
        {"type": "Feature", "properties": {},
         "geometry": {"type": "Point", "coordinates": [10, 50]}},
    ],
)
def test_hand_written_query_json_is_normalised_like_build_query(aoi):
    text = json.dumps({"geometry": aoi, "start": "2024-06-01", "end": "2024-06-02",
                       "max_cloud": 20, "tiles": ["33uup"]})
    expected = build_query(start="2024-06-01", end="2024-06-02", aoi=aoi, max_cloud=20,
                           tiles=["33UUP"])
    assert SceneQuery.from_json(text) == expected


def test_query_json_is_the_same_in_another_process():
    query = build_query(start="2024-06-01", end="2024-06-30", bbox=(10, 50, 11, 51),
                        tiles=["39QTA", "33UUP", "13TDE"])
    code = (
        "from scenestore.search import build_query;"
        "print(build_query(start='2024-06-01', end='2024-06-30', bbox=(10, 50, 11, 51),"
        " tiles=['13TDE', '39QTA', '33UUP']).to_json())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert out.stdout.strip() == query.to_json()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "Invalid scene query JSON 'not json'"),
        ("[1, 2]", "expected the text SceneQuery.to_json"),
        ('{"start": "2024-06-01"}', "Invalid scene query JSON .*'geometry'"),
        ('{"geometry": {"type": "Point", "coordinates": [10, 50]}, "start": "2024-06-31",'
         ' "end": "2024-07-01", "max_cloud": null, "tiles": []}', "2024-06-31"),
        ('{"geometry": {"type": "Point", "coordinates": [10, 50]}, "start": "2024-06-01",'
         ' "end": "2024-07-01", "max_cloud": 101, "tiles": []}', "outside 0-100"),
    ],
)
def test_bad_query_json_names_the_problem(text, match):
    with pytest.raises(InvalidRequestError, match=match):
        SceneQuery.from_json(text)
