"""Fixtures for the flow tests: one Prefect test server per session, the offline world.

The ``world`` fixture (tests/conftest.py) serves 4 tiny scenes from 2024-06-01 on a few MGRS
tiles. Flows run against ``prefect_test_harness`` started once per session; each test gets its
own result storage (the harness does not isolate it), so search cache hits come only from the
test's own runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_helpers import BANDS, WORLD_BBOX, WORLD_END, WORLD_START


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A Prefect API (the test harness server) for the whole session; yields its URL."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def prefect_results(prefect_api: str, tmp_path: Path) -> Iterator[Path]:
    """Isolated result storage (and so search cache) for one test."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    storage = tmp_path / "prefect-results"
    with temporary_settings(updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH: storage}):
        yield storage


@pytest.fixture(autouse=True)
def fresh_gdal_cache() -> None:
    """Start each test as a new process would: GDAL remembers nothing of earlier reads.

    Otherwise GDAL's in-process /vsicurl/ cache answers reads of files an earlier test
    fetched, and the world's server (where the tests count requests) never sees them.
    """
    from scenestore.gdal import clear_http_cache

    clear_http_cache()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty store directory for one test."""
    return tmp_path / "store"


@pytest.fixture
def ingest_params(world: Any, store: Path) -> dict[str, Any]:
    """Parameters of an ingest run over the whole offline world, with fast retries."""
    return {
        "store": str(store),
        "bbox": WORLD_BBOX,
        "start": WORLD_START,
        "end": WORLD_END,
        "bands": BANDS,
        "stac_url": world.stac_url,
        "options": {"max_in_flight": 2, "retries": 2, "retry_backoff_seconds": 0.1,
                    "retry_jitter_factor": 0.0},
    }


@pytest.fixture
def faults(world: Any) -> Iterator[Callable[..., Any]]:
    """Apply 503 faults to one scene's COGs: ``with faults(item, count): ...``.

    Uses the world's own fault plans (first ``count`` requests for the scene answered 503).
    GDAL's own HTTP retries (5, with growing delays) are switched off for the test, so a fault
    reaches the task at once and the Prefect retry is what recovers from it.
    """
    import odc.stac

    from scenestore.gdal import COG_OPTIONS, cog_options, configure_gdal
    from scenestore_world.faults import FaultPlan

    def apply(item: Any, count: int) -> Any:
        plan = FaultPlan(status_503=1.0, path_glob=f"{item.id}/*", max_faults=count)
        return world.faulted(cog=plan)

    configure_gdal()
    retries = COG_OPTIONS["GDAL_HTTP_MAX_RETRY"]
    # The header check before the load opens each COG with COG_OPTIONS, the load with odc's.
    COG_OPTIONS["GDAL_HTTP_MAX_RETRY"] = 0
    odc.stac.configure_rio(cloud_defaults=True, **cog_options())
    try:
        yield apply
    finally:
        COG_OPTIONS["GDAL_HTTP_MAX_RETRY"] = retries
        odc.stac.configure_rio(cloud_defaults=True, **cog_options())
