"""The ingest flow's offline mode: answered from the store alone, as on a compute node.

One online ingest (of B04 and SCL over the whole offline world) fills a store once for the
module; each test runs offline against its own copy. The offline runs get a STAC URL nothing
listens on, and the world's COG and STAC servers count the requests: an offline run must
send none.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_helpers import BANDS, WORLD_BBOX, WORLD_END, WORLD_START, artifacts, flow_logs
from flows.ingest import ingest
from flows.report import ScenesFailedError

from scenestore.stac import StacStoreManager

pytestmark = pytest.mark.usefixtures("prefect_results")

#: Nothing listens on port 9 (discard): a run that tried the STAC API would fail at once.
DEAD_STAC = "http://127.0.0.1:9/stac"


@pytest.fixture(scope="module")
def ingested(world: Any, prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding B04 and SCL of every scene of the world, ingested online by the flow."""
    store = tmp_path_factory.mktemp("offline") / "store"
    # No search cache: nothing is persisted outside the module's temporary directory.
    options = {"max_in_flight": 2, "retries": 1, "retry_backoff_seconds": 0.1,
               "search_cache_seconds": 0}
    state = ingest(store=str(store), bbox=WORLD_BBOX, start=WORLD_START, end=WORLD_END,
                   bands=BANDS, stac_url=world.stac_url, options=options, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["stored"] == len(world.items)
    return store


@pytest.fixture
def store(ingested: Path, tmp_path: Path) -> Path:
    """This test's copy of the ingested store."""
    copy = tmp_path / "store"
    shutil.copytree(ingested, copy)
    return copy


@pytest.fixture
def quiet(world: Any, http: Any) -> Iterator[None]:
    """Assert that the test sent no request to the world's COG or STAC servers."""
    http.reset_stats()
    world.stac_http.reset_stats()
    yield
    assert http.requests() == [], "an offline run must not read any COG"
    assert world.stac_http.requests() == [], "an offline run must not search"


def offline_params(store: Path, **changes: Any) -> dict[str, Any]:
    """Parameters of an offline run over the whole world, with a STAC URL that would fail."""
    return {"store": str(store), "bbox": WORLD_BBOX, "start": WORLD_START, "end": WORLD_END,
            "bands": BANDS, "stac_url": DEAD_STAC, "offline": True, **changes}


def identifiers(store: Path, world: Any) -> list[str]:
    mgr = StacStoreManager(BANDS, store, stac_url=world.stac_url)
    return [mgr.identifier(item) for item in world.items]


def report(state: Any) -> dict[str, dict[str, Any]]:
    """The run's ingest-report rows by scene."""
    table = next(a for a in artifacts(state.state_details.flow_run_id) if a.type == "table")
    assert table.key == "ingest-report"
    return {row["scene"]: row for row in json.loads(table.data)}


def test_a_complete_store_is_ready_offline_and_nothing_is_downloaded(world, store, quiet):
    state = ingest(**offline_params(store), return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    assert {k: summary[k] for k in ("scenes", "ready", "incomplete", "not_stored")} == {
        "scenes": 4, "ready": 4, "incomplete": 0, "not_stored": 0,
    }
    assert sorted(summary["identifiers"]) == sorted(identifiers(store, world))
    rows = report(state)
    assert set(rows) == set(identifiers(store, world))
    assert {r["status"] for r in rows.values()} == {"ready"}
    assert {r["query"] for r in rows.values()} == {"search"}
    assert all(r["bytes"] == 0 for r in rows.values())


def test_a_scene_lacking_a_band_fails_the_run_naming_scene_and_band(world, store, quiet):
    state = ingest(**offline_params(store, bands=[*BANDS, "B08"]), return_state=True)

    assert state.is_failed()
    names = identifiers(store, world)
    assert all(f"{name} lacks B08" in state.message for name in names), state.message
    assert "without offline" in state.message
    with pytest.raises(ScenesFailedError, match="lacks B08") as info:
        state.result()
    assert info.value.failures == dict.fromkeys(names, "lacks B08")
    assert info.value.summary["incomplete"] == 4 and info.value.summary["ready"] == 0
    assert {r["status"] for r in report(state).values()} == {"incomplete (lacks B08)"}
    logs = [log.message for log in flow_logs(state.state_details.flow_run_id)]
    for name in names:
        assert f"{name} lacks B08; run without offline with network access to fetch them" in logs


def test_ids_offline_a_stored_id_is_ready_an_unknown_one_is_not_stored(world, store, quiet):
    names = identifiers(store, world)
    unknown = "S2B_33UUP_20240601_0_L2A"
    assert unknown not in {i.id for i in world.items}
    # An item id and a store identifier (of another scene), and an id the store lacks.
    ids = [world.items[0].id, names[1], unknown]

    state = ingest(store=str(store), item_ids=ids, bands=BANDS, stac_url=DEAD_STAC,
                   offline=True, return_state=True)

    assert state.is_failed()
    assert f"{unknown} is not stored" in state.message
    assert names[0] not in state.message and names[1] not in state.message
    rows = report(state)
    assert {scene: row["status"] for scene, row in rows.items()} == {
        names[0]: "ready", names[1]: "ready", unknown: "not stored",
    }
    assert rows[unknown]["query"] == "ids" and "item_ids[2]" in rows[unknown]["error"]
    with pytest.raises(ScenesFailedError, match=unknown) as info:
        state.result()
    assert info.value.summary["ready"] == 2 and info.value.summary["not_stored"] == 1

    stored_only = ingest(store=str(store), item_ids=ids[:2], bands=BANDS, stac_url=DEAD_STAC,
                         offline=True, return_state=True)
    assert stored_only.is_completed(), stored_only.message
    assert sorted(stored_only.result()["identifiers"]) == sorted(names[:2])


def tree(root: Path) -> list[tuple[str, int, int]]:
    """Every path of a store with its size and modification time."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _chmod_tree(root: Path, dirs: int, files: int) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(dirs if path.is_dir() else files)


def test_an_offline_run_writes_nothing_to_the_store(store, quiet):
    # Runs as root too (where the read-only test below is skipped).
    before = tree(store)

    assert ingest(**offline_params(store), return_state=True).is_completed()
    assert ingest(**offline_params(store, bands=["B11"]), return_state=True).is_failed()
    assert tree(store) == before


def test_a_read_only_store_works_offline(world, store, quiet):
    _chmod_tree(store, 0o555, 0o444)  # as a read-only mount on a compute node
    try:
        if os.access(store, os.W_OK):
            pytest.skip("running as root: chmod does not make the store read-only")

        state = ingest(**offline_params(store), return_state=True)

        assert state.is_completed(), state.message
        assert state.result()["ready"] == 4
        missing = ingest(**offline_params(store, bands=["B04", "B11"]), return_state=True)
        assert missing.is_failed()
        assert all(f"{name} lacks B11" in missing.message
                   for name in identifiers(store, world)), missing.message
    finally:
        _chmod_tree(store, 0o755, 0o644)  # so that pytest can remove tmp_path
