"""The ingest flows against the offline world, on the Prefect test server.

Everything a user would check is counted where it happens: requests at the world's file
server, task runs and their attempt counts read back from the API, scenes in the store.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from flow_helpers import BANDS, artifacts, flow_logs, requests_by_scene, task_runs
from flows.ingest import ingest, ingest_scene

from scenestore.gdal import clear_http_cache
from scenestore.stac import StacStoreManager
from scenestore.store import open_store
from scenestore.store.layout import band_key, scene_path

pytestmark = pytest.mark.usefixtures("prefect_results")


def manager(store, world, bands=BANDS) -> StacStoreManager:
    return StacStoreManager(bands, store, stac_url=world.stac_url)


def runs_by_name(state) -> dict[str, list]:
    """Task runs of a flow run grouped by task ("store" for the per-scene store-<id> runs)."""
    grouped: dict[str, list] = {}
    for run in task_runs(state.state_details.flow_run_id):
        name = "store" if run.name.startswith("store-") else run.name.rsplit("-", 1)[0]
        grouped.setdefault(name, []).append(run)
    return grouped


def test_ingest_stores_every_scene_and_a_rerun_reads_nothing(world, http, ingest_params, store,
                                                             prefect_results):
    state = ingest(**ingest_params, return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary["scenes"], summary["stored"], summary["complete"]) == (4, 4, 0)
    assert summary["bytes_written"] > 0 and summary["failed"] == {}
    mgr = manager(store, world)
    assert all(mgr.complete(mgr.identifier(item)) for item in world.items)
    assert set(requests_by_scene(http)) == {item.id for item in world.items}

    reports = {a.type: a for a in artifacts(state.state_details.flow_run_id)}
    rows = json.loads(reports["table"].data)
    assert sorted(r["status"] for r in rows) == ["stored"] * 4
    assert all(r["bands fetched"] == "B04,SCL" and r["bytes"] > 0 for r in rows)
    assert float(reports["progress"].data) == 100.0
    persisted = [p for p in prefect_results.rglob("*") if p.is_file()]
    assert len(persisted) == 1, "only the search result is persisted"
    assert json.loads(persisted[0].read_text())["result"]  # JSON item documents, no pickles

    clear_http_cache()  # so that "no request" means the store was trusted, not GDAL's cache
    http.reset_stats()
    world.stac_http.reset_stats()
    again = ingest(**ingest_params, return_state=True)

    assert again.is_completed(), again.message
    assert again.result()["complete"] == 4 and again.result()["stored"] == 0
    assert http.requests() == [], "a complete store must not be read from the source again"
    assert world.stac_http.requests() == [], "the search must come from the cache"
    runs = runs_by_name(again)
    assert [r.state.name for r in runs["search-scenes"]] == ["Cached"]
    assert "store" not in runs, "complete scenes must be skipped before any task is created"


def test_a_deleted_scene_or_band_is_downloaded_again(world, http, ingest_params, store):
    assert ingest(**ingest_params, return_state=True).is_completed()
    mgr = manager(store, world)
    gone_scene, lost_band = (mgr.identifier(world.items[i]) for i in (0, 2))
    shutil.rmtree(scene_path(store, gone_scene))
    scenes = open_store(store)
    scenes.drop_commit(lost_band, "SCL")  # the store's own deletion order: record, then array
    scenes.client.delete_prefix(band_key(lost_band, "SCL"))
    clear_http_cache()  # as in a new process: GDAL would serve the bytes it read before
    http.reset_stats()

    state = ingest(**ingest_params, return_state=True)

    assert state.is_completed(), state.message
    assert (state.result()["stored"], state.result()["complete"]) == (2, 2)
    fetched = {r.path for r in http.requests()}
    assert fetched == {
        f"{world.items[0].id}/B04.tif",
        f"{world.items[0].id}/SCL.tif",
        f"{world.items[2].id}/SCL.tif",
    }
    assert mgr.complete(gone_scene) and mgr.complete(lost_band)


def test_search_cache_is_keyed_by_the_query_and_can_be_turned_off(world, ingest_params):
    # A rolling range (as the daily deployment runs) that still reaches back to June 2024.
    rolling = {"start": None, "end": None, "lookback_days": 3660, "max_cloud": 20}
    no_cache = {"options": {**ingest_params["options"], "search_cache_seconds": 0}}
    runs, stac_requests = [], []
    for params in (ingest_params, ingest_params, {**ingest_params, **no_cache},
                   {**ingest_params, **rolling}):
        world.stac_http.reset_stats()
        runs.append(ingest(**params, return_state=True))
        stac_requests.append(len(world.stac_http.requests()))
    first, same, uncached, other_query = runs

    def search_state(state) -> str:
        return runs_by_name(state)["search-scenes"][0].state.name

    assert [search_state(s) for s in runs] == ["Completed", "Cached", "Completed", "Completed"]
    assert stac_requests[1] == 0 and all(stac_requests[i] > 0 for i in (0, 2, 3))
    low_cloud = [i for i in world.items if i.properties["eo:cloud_cover"] <= 20]
    assert other_query.result()["scenes"] == len(low_cloud) < len(world.items)
    today = datetime.now(UTC).date()
    assert other_query.result()["label"] == f"{today - timedelta(days=3660)}..{today}"


def test_injected_503s_are_retried_until_the_scene_is_stored(world, http, faults, ingest_params,
                                                            store):
    flaky = world.items[1]
    with faults(flaky, count=2):
        state = ingest(**ingest_params, return_state=True)

    assert state.is_completed(), state.message
    assert http.fault_count("status_503") == 2
    statuses = [r.status for r in http.requests() if r.path.startswith(flaky.id)]
    assert statuses.count(503) == 2 and 206 in statuses[statuses.index(503):]
    attempts = {r.name: r.run_count for r in runs_by_name(state)["store"]}
    assert attempts[f"store-{flaky.id}"] >= 2
    assert all(n == 1 for name, n in attempts.items() if name != f"store-{flaky.id}")
    assert manager(store, world).complete(manager(store, world).identifier(flaky))


def test_a_scene_failing_for_good_does_not_stop_the_others(world, http, faults, ingest_params,
                                                           store):
    broken = world.items[3]
    params = {**ingest_params, "options": {**ingest_params["options"], "retries": 1}}
    with faults(broken, count=10_000):
        state = ingest(**params, return_state=True)

    assert state.is_failed()
    mgr = manager(store, world)
    broken_id = mgr.identifier(broken)
    assert state.message.startswith("1 of 4 scenes failed")
    assert broken_id in state.message and "TransientSourceError" in state.message
    assert [i.id for i in world.items if mgr.complete(mgr.identifier(i))] == [
        i.id for i in world.items if i is not broken
    ]
    attempts = {r.name: (r.run_count, r.state.name) for r in runs_by_name(state)["store"]}
    assert attempts[f"store-{broken.id}"] == (2, "Failed")  # 1 try + 1 retry
    with pytest.raises(Exception, match=broken_id) as info:
        state.result()
    assert info.value.failures.keys() == {broken_id}
    rows = json.loads(next(a for a in artifacts(state.state_details.flow_run_id)
                           if a.type == "table").data)
    assert {r["scene"]: r["status"] for r in rows}[broken_id] == "failed"


def test_a_user_error_fails_fast_without_retries(world, http, ingest_params, store):
    # Scene 0's identifier holds a band on another tile's grid: adding SCL must be refused.
    victim, other = world.items[0], world.items[2]
    mgr = manager(store, world, bands=["B04"])
    mgr.save_to_store(mgr.download_scene_from_source(other, ["B04"]), mgr.identifier(victim))
    http.reset_stats()
    # Credentials in the URL (the STAC API ignores them) must not reach logs or artifacts.
    secret_url = world.stac_url.replace("http://", "http://reader:s3cr3t-pw@")

    state = ingest(**{**ingest_params, "stac_url": secret_url}, return_state=True)

    assert state.is_failed()
    victim_id = mgr.identifier(victim)
    assert victim_id in state.message and "CoordinateMismatchError" in state.message
    attempts = {r.name: (r.run_count, r.state.name) for r in runs_by_name(state)["store"]}
    assert attempts[f"store-{victim.id}"] == (1, "Failed"), "user errors must not be retried"
    # Refused before any pixel was read: only the SCL COG's header (HEAD and one range).
    assert requests_by_scene(http).get(victim.id, 0) <= 2
    assert manager(store, world).missing_bands(victim_id) == ["SCL"]
    assert sum(manager(store, world).complete(manager(store, world).identifier(i))
               for i in world.items) == 3
    logs = " ".join(log.message for log in flow_logs(state.state_details.flow_run_id))
    reports = " ".join(str(a.data) + str(a.description)
                       for a in artifacts(state.state_details.flow_run_id))
    assert "REDACTED@127.0.0.1" in logs
    assert "s3cr3t" not in logs + reports + state.message


def test_ingest_scene_runs_four_steps_and_retries_the_save(world, http, faults, store,
                                                           prefect_results):
    item = world.items[1]
    params = {"item": item.id, "store": str(store), "bands": BANDS, "stac_url": world.stac_url,
              "options": {"retries": 2, "retry_backoff_seconds": 0.1,
                          "retry_jitter_factor": 0.0}}
    with faults(item, count=1):
        state = ingest_scene(**params, return_state=True)

    assert state.is_completed(), state.message
    assert state.result()["fetched"] == ["B04", "SCL"] and state.result()["bytes_written"] > 0
    runs = runs_by_name(state)
    assert sorted(runs) == ["download-scene", "missing-bands", "save-scene", "scene-identifier"]
    # The 503 meets the COG header check (download-scene, before the lazy load) or a pixel
    # read (save-scene): whichever step met it is retried, once.
    attempts = runs["download-scene"][0].run_count + runs["save-scene"][0].run_count
    assert attempts == 3, "the step that met the 503 is retried"
    assert not [p for p in prefect_results.rglob("*") if p.is_file()], "no Dataset persisted"

    http.reset_stats()
    again = ingest_scene(**params, return_state=True)
    assert again.result()["skipped"] is True and http.requests() == []
    assert sorted(runs_by_name(again)) == ["missing-bands", "scene-identifier"]


def test_ingest_runs_scenes_on_an_existing_dask_cluster_into_s3(world, ingest_params, s3_server,
                                                                 s3_store):
    """`dask scheduler` and two `dask worker` processes started here, the store on S3: the
    scenes run on the workers (the pixels too) and land in the one shared object store."""
    distributed = pytest.importorskip("distributed")
    from dask_cluster import DaskCluster
    from scenestore.store.verify import verify_scene

    with DaskCluster(workers=2, env=s3_server.env()) as cluster, \
            distributed.Client(cluster.address) as client, \
            distributed.get_task_stream(client) as stream:
        options = {**ingest_params["options"], "dask_address": cluster.address}
        params = {**ingest_params, "store": s3_store, "options": options}
        state = ingest(**params, return_state=True)
        workers = client.run(os.getpid)
        started_here = cluster.worker_pids()

    assert state.is_completed(), state.message
    assert state.result()["stored"] == 4
    mgr = manager(s3_store, world)
    assert all(mgr.complete(mgr.identifier(item)) for item in world.items)
    assert all(verify_scene(mgr.scenes, mgr.identifier(item)) == [] for item in world.items)
    ran_on = [t["worker"] for t in stream.data if str(t["key"]).startswith("store_scene-")]
    assert len(ran_on) == 4 and set(ran_on) <= set(workers)
    assert set(workers.values()) == started_here, "the test's own worker processes"
    # A scene's pixel work runs inside the worker process that runs its store_scene task (the
    # library writes bands from its own threads with dask's local scheduler), so no pixels
    # travel between workers and nothing else is scheduled on the cluster.
    assert {str(t["key"]).split("-")[0] for t in stream.data} == {"store_scene"}
