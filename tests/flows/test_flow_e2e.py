"""End to end: a real Prefect server, a process work pool, the deployments of
deployments/prefect.yaml, a worker, and runs triggered from the CLI against the offline world.

Everything started here is stopped here, worker before server, also when the test fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flow_helpers import BANDS, WORLD_BBOX
from prefect_server import DEPLOYMENTS, PrefectServer, running_server

from scenestore.stac import StacStoreManager

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A real server (no UI) on a free port with SQLite in a temporary PREFECT_HOME."""
    with running_server(tmp_path) as server:
        yield server


def test_deployments_run_on_a_worker_against_the_offline_world(prefect_server, world, tmp_path):
    server = prefect_server
    deployed = server.deploy_with_worker()
    for name in DEPLOYMENTS:
        assert name in deployed
    daily = server.api("GET", "/deployments/name/ingest/daily")
    assert [s["schedule"]["cron"] for s in daily["schedules"]] == ["0 6 * * *"]
    assert daily["parameters"]["lookback_days"] == 3 and "start" not in daily["parameters"]

    on_demand_store, backfill_store = tmp_path / "on-demand", tmp_path / "backfill"
    common = ["--param", f"bbox={json.dumps(WORLD_BBOX)}", "--param", f"bands={json.dumps(BANDS)}",
              "--param", f"stac_url={world.stac_url}"]
    outputs = server.cli_many([
        ["deployment", "run", "ingest/on-demand", "--param", f"store={on_demand_store}",
         "--param", "start=2024-06-01", "--param", "end=2024-06-05", *common],
        ["deployment", "run", "backfill/backfill", "--param", f"store={backfill_store}",
         "--param", "start=2024-06-01", "--param", "end=2024-06-14", "--param",
         "window_unit=week", "--param", "poll_seconds=1", "--param", "mode=deployments",
         *common],
    ])
    ingest_run, backfill_run = (UUID_RE.search(out).group(0) for out in outputs)

    ingest_final = server.wait_final(ingest_run, 150)
    backfill_final = server.wait_final(backfill_run, 150)

    assert ingest_final["state"]["type"] == "COMPLETED", server.tail()
    assert backfill_final["state"]["type"] == "COMPLETED", server.tail()
    windows = server.child_runs(backfill_run)
    assert sorted((r["parameters"]["start"], r["state"]["type"]) for r in windows) == [
        ("2024-06-01", "COMPLETED"), ("2024-06-08", "COMPLETED")]
    assert all(r["deployment_id"] for r in windows), "each window is a run of the deployment"
    in_order = sorted(windows, key=lambda r: r["expected_start_time"])
    assert [r["name"] for r in in_order] == ["ingest 2024-06-01..2024-06-07",
                                             "ingest 2024-06-08..2024-06-14"], "date order"
    # One read for all window runs per poll, the interval growing while none finishes.
    server.wait_log(backfill_run, "polls (one API call each)", 10)
    artifacts = server.api("POST", "/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [backfill_run]}}})
    keys = {a["key"] for a in artifacts}  # type: ignore[union-attr]
    assert {"backfill-windows", "backfill-progress"} <= keys, keys

    mgr = StacStoreManager(BANDS, on_demand_store, stac_url=world.stac_url)
    early = [i for i in world.items if str(i.datetime.date()) <= "2024-06-05"]
    assert [i.id for i in world.items if mgr.complete(mgr.identifier(i))] == [i.id for i in early]
    mgr = StacStoreManager(BANDS, backfill_store, stac_url=world.stac_url)
    assert all(mgr.complete(mgr.identifier(i)) for i in world.items)
