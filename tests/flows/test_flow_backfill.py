"""The backfill flow: windows as subflows (the default) and as runs of a deployment served
here, in date order, with the window table and progress artifacts; complete windows skipped
before any run starts. The deployments of deployments/ on a worker: test_flow_e2e.py."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from flow_helpers import BANDS, WORLD_BBOX, artifacts
from flows.backfill import backfill, window_parameters
from flows.ingest import ingest
from flows.params import IngestRequest, RunOptions
from flows.windows import DateWindow
from prefect.utilities.schema_tools.validation import is_valid

from scenestore.stac import StacStoreManager
from scenestore.store.layout import scene_path

pytestmark = pytest.mark.usefixtures("prefect_results")

REPO = Path(__file__).resolve().parents[2]


def child_runs(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[state.state_details.flow_run_id]
                )
            )
        )


def test_backfill_runs_one_ingest_per_window_and_skips_complete_windows(world, http, store):
    # No mode given: the windows run as subflows of this run, one at a time.
    params = {"store": str(store), "start": date(2024, 6, 1), "end": date(2024, 6, 14),
              "bbox": WORLD_BBOX, "bands": BANDS, "stac_url": world.stac_url,
              "window_unit": "week"}
    first = backfill(**params, return_state=True)

    assert first.is_completed(), first.message
    assert first.result() == {"windows": {"2024-06-01..2024-06-07": "Completed",
                                          "2024-06-08..2024-06-14": "Completed"}}
    windows = sorted(child_runs(first), key=lambda r: r.start_time)
    # Started in date order, named after their windows, no deployment (in this process).
    assert [(r.name, r.deployment_id) for r in windows] == [
        ("ingest 2024-06-01..2024-06-07", None), ("ingest 2024-06-08..2024-06-14", None)]
    # One window in flight by default: the second starts once the first's state is final.
    assert windows[1].start_time >= windows[0].end_time
    assert _table(first, "backfill-windows") == [
        {"window": "2024-06-01..2024-06-07", "status": "Completed",
         "flow run": "ingest 2024-06-01..2024-06-07", "scenes": 3, "stored": 3},
        {"window": "2024-06-08..2024-06-14", "status": "Completed",
         "flow run": "ingest 2024-06-08..2024-06-14", "scenes": 1, "stored": 1}]
    assert _progress(first) == 100.0
    # One search for the whole range, in the backfill run: each window takes its scenes from
    # it (the table's scene counts above are theirs) and checks them, but does not search.
    assert _task_names(first) == ["check-scenes", "search-scenes"]
    assert [_task_names(w) for w in windows] == [["check-scenes", "store"]] * 2
    mgr = StacStoreManager(BANDS, store, stac_url=world.stac_url)
    assert all(mgr.complete(mgr.identifier(i)) for i in world.items)

    http.reset_stats()
    again = backfill(**params, return_state=True)

    assert again.result() == {"windows": {"2024-06-01..2024-06-07": "complete",
                                          "2024-06-08..2024-06-14": "complete"}}
    assert child_runs(again) == [] and http.requests() == []
    assert [r["status"] for r in _table(again, "backfill-windows")] == ["complete", "complete"]

    # Break a scene of the second window (its stored band lies on another tile's grid): only
    # that window runs again, fails, and the backfill names it.
    late = next(i for i in world.items if i.datetime.date() >= date(2024, 6, 8))
    tile = late.properties["grid:code"]
    other = next(i for i in world.items if i.properties["grid:code"] != tile)
    shutil.rmtree(scene_path(store, mgr.identifier(late)))
    b04 = StacStoreManager(["B04"], store, stac_url=world.stac_url)
    b04.save_to_store(b04.download_scene_from_source(other, ["B04"]), mgr.identifier(late))
    third = backfill(**params, return_state=True)

    assert third.is_failed()
    assert third.message.startswith("1 of 2 windows failed: 2024-06-08..2024-06-14 (Failed: ")
    assert mgr.identifier(late) in third.message and "retry the failed window" in third.message
    assert [r.parameters["start"] for r in child_runs(third)] == ["2024-06-08"]


def _task_names(run) -> list[str]:
    """The kinds of a flow run's task runs (its subflows' tracking tasks left out)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = run.state_details.flow_run_id if hasattr(run, "state_details") else run.id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    # Names are "search-scenes-2d5" (a suffix per run) or "store-<item id>".
    return sorted({"store" if t.name.startswith("store-") else t.name.rsplit("-", 1)[0]
                   for t in tasks if not t.name.startswith("ingest")})


def _table(state, key: str) -> list[dict]:
    """The latest version of a table artifact of the run, without the bytes and message."""
    latest = max((a for a in artifacts(state.state_details.flow_run_id) if a.key == key),
                 key=lambda a: a.created)
    return [{k: v for k, v in row.items() if k not in ("bytes", "message")}
            for row in json.loads(latest.data)]


def _progress(state) -> float:
    (progress,) = [a for a in artifacts(state.state_details.flow_run_id)
                   if a.key == "backfill-progress"]
    return float(progress.data)


def test_window_parameters_are_what_the_ingest_deployment_takes():
    request = IngestRequest.parse(store="/s", bbox=WORLD_BBOX, start=date(2024, 6, 1),
                                  end=date(2024, 6, 30), bands=["SCL", "B04"], tiles=["39QTA"])
    params = window_parameters(request, DateWindow(date(2024, 6, 8), date(2024, 6, 14)),
                               RunOptions(max_in_flight=3))
    assert params["start"] == "2024-06-08" and params["end"] == "2024-06-14"
    assert params["bbox"] == WORLD_BBOX and params["options"]["max_in_flight"] == 3
    # Every key is a parameter of the ingest flow; the values pass the schema check the
    # server makes when a deployment run is created, and the flow's own validation.
    assert set(params) <= set(ingest.parameters.properties)
    assert is_valid(params, ingest.parameters.model_dump())
    assert ingest.validate_parameters(params)["start"] == date(2024, 6, 8)


def test_each_window_is_given_the_scenes_of_its_days_or_none_when_one_fits_no_window(
    monkeypatch,
):
    import flows.backfill as bf

    from scenestore.plan import ScenePlan

    def item(item_id: str, when: str) -> dict:
        return {"id": item_id, "properties": {"datetime": when}}

    june, july = (DateWindow(date(2024, 6, 1), date(2024, 6, 30)),
                  DateWindow(date(2024, 7, 1), date(2024, 7, 31)))
    found = [item("a", "2024-06-30T23:59:59Z"), item("b", "2024-07-01T00:00:00Z")]
    monkeypatch.setattr(bf, "find_scenes", lambda *args: found)
    monkeypatch.setattr(bf, "check_scenes", lambda quoted, spec: [
        ScenePlan(i, i["id"], missing=("B04",) if i["id"] == "b" else ())
        for i in quoted.unquote()])
    request = IngestRequest.parse(store="/s", bbox=WORLD_BBOX, start=june.start, end=july.end,
                                  bands=["B04"])
    scan = bf.scan_windows(request, [june, july], request.store_spec(), RunOptions())
    assert scan.complete == {june}
    assert scan.items == {june: [found[0]], july: [found[1]]}

    # A scene whose day is in no window (matched on a time range): each window searches.
    found.append(item("c", "2024-08-01T10:00:00Z"))
    assert bf.scan_windows(request, [june, july], request.store_spec(), RunOptions()).items is None
