"""Flow parameters: forms the UI can render, validation with the library's messages,
the retry defaults and the retry decision (the search cache key is tested in test_pure)."""

from __future__ import annotations

import os
import typing
from datetime import date

import pytest
from flows.params import (
    BandName,
    IngestRequest,
    ProfileName,
    RunOptions,
)
from flows.tasks import is_transient

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


def test_retry_defaults_are_the_library_s_everywhere():
    """The CLI, the library and every retrying flow task share scenestore.network's defaults."""
    import inspect

    from prefect.tasks import exponential_backoff

    from flows import tasks
    from scenestore import cli, ingest, network

    defaults = (network.DEFAULT_RETRIES, network.DEFAULT_BACKOFF_S, network.DEFAULT_JITTER)
    options = RunOptions()
    assert (options.retries, options.retry_backoff_seconds, options.retry_jitter_factor) == defaults
    delays = exponential_backoff(backoff_factor=network.DEFAULT_BACKOFF_S)(network.DEFAULT_RETRIES)
    retrying = [tasks.search, tasks.download_scene, tasks.save_scene, tasks.store_scene]
    for task in retrying:
        assert task.retries == network.DEFAULT_RETRIES, task.name
        assert task.retry_delay_seconds == delays, task.name
        assert task.retry_jitter_factor == network.DEFAULT_JITTER, task.name
        assert task.retry_condition_fn is tasks.retry_if_transient, task.name
    assert delays[0] == network.DEFAULT_BACKOFF_S
    library = inspect.signature(ingest.ingest_items).parameters
    assert library["retries"].default == network.DEFAULT_RETRIES
    assert library["backoff_s"].default is None  # network.retry_backoff_s(): env, else default
    assert os.environ[network.BACKOFF_ENV] == f"{network.retry_backoff_s():g}"  # tests' 0.05
    assert inspect.signature(cli.ingest).parameters["retries"].default == network.DEFAULT_RETRIES
    assert inspect.signature(network.transient_retrying).parameters["retries"].default == (
        network.DEFAULT_RETRIES
    )


def test_check_scenes_task_is_the_library_plan(tmp_path):
    from flows.params import make_store_spec
    from flows.tasks import check_scenes

    from scenestore.plan import plan_ingest

    spec = make_store_spec(str(tmp_path / "store"), ["B04", "B02"])
    docs = [{"id": "S2A_33UUP_20240601_0_L2A"}, {"id": "../x"}]  # dicts are never parsed
    plans = check_scenes.fn(docs, spec)
    assert plans == plan_ingest(spec.manager(), docs)
    assert [(p.identifier, p.missing) for p in plans] == [
        ("es-l2a_S2A_33UUP_20240601_0_L2A", ("B02", "B04")), (None, ())
    ]


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
