"""Failures as a user meets them in the UI: bad parameters, a crashed run, failed downloads.

* Parameter mistakes fail the run before its body starts (no task, no window run), with one
  line naming the flow parameter, and no traceback in the run's logs.
* A run whose process is stopped mid-run ends Crashed with a message (and a ``crash-report``
  artifact) saying what happened and that Retry downloads only the missing bands.
* A scene whose download fails leaves nothing in the store that ``scenestore ls`` lists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import pytest
from flow_helpers import BANDS, WORLD_BBOX, artifacts, flow_logs, task_runs
from flows.backfill import backfill
from flows.ingest import ingest
from flows.params import IngestRequest, flags_to_parameters

from scenestore.errors import InvalidRequestError
from scenestore.stac import StacStoreManager

pytestmark = pytest.mark.usefixtures("prefect_results")

REPO = Path(__file__).resolve().parents[2]
#: A box of 5 x 5 km in the world's first tile, as a user would type it.
BOX = {"west": 48.15, "south": 18.92, "east": 48.20, "north": 18.97}
SWAPPED = {"west": 48.20, "south": 18.92, "east": 48.15, "north": 18.97}
POINT = {"type": "Point", "coordinates": [48.17, 18.95]}


def _child_runs(run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))


@pytest.mark.parametrize(
    ("flow", "params", "parameter", "says"),
    [
        (backfill, {"start": "2024-06-30", "end": "2024-06-01", "bbox": BOX}, "end",
         "end 2024-06-01 is before start 2024-06-30"),
        (backfill, {"start": "2024-06-01", "end": "2024-06-30", "bbox": BOX, "aoi": POINT},
         "aoi", "both bbox and aoi are set"),
        (backfill, {"start": "2024-06-01", "end": "2024-06-30", "bbox": SWAPPED}, "bbox",
         "bbox west 48.2 is east of east 48.15"),
        (ingest, {"start": "2024-06-01", "end": "2024-06-30", "bbox": SWAPPED}, "bbox",
         "swap them"),
        (ingest, {"start": "2024-06-30", "end": "2024-06-01", "bbox": BOX}, "end",
         "end 2024-06-01 is before start 2024-06-30"),
        (ingest, {"start": "2024-06-01", "end": "2024-06-30", "bbox": BOX, "aoi": POINT},
         "aoi", "both bbox and aoi are set"),
    ],
    ids=["backfill-end-before-start", "backfill-bbox-and-aoi", "backfill-swapped-bbox",
         "ingest-swapped-bbox", "ingest-end-before-start", "ingest-bbox-and-aoi"],
)
def test_parameter_mistakes_fail_before_the_body_naming_the_parameter(
    store, flow, params, parameter, says
):
    state = flow(store=str(store), bands=BANDS, stac_url="http://127.0.0.1:9", **params,
                 return_state=True)

    assert state.is_failed()
    # Prefect's header line, then one line for the parameter, as the UI shows it.
    header, line = state.message.split("\n")
    assert header.endswith("Flow run received invalid parameters:")
    assert line.startswith(f" - {parameter}: ") and says in line
    assert "--" not in line and "Traceback" not in state.message
    run_id = state.state_details.flow_run_id
    assert task_runs(run_id) == [] and _child_runs(run_id) == [], "the body never ran"
    assert not any("Traceback" in r.message for r in flow_logs(run_id))
    assert not store.exists()


def test_a_mistake_found_in_the_body_fails_with_one_line_and_no_traceback(store):
    state = backfill(store=str(store), start=date(2024, 6, 1), end=date(2024, 6, 30),
                     bbox=BOX, bands=BANDS, tiles=["ZZ9ZZ"], stac_url="http://127.0.0.1:9",
                     return_state=True)

    assert state.is_failed()
    assert state.message.startswith("Invalid backfill parameters: ")
    assert "ZZ9ZZ" in state.message and "\n" not in state.message
    run_id = state.state_details.flow_run_id
    assert task_runs(run_id) == []
    assert not any("Traceback" in r.message for r in flow_logs(run_id))


def test_library_messages_name_flow_parameters_not_cli_flags():
    text = "No STAC API answered; expected a reachable STAC API root URL (check --stac-url)."
    assert flags_to_parameters(text).endswith("(check stac_url).")
    # A flag that is no flow parameter stays as it is.
    assert flags_to_parameters("raise --timeout, --max-cloud") == "raise --timeout, max_cloud"
    with pytest.raises(InvalidRequestError, match="^Invalid ingest parameters: bbox: "):
        IngestRequest.parse(store="/s", bbox=SWAPPED, start=date(2024, 6, 1), bands=BANDS)


@pytest.mark.timeout(180)
def test_a_run_stopped_mid_download_says_it_crashed_and_that_retry_resumes(
    world, faults, prefect_api, store, tmp_path
):
    # The last scene answers 503 to everything and its task waits 8 s before its retry: the
    # run is mid-download, its other scenes stored, when its process is stopped. (The signal
    # takes effect once the scene tasks in flight end: the task runner waits for them.)
    slow = world.items[-1]
    tag = f"crash-{uuid.uuid4().hex[:8]}"
    params = {"store": str(store), "bbox": WORLD_BBOX, "start": "2024-06-01",
              "end": "2024-06-30", "bands": BANDS, "stac_url": world.stac_url,
              "options": {"max_in_flight": 1, "retries": 1, "retry_backoff_seconds": 8,
                          "retry_jitter_factor": 0, "quicklooks": False}}
    code = ("import json, sys\nfrom prefect import tags\nfrom flows.ingest import ingest\n"
            f"with tags({tag!r}):\n    ingest(**json.loads(sys.argv[1]))\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    with faults(slow, 10_000):
        log = tmp_path / "run.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-c", code, json.dumps(params)],
                                       cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            run = _wait_for_retry(tag, process, log)
            os.killpg(process.pid, signal.SIGTERM)  # as a stopped worker stops its runs
            final = _wait_for_crash_report(run.id)
        finally:
            # The process itself lingers until the retry wait in its scene thread ends (as
            # under a worker, which kills it after its grace period): kill it here.
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    assert final.state.is_crashed(), f"{final.state}\n{log.read_text()[-3000:]}"
    message = final.state.message
    assert message.startswith("Crashed: the run's process stopped before the run finished")
    assert "Retry" in message and "only their missing bands are downloaded" in message
    (report,) = [a for a in artifacts(run.id) if a.key == "crash-report"]
    assert "only their missing bands are downloaded" in report.data
    # What the run stored before the crash is complete; the slow scene has nothing.
    mgr = StacStoreManager(BANDS, store, stac_url=world.stac_url)
    done = [i for i in world.items if mgr.complete(mgr.identifier(i))]
    assert done and slow not in done


def _wait_for_crash_report(run_id, deadline_s: float = 45):
    """The run once it is Crashed with the hook's message (or as it is at the deadline)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            crashed = run.state is not None and run.state.is_crashed()
            if (crashed and run.state.message.startswith("Crashed:")) or (
                time.monotonic() > deadline
            ):
                return run
            time.sleep(0.25)


