"""The ingest flow over id lists and many areas, on the Prefect test server and the world.

The world's scenes: items 0 and 3 on tile 39QTA (2024-06-01, 06-10), item 1 on 39QUA (06-04),
item 2 on 13TDE in America (06-07).
"""

from __future__ import annotations

import json
from datetime import date

import pytest
from flow_helpers import artifacts, task_runs
from flows.ingest import ingest

from scenestore.stac import StacStoreManager

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_results")]

MISSING = "S2A_33UUP_20990101_0_L2A"


def params_without_area(ingest_params: dict) -> dict:
    params = {k: v for k, v in ingest_params.items() if k not in ("bbox", "start", "end")}
    params["options"] = {**params["options"], "quicklooks": False}
    return params


def box(item, pad: float = 0.01) -> dict[str, float]:
    w, s, e, n = item.bbox
    return {"west": w - pad, "south": s - pad, "east": e + pad, "north": n + pad}


def report(state) -> dict[str, dict]:
    tables = [a for a in artifacts(state.state_details.flow_run_id) if a.type == "table"]
    assert len(tables) == 1, "one report per run"
    return {row["scene"]: row for row in json.loads(tables[0].data)}


def stored(store) -> set[str]:
    return {p.name.removesuffix(".zarr") for p in store.glob("*.zarr")}


def test_item_ids_are_fetched_in_one_request_and_the_missing_one_fails_the_run(
    world, ingest_params, store
):
    mgr = StacStoreManager(ingest_params["bands"], store, stac_url=world.stac_url)
    first, second = world.items[0], world.items[1]
    ids = [first.id, MISSING, mgr.identifier(first), second.id]  # a duplicate and a missing one
    world.stac_http.reset_stats()

    state = ingest(**params_without_area(ingest_params), item_ids=ids, return_state=True)

    assert state.is_failed()
    assert f"no item {MISSING!r}" in state.message and "item_ids[1]" in state.message
    assert stored(store) == {mgr.identifier(first), mgr.identifier(second)}
    assert sum(r.path == "search" for r in world.stac_http.requests()) == 1
    rows = report(state)
    assert rows[MISSING]["status"] == "not found" and rows[MISSING]["query"] == "ids"
    assert {rows[mgr.identifier(i)]["status"] for i in (first, second)} == {"stored"}
    assert {rows[mgr.identifier(i)]["query"] for i in (first, second)} == {"ids"}
    names = [r.name.rsplit("-", 1)[0] for r in task_runs(state.state_details.flow_run_id)]
    assert names.count("fetch-items") == 1 and "search-scenes" not in names


