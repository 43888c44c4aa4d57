"""Flow parameters: forms the UI can render, validation with the library's messages,
canonical cache keys, and the retry decision."""

from __future__ import annotations

import subprocess
import sys
import typing
from datetime import date

import pytest
from flows.params import (
    BandName,
    IngestRequest,
    ProfileName,
    RunOptions,
    query_from_key,
    query_key,
)
from flows.tasks import is_transient
from hypothesis import given, settings
from hypothesis import strategies as st

from scenestore.bands import ALL_BANDS
from scenestore.errors import (
    CoordinateMismatchError,
    InvalidIdentifierError,
    InvalidRequestError,
    ItemError,
    SourceError,
    TransientSourceError,
)
from scenestore.profiles import PROFILES
from scenestore.search import build_query

BBOX = {"west": 10.0, "south": 50.0, "east": 10.5, "north": 50.5}


def request(**overrides):
    values = {"store": "/tmp/s", "bbox": BBOX, "start": date(2024, 6, 1),
              "end": date(2024, 6, 30), "bands": ["B04"], **overrides}
    return IngestRequest.parse(**values)


def test_band_and_profile_choices_are_the_library_s():
    assert typing.get_args(BandName) == ALL_BANDS
    assert typing.get_args(ProfileName) == tuple(PROFILES)


def test_ingest_parameters_render_as_typed_form_fields():
    from flows.ingest import ingest

    schema = ingest.parameters.model_dump()
    props = schema["properties"]
    assert props["bands"]["type"] == "array"
    assert props["bands"]["items"]["enum"] == list(ALL_BANDS)  # a multi-select
    cloud = props["max_cloud"]["anyOf"][0]
    assert (cloud["minimum"], cloud["maximum"]) == (0, 100)
    assert props["start"]["anyOf"][0]["format"] == "date"
    assert schema["definitions"]["BBox"]["required"] == ["west", "south", "east", "north"]
    assert props["profile"]["enum"] == list(PROFILES) and props["profile"]["default"] == (
        "earth-search"
    )
    assert schema["required"] == ["store"]


def test_a_valid_request_gives_the_library_query_and_store_spec():
    req = request(tiles=["t33uup"], max_cloud=40)
    window = req.window(date(2030, 1, 1))
    assert req.scene_query(window) == build_query(
        start="2024-06-01", end="2024-06-30", bbox=(10.0, 50.0, 10.5, 50.5), max_cloud=40,
        tiles=["33UUP"],
    )
    spec = req.store_spec()
    assert spec.bands == ("B04",) and spec.stac_url == PROFILES["earth-search"].stac_url


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"bbox": None}, "exactly one area of interest"),
        ({"aoi": {"type": "Point", "coordinates": [1, 2]}}, "exactly one area of interest"),
        ({"bbox": None, "aoi": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}},
         "empty or self-intersecting"),
        ({"bbox": {**BBOX, "east": BBOX["west"]}}, r"empty \(W = E"),
        ({"bbox": {**BBOX, "north": 95}}, "bbox.north"),
        ({"tiles": ["33XYZ9"]}, "Invalid MGRS tile"),
        ({"bands": []}, "Empty band list"),
        ({"bands": ["B13"]}, "bands.0"),
        ({"max_cloud": 101}, "max_cloud: Input should be less than or equal to 100"),
        ({"start": None, "end": None}, "No start date and no lookback_days"),
        ({"store": " "}, "Empty store location"),
    ],
)
def test_bad_parameters_fail_with_a_clear_message(overrides, match):
    with pytest.raises(InvalidRequestError, match=match):
        request(**overrides)


def test_end_before_start_fails_when_the_window_is_resolved():
    req = request(start=date(2024, 6, 30), end=date(2024, 6, 1))
    with pytest.raises(InvalidRequestError, match="before start date"):
        req.window(date(2030, 1, 1))


def test_run_options_refuse_out_of_range_values():
    with pytest.raises(ValueError, match="max_in_flight"):
        RunOptions(max_in_flight=0)


coordinate = st.floats(-170, 170, allow_nan=False).map(lambda v: round(v, 6))


@settings(deadline=None)
@given(
    w=coordinate, s=st.floats(-80, 80).map(lambda v: round(v, 6)),
    size=st.floats(0.001, 5), days=st.integers(0, 400),
    cloud=st.none() | st.floats(0, 100), tiles=st.lists(st.sampled_from(["33UUP", "39QTA"])),
)
def test_query_key_round_trips_and_is_canonical(w, s, size, days, cloud, tiles):
    start = date(2024, 1, 1)
    query = build_query(start=start, end=date.fromordinal(start.toordinal() + days),
                        bbox=(w, s, w + size, s + size), max_cloud=cloud, tiles=tiles)
    key = query_key(query)
    assert query_from_key(key) == query
    assert query_key(query_from_key(key)) == key
    # Tile order and repeats do not change the key.
    same = build_query(start=query.start, end=query.end, bbox=(w, s, w + size, s + size),
                       max_cloud=cloud, tiles=list(reversed(tiles)) * 2)
    assert query_key(same) == key


def test_query_key_is_the_same_in_another_process():
    query = build_query(start="2024-06-01", end="2024-06-30", bbox=(10, 50, 11, 51),
                        tiles=["39QTA", "33UUP", "13TDE"])
    code = (
        "from flows.params import query_key; from scenestore.search import build_query;"
        "print(query_key(build_query(start='2024-06-01', end='2024-06-30', bbox=(10, 50, 11, 51),"
        " tiles=['13TDE', '39QTA', '33UUP'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "", "PYTHONPATH": "."})
    assert out.stdout.strip() == query_key(query)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientSourceError("503", status=503), True),
        (TransientSourceError("reset"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (InvalidRequestError("Unknown band 'B13'"), False),
        (InvalidIdentifierError("../x"), False),
        (CoordinateMismatchError("grid differs"), False),
        (ItemError("no asset"), False),
        (SourceError("404", status=404), False),
        (KeyError("bug"), False),
        (None, False),
    ],
)
def test_only_transient_errors_are_retried(error, transient):
    assert is_transient(error) is transient
