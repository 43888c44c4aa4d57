"""Two ingest flow runs in two processes share one provider budget on the Prefect server.

The offline world answers 429 above 8 requests/s per server. Each run's process alone would
send up to 6 requests/s (its own budget of 4/s plus a burst), two together up to 12: over the
limit. With the Prefect limits (``flows/throttle.py``) they share 4/s and the world sees no
429, and both runs complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_helpers import BANDS
from flows.throttle import ensure_provider_limits, provider_limits

from scenestore.throttle import RATE_ENV
from scenestore_world import FaultPlan, OfflineWorld
from scenestore_world.traffic import most_in_window

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
RUN = """
import json, sys
from flows.ingest import ingest
print(json.dumps(ingest(**json.loads(sys.argv[1]))))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineWorld]:
    """A throttling world of its own (the session world must stay unthrottled)."""
    with OfflineWorld(tmp_path_factory.mktemp("throttled-flow-world"), scenes=2, seed=7) as w:
        plan = FaultPlan(max_rps=8)
        w.set_faults(cog=plan, stac=plan)
        yield w


def test_two_flow_runs_share_the_provider_budget(
    prefect_api: str, world: OfflineWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.setenv(RATE_ENV, "earth-search=4")
    limits = provider_limits("earth-search")
    with get_client(sync_client=True) as client:
        names = ensure_provider_limits(client, ["earth-search"])
        assert names == [limits.requests, limits.scenes]
        requests = client.read_global_concurrency_limit_by_name(limits.requests)
        assert (requests.limit, requests.slot_decay_per_second) == (4, 4.0)
        assert client.read_global_concurrency_limit_by_name(limits.scenes).limit == 4

    world.http.reset_stats()  # type: ignore[union-attr]
    world.stac_http.reset_stats()  # type: ignore[union-attr]
    env = {
        **os.environ,
        RATE_ENV: "earth-search=4",
        "PREFECT_API_URL": prefect_api,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    }
    procs = []
    for i in range(2):
        params: dict[str, Any] = {
            "store": str(tmp_path / f"store{i}"),
            "bbox": {"west": -180, "south": -80, "east": 180, "north": 80},
            "start": "2024-01-01",
            "end": "2025-12-31",
            "bands": BANDS,
            "stac_url": world.stac_url,
            "options": {"max_in_flight": 3, "retries": 1, "retry_backoff_seconds": 0.1},
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RUN, json.dumps(params)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    for out, _ in outs:
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["stored"] == len(world.items), summary
    for server in (world.http, world.stac_http):
        records = server.requests()  # type: ignore[union-attr]
        assert [r.path for r in records if r.status == 429] == []
        assert most_in_window([r.at for r in records]) <= 8


def test_a_429_seen_by_one_worker_holds_the_fleet(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pause ordered through the Prefect limit makes the next fleet-wide slot wait it out."""
    from flows.throttle import PrefectGate
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import rate_limit

    from scenestore.throttle import Limits, Throttle

    monkeypatch.setenv(RATE_ENV, "earth-search=4")
    limits = provider_limits("earth-search")
    with get_client(sync_client=True) as client:
        ensure_provider_limits(client, ["earth-search"])
    gate = PrefectGate()
    gate.add(limits)
    gate.pause(Throttle("earth-search", Limits(rate=4.0)), 2.0)
    started = time.monotonic()
    rate_limit(limits.requests, occupy=1, strict=True)  # what another worker's request does
    assert time.monotonic() - started >= 1.5