def _wait_for_retry(tag: str, process: subprocess.Popen, log: Path, deadline_s: float = 90):
    """The tagged ingest run, once one of its scene tasks waits for a retry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the run ended by itself:\n{log.read_text()[-3000:]}")
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
            if runs and any(t.state and t.state.name == "AwaitingRetry"
                            for t in task_runs(runs[0].id)):
                return runs[0]
            time.sleep(0.5)
    raise AssertionError(f"no scene task waited for a retry:\n{log.read_text()[-3000:]}")


def test_a_failed_download_leaves_no_scene_in_ls(world, faults, store):
    broken = world.items[0]
    with faults(broken, 10_000):
        state = ingest(store=str(store), bbox=WORLD_BBOX, start=date(2024, 6, 1),
                       end=date(2024, 6, 30), bands=BANDS, stac_url=world.stac_url,
                       options={"max_in_flight": 2, "retries": 0, "quicklooks": False},
                       return_state=True)

    assert state.is_failed() and broken.id in state.message
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "scenestore"), "ls", "--store", str(store),
         "--json"], capture_output=True, text=True, check=True)
    listed = [s["identifier"] for s in json.loads(listing.stdout)]
    mgr = StacStoreManager(BANDS, store, stac_url=world.stac_url)
    assert sorted(listed) == sorted(mgr.identifier(i) for i in world.items[1:])
    assert not any(mgr.identifier(broken) in p.name for p in store.iterdir())
