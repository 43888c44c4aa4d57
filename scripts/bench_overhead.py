"""Measure what ``ingest`` costs per scene when every scene is already complete.

For each N it builds, in a temporary directory:

* a STAC API (``rustac serve``, as the offline world runs it) holding N Earth-Search-shaped
  items of the offline world's plan (one every 3 days from 2024-06-01, on real MGRS tiles);
* a store in which all N scenes are complete: each scene directory holds the commit record of
  every band, written with the library's commit API (no pixels: a complete scene is never read).

Then, against a Prefect test server started for that N, it runs the real ``ingest`` flow over
the whole date range twice: first with an empty search cache (the search pages through the
API), then again (the search is a cache hit). Wall time is measured around the flow call.

Run from the repository root::

    uv run --frozen python scripts/bench_overhead.py --scenes 200 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from scenestore.bands import ALL_BANDS
from scenestore.profiles import get_profile
from scenestore.store import LocalClient
from scenestore.store.layout import commit_key
from scenestore.store.records import CommitRecord, record_bytes
from scenestore_world.items import COLLECTION_ID, collection_dict, item_dict
from scenestore_world.scenes import DAYS_BETWEEN_SCENES, START_DATE, plan_scenes
from scenestore_world.server import free_port, rustac_executable, search_all

#: The repository root: ``flows`` is imported from there (this file runs as a script).
ROOT = Path(__file__).resolve().parent.parent
#: Covers every scene of the offline world's plan.
BBOX = {"west": -180.0, "south": -80.0, "east": 180.0, "north": 80.0}


@dataclass(frozen=True)
class Measurement:
    """One timed ingest run.

    Attributes:
        scenes: Scenes the run found.
        label: Which run (cold or cached search).
        seconds: Wall time of the flow call.
        search_seconds: Time of the search task as the flow ran it.
        per_scene_part_seconds: Time of the bulk check, report and progress artifacts.
    """

    scenes: int
    label: str
    seconds: float
    search_seconds: float
    per_scene_part_seconds: float

    @property
    def ms_per_scene(self) -> float:
        """Wall time per scene in milliseconds."""
        return 1000 * self.seconds / self.scenes


def build(count: int, directory: Path, stack: ExitStack) -> tuple[str, Path]:
    """Serve ``count`` items over a STAC API and fill a store where all are complete.

    Returns:
        The STAC API URL and the store directory.
    """
    scenes = plan_scenes(count, size="tiny")
    serve = directory / "serve"
    serve.mkdir(parents=True)
    # Asset hrefs point nowhere: complete scenes must never be read.
    items = [item_dict(scene, "http://127.0.0.1:9/never-read") for scene in scenes]
    (serve / "collection.json").write_text(json.dumps(collection_dict(scenes)))
    (serve / "items.ndjson").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    port = free_port()
    log = open(serve / "rustac.log", "wb")  # noqa: SIM115 (closed by the stack)
    stack.callback(log.close)
    process = subprocess.Popen(
        [str(rustac_executable()), "serve", "--addr", f"127.0.0.1:{port}",
         str(serve / "collection.json"), str(serve / "items.ndjson")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    stack.callback(_stop, process)
    stac_url = f"http://127.0.0.1:{port}"
    _wait_searchable(stac_url, count, process)

    store = directory / "store"
    prefix = get_profile("earth-search").id_prefix
    client = LocalClient(store)
    for item in items:
        identifier = f"{prefix}_{item['id']}"
        for band in ALL_BANDS:
            record = CommitRecord(band=band, shape=(120, 120), chunks=(120, 120),
                                  dtype="uint8" if band == "SCL" else "uint16")
            client.put(commit_key(identifier, band), record_bytes(record))
    return stac_url, store


def measure(count: int, *, max_in_flight: int = 4) -> list[Measurement]:
    """Time two ingest runs over ``count`` complete scenes on a fresh Prefect test server."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as `python scripts/...`, only scripts/ is on it
    from flows.ingest import ingest

    end = START_DATE + timedelta(days=DAYS_BETWEEN_SCENES * count)
    results = []
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix=f"bench-{count}-"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        stac_url, store = build(count, directory, stack)
        stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        stack.enter_context(temporary_settings(
            updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH: directory / "results"}))
        for label in ("cold search", "cached search"):
            started = time.perf_counter()
            state = ingest(store=str(store), bbox=BBOX, start=START_DATE, end=end,
                           stac_url=stac_url, options={"max_in_flight": max_in_flight},
                           return_state=True)
            seconds = time.perf_counter() - started
            summary = state.result()
            if summary["scenes"] != count or summary["complete"] != count:
                raise RuntimeError(f"Expected {count} complete scenes, got {summary}")
            results.append(Measurement(count, label, seconds, _search_seconds(state),
                                       summary["seconds"]))
            time.sleep(3)  # let the server drain this run's events before the next
    return results


def _search_seconds(state: Any) -> float:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    run = next(r for r in runs if r.name.startswith("search-scenes"))
    if run.start_time and run.end_time:
        return (run.end_time - run.start_time).total_seconds()
    return 0.0  # a cache hit never enters Running


def _wait_searchable(stac_url: str, count: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rustac serve exited with {process.returncode}")
        try:
            if len(search_all(stac_url, {"collections": [COLLECTION_ID]}, limit=1000)) == count:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"STAC API at {stac_url} did not serve {count} items within 60 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    """Parse arguments, measure, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--max-in-flight", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    rows = [m for n in args.scenes for m in measure(n, max_in_flight=args.max_in_flight)]
    print(f"{'scenes':>7} {'run':<14} {'total s':>8} {'ms/scene':>9} {'search s':>9} "
          f"{'check+report s':>15}")
    for m in rows:
        print(f"{m.scenes:>7} {m.label:<14} {m.seconds:>8.2f} {m.ms_per_scene:>9.2f} "
              f"{m.search_seconds:>9.2f} {m.per_scene_part_seconds:>15.2f}")


if __name__ == "__main__":
    main()
