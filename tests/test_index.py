"""The store index as a user meets it: ls and search answer from it, offline, and it never lies.

The index is derived data (commit records stay the truth): every test compares what it says
with what ``ls --scan`` (every commit record read) says, after ingests, removals, hand-made
damage and killed writers.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import shapely

from scenestore import StacStoreManager
from scenestore.store import open_client, open_store
from scenestore.store.index import (
    COMPACT_AFTER,
    FOOTPRINT_ATTR,
    JOURNAL_DIR,
    SNAPSHOT_KEY,
    IndexQuery,
    StoreIndex,
    compact,
    rebuild,
)
from scenestore.store.inventory import list_scenes
from scenestore.store.layout import scene_path
from scenestore.store.removal import parse_age, parse_size, select_to_fit
from test_cli import run

WRITER = Path(__file__).parent / "writer.py"
BANDS = ["B02", "B03", "B04"]


@pytest.fixture(scope="module")
def filled(world, tmp_path_factory) -> Path:
    """A store holding B02,B03,B04 of every scene of the world (copied per test)."""
    store = tmp_path_factory.mktemp("index") / "store"
    manager = StacStoreManager(BANDS, store, stac_url=world.stac_url)
    for item in world.items:
        manager.download_and_store(item)
    return store


@pytest.fixture
def store(filled, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(filled, copy)
    return copy


def listing(store: Path, *extra: str) -> list[dict]:
    proc = run("ls", "--store", str(store), "--json", *extra, check=True)
    return [
        {k: r[k] for k in ("identifier", "bands", "size_bytes", "datetime", "tile")}
        for r in json.loads(proc.stdout)
    ]


def claimed_vs_committed(store: Path | str) -> list[str]:
    """Bands the index (read raw: no check against the store) claims but are not committed."""
    if isinstance(store, Path) and not store.exists():  # killed before it wrote anything
        return []
    scenes = open_store(store)
    index = StoreIndex.read(scenes.client, check=False)
    wrong = []
    for info in index.scenes():
        committed = (
            scenes.committed_bands(info.identifier) if scenes.exists(info.identifier) else set()
        )
        wrong += [f"{info.identifier}/{b}" for b in info.bands if b not in committed]
    return wrong


def test_ls_from_the_index_equals_the_scan_and_survives_folding(world, store):
    indexed = listing(store)
    assert indexed == listing(store, "--scan")
    assert [r["identifier"] for r in indexed] == sorted(f"es-l2a_{item.id}" for item in world.items)
    assert all(r["bands"] == BANDS for r in indexed)
    # Ingests journal; a rebuild folds the journal into the snapshot and empties it.
    assert list((store / JOURNAL_DIR).iterdir())
    out = run("index", "--store", str(store), "--rebuild", check=True).stdout
    assert f"{len(world.items)} scenes" in out
    assert not list((store / JOURNAL_DIR).iterdir())
    assert listing(store) == indexed
    status = run("index", "--store", str(store), check=True).stdout
    assert f"{len(world.items)} scenes indexed" in status


def test_the_snapshot_is_a_geopackage_other_tools_read(world, store):
    rebuild(open_client(store))
    conn = sqlite3.connect(store / SNAPSHOT_KEY)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
    assert conn.execute(
        "SELECT data_type, srs_id FROM gpkg_contents WHERE table_name = 'scenes'"
    ).fetchall() == [("features", 4326)]
    rows = conn.execute("SELECT identifier, geom, tile, cloud_cover, bands FROM scenes").fetchall()
    assert len(rows) == len(world.items)
    by_id = {f"es-l2a_{item.id}": item for item in world.items}
    for identifier, blob, tile, cloud, bands in rows:
        assert blob[:2] == b"GP"
        footprint = shapely.from_wkb(blob[8 + 32 :])  # header + [minx, maxx, miny, maxy]
        item = by_id[identifier]
        assert footprint.intersects(shapely.box(*item.bbox))
        assert cloud == item.properties["eo:cloud_cover"]
        assert bands == ",B02,B03,B04,"
        assert tile


def test_new_scenes_record_their_footprint(store):
    attrs = json.loads((next(store.glob("*.zarr")) / "zarr.json").read_text())["attributes"]
    footprint = attrs[FOOTPRINT_ATTR]
    west, south, east, north = footprint["bbox"]
    assert west < east and south < north
    assert footprint["geometry"]["type"] == "Polygon"


def test_offline_search_by_area_dates_cloud_tiles_and_bands(world, store):
    item = world.items[0]
    w, s, e, n = item.bbox
    cx, cy = (w + e) / 2, (s + n) / 2
    day = item.datetime.date().isoformat()
    base = [
        "search",
        "--store",
        str(store),
        "--json",
        "--bbox",
        f"{cx},{cy},{cx + 0.01},{cy + 0.01}",
    ]

    def found(*args: str) -> set[str]:
        proc = run(*base, *args, check=True)
        return {r["identifier"] for r in json.loads(proc.stdout)}

    ident = f"es-l2a_{item.id}"
    assert ident in found("--start", day, "--end", day)
    assert ident not in found("--start", "1999-01-01", "--end", "1999-12-31")
    cloud = item.properties["eo:cloud_cover"]
    assert ident in found("--start", day, "--end", day, "--max-cloud", str(cloud + 0.1))
    assert ident not in found("--start", day, "--end", day, "--max-cloud", str(max(cloud - 1, 0)))
    tile = item.properties.get("s2:mgrs_tile") or item.properties.get("grid:code", "")[-5:]
    assert ident in found("--start", day, "--end", day, "--tiles", tile)
    assert ident in found("--start", day, "--end", day, "--bands", "B02,B04")
    assert ident not in found("--start", day, "--end", day, "--bands", "B08")
    # the library: same answer, one read, then queries
    index = StoreIndex.read(open_client(store))
    hits = index.search(IndexQuery(bbox=(cx, cy, cx + 0.01, cy + 0.01), bands=("B03",)))
    assert ident in {h.identifier for h in hits}
    assert hits[0].geometry["type"] in {"Polygon", "MultiPolygon"}
    # --ids-out writes a file `ingest --ids-file` reads
    ids = store.parent / "found.txt"
    run(*base, "--start", day, "--end", day, "--ids-out", str(ids), check=True)
    assert ident in ids.read_text()


def test_search_mistakes_are_one_line_and_exit_2(store):
    proc = run("search", "--store", str(store), "--bbox", "1,2,3", "--start", "2024-01-01",
               "--end", "2024-01-02")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run("search", "--bands", "B02", "--bbox", "1,2,3,4", "--start", "2024-01-01",
               "--end", "2024-01-02")  # fmt: skip
    assert proc.returncode == 2 and "--store" in proc.stderr


def test_offline_ingest_says_what_is_ready_and_what_lacks_bands(world, store):
    # The default provider's STAC API is unreachable here: a single request would fail.
    item = world.items[0]
    w, s, e, n = item.bbox
    args = ["ingest", "--offline", "--store", str(store), "--bbox", f"{w},{s},{e},{n}",
            "--start", "2020-01-01", "--end", "2030-12-31"]  # fmt: skip
    ready = run(*args, "--bands", "B02,B03", check=True)
    assert f"ready: es-l2a_{item.id}" in ready.stdout
    lacking = run(*args, "--bands", "B02,B08")
    assert lacking.returncode == 1
    assert f"es-l2a_{item.id} lacks B08" in " ".join(lacking.stderr.split())
    by_id = run("ingest", "--offline", "--store", str(store), "--ids", f"{item.id},nope",
                "--bands", "B02")  # fmt: skip
    assert by_id.returncode == 1
    assert f"ready: es-l2a_{item.id}" in by_id.stdout
    assert "not stored:" in by_id.stderr and "nope" in by_id.stderr


def test_hand_made_changes_are_detected_and_corrected(world, store):
    rebuild(open_client(store))
    first, second, *_ = sorted(p.name[: -len(".zarr")] for p in store.glob("*.zarr"))
    # a scene deleted by hand, a record withdrawn by hand, a scene copied in by hand
    shutil.rmtree(store / f"{first}.zarr")
    (scene_path(store, second) / "_commits" / "B03.json").unlink()
    shutil.copytree(scene_path(store, second), store / "copied-scene.zarr")
    indexed = {r["identifier"]: r["bands"] for r in listing(store)}
    assert first not in indexed
    assert indexed[second] == ["B02", "B04"]
    assert indexed["copied-scene"] == ["B02", "B04"]
    assert listing(store) == listing(store, "--scan")
    assert claimed_vs_committed(store) == []  # the corrections were journaled


def test_a_missing_or_damaged_index_is_rebuilt_with_a_warning(world, store):
    rebuild(open_client(store))
    expected = listing(store, "--scan")
    (store / SNAPSHOT_KEY).write_bytes(b"not a geopackage")
    proc = run("ls", "--store", str(store), "--json", check=True)
    assert "damaged" in proc.stderr and "rebuilding" in " ".join(proc.stderr.split())
    assert [r["identifier"] for r in json.loads(proc.stdout)] == [r["identifier"] for r in expected]
    shutil.rmtree(store / ".index")  # a store of the previous release
    proc = run("ls", "--store", str(store), "--json", check=True)
    assert "missing" in proc.stderr
    assert len(json.loads(proc.stdout)) == len(expected)
    assert (store / SNAPSHOT_KEY).exists()


def test_many_commits_fold_into_the_snapshot(store, monkeypatch):
    import scenestore.store.index as index_module

    monkeypatch.setattr(index_module, "COMPACT_AFTER", 2)
    client = open_client(store)
    before = listing(store)
    assert compact(client, only_if_due=True)
    assert (store / SNAPSHOT_KEY).exists()
    assert not list((store / JOURNAL_DIR).iterdir())
    assert listing(store) == before
    assert COMPACT_AFTER > 2  # the real threshold is untouched


def test_prune_to_a_size_removes_the_least_recently_ingested(world, store):
    infos = list_scenes(open_store(store))
    total = sum(i.size_bytes for i in infos)
    oldest = min(infos, key=lambda i: i.ingested_at)
    limit = total - oldest.size_bytes
    dry = run("prune", "--store", str(store), "--max-size", f"{limit}B", check=True)
    assert "Dry run" in dry.stdout and oldest.identifier in dry.stdout
    assert len(list_scenes(open_store(store))) == len(infos)
    run("prune", "--store", str(store), "--max-size", f"{limit}B", "--yes", check=True)
    left = list_scenes(open_store(store), scan=True)
    assert [i.identifier for i in left] == sorted(
        i.identifier for i in infos if i.identifier != oldest.identifier
    )
    assert sum(i.size_bytes for i in left) <= limit
    assert listing(store) == listing(store, "--scan")
    nothing = run("prune", "--store", str(store), "--older-than", "3650d", check=True)
    assert "nothing to remove" in nothing.stdout
    bad = run("prune", "--store", str(store), "--max-size", "lots")
    assert bad.returncode == 2 and "'lots'" in bad.stderr and "500GB" in bad.stderr


def test_size_and_age_parsing_and_the_fit_selector():
    from datetime import UTC, datetime

    from scenestore.store.index import SceneInfo

    assert parse_size("500GB") == 500 * 10**9
    assert parse_size("1.5 TiB") == int(1.5 * 2**40)
    assert parse_size("123") == 123
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_age("30d", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_age("2024-06-01", now=now) == datetime(2024, 6, 1, tzinfo=UTC)
    infos = [
        SceneInfo(f"s{i}", ("B02",), 10, ingested_at=f"2026-01-0{i}T00:00:00+00:00")
        for i in range(1, 6)
    ]
    assert [i.identifier for i in select_to_fit(infos, 30)] == ["s1", "s2"]
    assert select_to_fit(infos, 50) == []


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], delay_s: float) -> bool:
    """SIGKILL ``proc`` ``delay_s`` after ``ready()`` first holds; True if it was still running."""
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay_s)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return alive


@pytest.mark.timeout(300)
def test_a_killed_writer_or_remover_never_leaves_the_index_claiming_a_band(world, tmp_path):
    """Writers and removers killed with SIGKILL at random moments; after each, the index read
    raw (no correction) claims no band that is not committed, and ls equals the scan.

    A writer is killed a random moment after it reported its k-th scene (k below the number of
    scenes, so work is always left), a remover a random moment after it started; each trial
    starts from a store with work left for the writer, so the kills land mid-run by construction
    rather than by a machine fast or slow enough.
    """
    import random
    import threading

    rng = random.Random(17)
    store = tmp_path / "store"
    ids = [i.id for i in world.items]
    kills = 0
    for trial in range(8):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(store), world.stac_url, "B02,B03,B04,B8A", *ids],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        done: list[str] = []
        reader = threading.Thread(target=lambda p=proc, d=done: d.extend(p.stdout), daemon=True)
        reader.start()
        k = rng.randrange(len(ids) - 1)
        kills += _kill_when(proc, lambda d=done, k=k: len(d) > k, rng.uniform(0.0, 0.4))
        reader.join(timeout=10)
        assert claimed_vs_committed(store) == [], f"trial {trial} (writer)"
        names = [p.name[: -len(".zarr")] for p in store.glob("*.zarr")] if store.is_dir() else []
        if names:
            # a remover, killed a random moment in on odd trials; the next writer has work
            gone = ["--yes", *rng.sample(names, len(names) // 2 or 1)]
            remover = subprocess.Popen(
                [sys.executable, "-m", "scenestore.cli", "rm", "--store", str(store), *gone],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if trial % 2:
                kills += _kill_when(remover, lambda: True, rng.uniform(0.3, 1.2))
            else:
                remover.wait(timeout=60)
            assert claimed_vs_committed(store) == [], f"trial {trial} (remover)"
    # 12 kills are attempted; a writer whose remaining scenes were all complete already can
    # finish inside its delay, so allow some to miss without the trial testing nothing
    assert kills >= 5, f"only {kills} of 12 kills landed mid-run"
    assert listing(store) == listing(store, "--scan")


def test_concurrent_writers_lose_no_update(world, tmp_path):
    store = tmp_path / "store"
    half = len(world.items) // 2
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                str(store),
                world.stac_url,
                "B02",
                *[i.id for i in part],
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in (world.items[:half], world.items[half:])
    ]
    for proc in procs:
        assert proc.wait(timeout=180) == 0, proc.stderr.read() if proc.stderr else ""
    index = StoreIndex.read(open_client(store), check=False)
    assert {i.identifier for i in index.scenes()} == {f"es-l2a_{i.id}" for i in world.items}


def test_the_index_on_an_object_store(world, s3_store):
    manager = StacStoreManager(["B02"], s3_store, stac_url=world.stac_url)
    for item in world.items[:2]:
        manager.download_and_store(item)
    index = StoreIndex.read(open_client(s3_store))
    assert [i.identifier for i in index.scenes()] == sorted(
        f"es-l2a_{i.id}" for i in world.items[:2]
    )
    assert all(i.bands == ("B02",) for i in index.scenes())
    from scenestore.store.removal import remove_scene

    remove_scene(open_store(s3_store), f"es-l2a_{world.items[0].id}")
    assert claimed_vs_committed(s3_store) == []
    index = rebuild(open_client(s3_store))
    assert [i.identifier for i in index.scenes()] == [f"es-l2a_{world.items[1].id}"]
