"""`make demo`: run the Prefect `ingest` flow against the offline world, twice.

Starts the offline Sentinel-2 world (a real STAC API and COG server on 127.0.0.1), then runs the
`ingest` flow of flows/ingest.py in this process. Prefect starts its own temporary (ephemeral)
server for it: nothing to set up, no `prefect server start`. Its database lives in
.world/demo/prefect, so a second `make demo` skips the database set-up. The flow runs twice
with the same parameters: the first run stores the scenes, the second finds every band stored
and downloads nothing. Then it prints what the store holds (`scenestore ls`) and the run's
report (the `ingest-report` table artifact, also written to a file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORLD_DIR = ROOT / ".world" / "demo"
STORE = ROOT / "demo-store"
REPORT = WORLD_DIR / "ingest-report.md"
START, END = "2024-06-01", "2024-07-31"

# Before Prefect is imported: always the ephemeral server, whatever the active profile points
# at, with its own database next to the world (removed by `make clean`).
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_HOME"] = str(WORLD_DIR / "prefect")
(WORLD_DIR / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect makes no parents
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
# The first start creates the database (migrations): over Prefect's 20 s default on 2 busy cores.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
sys.path.insert(0, str(ROOT))  # `flows` is a top-level package of the checkout


def report_table(flow_run_id: Any) -> tuple[str, list[dict[str, Any]]]:
    """The run's `ingest-report` artifact: its description and rows."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    for artifact in found:
        if artifact.key == "ingest-report":
            data = artifact.data
            rows = json.loads(data) if isinstance(data, str) else data
            return artifact.description or "", list(rows or [])
    return "", []


def markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the report rows."""
    if not rows:
        return "(no scenes)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_once(number: int, world: Any, params: dict[str, Any]) -> tuple[bool, str]:
    """One ingest flow run; prints what it did. Returns (completed, report markdown)."""
    from flows.ingest import ingest

    world.http.reset_stats()
    started = time.perf_counter()
    state = ingest(**params, return_state=True)
    seconds = time.perf_counter() - started
    requests = sum(s.requests for s in world.http.stats().values())
    description, rows = report_table(state.state_details.flow_run_id)
    print(f"\nRun {number}: flow run {state.state_details.flow_run_id} ended {state.name} "
          f"in {seconds:.1f} s. {description}")
    if requests == 0:
        print(f"Run {number}: the COG server answered 0 requests: every band was already "
              "stored, nothing was downloaded.")
    else:
        print(f"Run {number}: the COG server answered {requests} requests (the downloads).")
    text = f"## Run {number}: {state.name}\n\n{description}\n\n{markdown(rows)}"
    return state.is_completed(), text


def start_prefect() -> threading.Thread:
    """Start Prefect's temporary server in the background (10-60 s on 2 busy cores).

    The flow would start it on its first API call; started now, it boots while the world
    starts and the flow's modules import. Join the thread before the first flow run.
    """
    from prefect.server.api.server import SubprocessASGIServer

    print("Starting Prefect's temporary server (no set-up; its database is in "
          f"{WORLD_DIR / 'prefect'})", flush=True)
    # The same (singleton) server the flow's client uses when no PREFECT_API_URL is set.
    thread = threading.Thread(target=SubprocessASGIServer().start, daemon=True)
    thread.start()
    return thread


def main() -> int:
    """Serve the world, run the ingest flow twice, print the store and the report."""
    from scenestore_world import OfflineWorld

    prefect_server = start_prefect()
    import flows.ingest  # noqa: F401  (imports while the server boots)

    with OfflineWorld(WORLD_DIR, scenes=6, size="tiny", seed=0) as world:
        w, s, e, n = world.items[0].bbox or (0.0, 0.0, 0.0, 0.0)  # world items have one
        bbox = {"west": w, "south": s, "east": e, "north": n}
        print(f"Offline world: STAC API {world.stac_url}, COGs {world.data_url}")
        for line in world.coverage():
            print(f"  {line}")
        print(f"Running the Prefect flow `ingest` (flows/ingest.py) on Prefect's temporary "
              f"server: AOI {w:.5f},{s:.5f},{e:.5f},{n:.5f}, {START}..{END}, all 13 bands, "
              f"into {STORE}")
        params = {"store": str(STORE), "bbox": bbox, "start": START, "end": END,
                  "stac_url": world.stac_url}
        reports = []
        prefect_server.join()
        for number in (1, 2):
            completed, text = run_once(number, world, params)
            reports.append(text)
            if not completed:
                REPORT.write_text("\n".join(reports))
                print(f"The run failed; its report is in {REPORT}.")
                return 1
    REPORT.write_text("# make demo: the ingest flow's reports (artifact `ingest-report`)\n\n"
                      + "\n".join(reports))
    print(f"\nThe store ({STORE}):")
    subprocess.run([sys.executable, "-m", "scenestore.cli", "ls", "--store", str(STORE)],
                   check=True)
    print(f"\nEach run's report is the table artifact `ingest-report` of its flow run (shown in "
          f"the UI with `make up`); both are also in {REPORT}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