def test_many_areas_and_ids_in_one_run_store_each_scene_once(world, ingest_params, store):
    mgr = StacStoreManager(ingest_params["bands"], store, stac_url=world.stac_url)
    qta, qua, tde, qta_later = world.items
    both = box(qta) | {"east": box(qua)["east"], "north": box(qua)["north"]}
    areas = [
        {"name": "qta", "bbox": box(qta)},  # the run's dates: items 0 and 3
        {"name": "both", "bbox": both, "start": "2024-06-01", "end": "2024-06-05"},  # 0 and 1
    ]
    params = params_without_area(ingest_params)

    state = ingest(
        **params, start=date(2024, 6, 1), end=date(2024, 6, 30), areas=areas,
        item_ids=[tde.id, qta.id], return_state=True,
    )

    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary["scenes"], summary["stored"]) == (4, 4)
    assert stored(store) == {mgr.identifier(i) for i in world.items}
    queries = {scene: row["query"] for scene, row in report(state).items()}
    assert queries == {
        mgr.identifier(qta): "qta, both, ids",
        mgr.identifier(qua): "both",
        mgr.identifier(tde): "ids",
        mgr.identifier(qta_later): "qta",
    }
    runs = task_runs(state.state_details.flow_run_id)
    assert sum(r.name.startswith("search-scenes") for r in runs) == 2, "one search per area"
    assert sum(r.name.startswith("store-") for r in runs) == 4, "one scene task per scene"

    # The same run again: every search and the ids come from the cache, no scene is read.
    world.http.reset_stats()
    world.stac_http.reset_stats()
    cached = ingest(
        **params, start=date(2024, 6, 1), end=date(2024, 6, 30), areas=areas,
        item_ids=[tde.id, qta.id], return_state=True,
    )
    assert cached.is_completed(), cached.message
    assert cached.result()["complete"] == 4
    assert world.stac_http.requests() == [] and world.http.requests() == []
    states = [r.state.name for r in task_runs(cached.state_details.flow_run_id)
              if r.name.startswith(("search-scenes", "fetch-items"))]
    assert states == ["Cached"] * 3

    # The same sites as a FeatureCollection: everything is there, nothing is fetched again.
    sites = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": _polygon(area["bbox"]),
             "properties": {k: v for k, v in area.items() if k != "bbox"}}
            for area in areas
        ],
    }
    world.http.reset_stats()
    again = ingest(**params, start=date(2024, 6, 1), areas=sites, return_state=True)

    assert again.is_completed(), again.message
    assert (again.result()["scenes"], again.result()["complete"]) == (3, 3)
    assert world.http.requests() == []
    assert report(again)[mgr.identifier(qta)]["query"] == "qta, both"


def test_an_area_without_an_area_fails_at_once_naming_it(ingest_params):
    params = params_without_area(ingest_params)
    state = ingest(**params, start=date(2024, 6, 1), areas=[{"name": "x"}], return_state=True)
    assert state.is_failed()
    assert "area x has neither bbox nor aoi" in state.message


def _polygon(b: dict[str, float]) -> dict:
    w, s, e, n = b["west"], b["south"], b["east"], b["north"]
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


# -- the parameters, without a run ------------------------------------------------------------


def test_areas_parameter_forms():
    from flows.params import IngestRequest

    from scenestore.errors import InvalidRequestError

    point = {"type": "Point", "coordinates": [48.155, 18.965]}
    sites = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "f1", "geometry": point, "properties": {"start": "2024-06-01"}},
        {"type": "Feature", "geometry": point, "properties": {"name": "b", "tiles": ["39QTA"]}},
        {"type": "Feature", "geometry": point, "properties": {}},
    ]}
    base = {"store": "/s", "bands": ["B04"], "end": date(2024, 6, 30)}
    request = IngestRequest.parse(**base, areas=sites, lookback_days=3)
    queries = request.queries(date(2030, 1, 1))
    assert [label for label, _ in queries] == ["f1", "b", "area-3"]
    assert [(q.start, q.end) for _, q in queries] == [
        (date(2024, 6, 1), date(2024, 6, 30)), *[(date(2024, 6, 27), date(2024, 6, 30))] * 2
    ]
    assert queries[1][1].tiles == ("39QTA",)
    assert request.label(date(2030, 1, 1)) == "3 areas"

    ids_only = IngestRequest.parse(**base, item_ids=["S2A_X_1"])
    assert ids_only.queries(date(2030, 1, 1)) == []
    assert ids_only.label(date(2030, 1, 1)) == "1 item id"
    bbox = {"west": 0, "south": 0, "east": 1, "north": 1}
    for bad, match in [
        ({"areas": [{"bbox": bbox}], "bbox": bbox, "start": date(2024, 6, 1)}, "Both areas and"),
        ({"areas": [{"name": "a", "bbox": bbox}] * 2, "start": date(2024, 6, 1)}, "repeat"),
        ({"areas": [{"name": "a", "bbox": bbox}]}, "Area 'a' has no start date"),
        ({"areas": {"type": "FeatureCollection", "features": [{"type": "Feature"}]}},
         "areas feature 1 has no geometry"),
    ]:
        with pytest.raises(InvalidRequestError, match=match):
            IngestRequest.parse(**base, **bad)
