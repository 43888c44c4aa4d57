"""Faults, kills and concurrent writers: nothing stored is ever lost or half-present."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenestore import ALL_BANDS, StacStoreManager
from scenestore.ingest import ingest_items
from scenestore.store import open_store
from scenestore.store.layout import identifier_of
from scenestore.store.verify import verify_scene as _verify_scene
from scenestore_world import FaultPlan
from writer import writer_results

WRITER = Path(__file__).parent / "writer.py"


def committed_bands(scene: Path) -> set[str]:
    """The committed bands of a local scene directory ``<store>/<identifier>.zarr``."""
    return open_store(scene.parent).committed_bands(identifier_of(scene))


def verify_scene(store: Path, identifier: str):
    return _verify_scene(open_store(store), identifier)


def checksums(store: Path) -> dict[tuple[str, str], str]:
    """(scene, band) -> committed checksum, for every committed band of a store."""
    out, scenes = {}, open_store(store)
    for scene in store.glob("*.zarr"):
        for band in committed_bands(scene):
            out[(scene.name, band)] = scenes.read_commit(identifier_of(scene), band).checksum
    return out


@pytest.fixture(scope="module")
def clean(world, tmp_path_factory):
    """A clean, fault-free ingest of every scene and band: the reference."""
    store = tmp_path_factory.mktemp("clean")
    results = ingest_items(
        StacStoreManager(list(ALL_BANDS), store, stac_url=world.stac_url), world.items
    )
    assert not any(r.error for r in results)
    return checksums(store)


def test_ingest_under_20_percent_faults_equals_a_clean_run(world, clean, tmp_path):
    plan = FaultPlan(
        status_503=0.06,
        status_429=0.04,
        reset_mid_body=0.05,
        truncate=0.05,
        retry_after=0,
        path_glob="*.tif",
        seed=11,
    )
    stac_plan = FaultPlan(status_503=0.2, seed=5)
    manager = StacStoreManager(list(ALL_BANDS), tmp_path, stac_url=world.stac_url)
    with world.faulted(cog=plan, stac=stac_plan):
        world.http.reset_stats()
        ids = [i.id for i in world.items]
        results = ingest_items(manager, ids, retries=8, backoff_s=0.02)
        faults = world.http.fault_count()
    assert faults > 0, "the run must actually have met faults"
    assert [r.error for r in results] == [None] * len(ids)
    assert checksums(tmp_path) == clean, "every stored band byte-identical to a clean run"
    for scene in tmp_path.glob("*.zarr"):
        assert verify_scene(tmp_path, scene.name[:-5]) == []


def test_a_scene_whose_retries_run_out_fails_alone_and_a_rerun_completes_it(world, clean, tmp_path):
    bad = world.items[1].id
    manager = StacStoreManager(list(ALL_BANDS), tmp_path, stac_url=world.stac_url)
    with world.faulted(cog=FaultPlan(status_503=1.0, path_glob=f"{bad}/*")):
        results = ingest_items(manager, world.items, retries=1, backoff_s=0.01)
    failed = {r.identifier: r.error for r in results if r.error}
    assert list(failed) == [f"es-l2a_{bad}"]
    assert "503" in failed[f"es-l2a_{bad}"] or "failed" in failed[f"es-l2a_{bad}"]
    assert manager.missing_bands(f"es-l2a_{bad}") == list(ALL_BANDS)
    assert not any(r.error for r in ingest_items(manager, world.items))
    assert checksums(tmp_path) == clean


def _spawn(store: Path, world, ids: list[str], bands=ALL_BANDS) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(store), world.stac_url, ",".join(bands), *ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_band_half_present(world, clean, tmp_path):
    """At least 20 writers killed with SIGKILL at random moments; after each, every committed
    band verifies against its record; a rerun completes the store to a clean run's bytes."""
    ids = [i.id for i in world.items[:2]]
    # Stretch the run a little so kills land inside writes, not only in start-up.
    with world.faulted(cog=FaultPlan(latency_s=0.004, path_glob="*.tif")):
        # Time a clean run: start-up (imports, search) takes most of it, and the kills must
        # land while bands are written and committed, so they are aimed at that stretch.
        started = time.monotonic()
        proc = _spawn(tmp_path / "timing", world, ids)
        first_commit = None
        while proc.poll() is None:
            if first_commit is None and any((tmp_path / "timing").glob("*.zarr/_commits/B*.json")):
                first_commit = time.monotonic() - started
            time.sleep(0.005)
        proc.communicate(timeout=120)
        clean_run_s = time.monotonic() - started
        first_commit = clean_run_s if first_commit is None else first_commit
        writing_s = clean_run_s - first_commit
        rng = random.Random(2026)
        outcomes = []
        for trial in range(20):
            store = tmp_path / f"trial{trial}"
            proc = _spawn(store, world, ids)
            if trial % 4 == 0:  # during start-up, before any commit
                time.sleep(rng.uniform(0, first_commit))
            else:
                # Aimed from this writer's own first commit, not the timing run's clock: on a
                # loaded machine start-up varies by seconds, and the writing stretch is short.
                while proc.poll() is None and not any(store.glob("*.zarr/_commits/B*.json")):
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, 1.2 * writing_s))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            committed = sum(len(committed_bands(s)) for s in store.glob("*.zarr"))
            outcomes.append(committed)
            for scene in store.glob("*.zarr"):
                damage = verify_scene(store, scene.name[:-5])
                assert damage == [], f"trial {trial}: {damage}"
                present = committed_bands(scene)
                # A band is reported present only if it is: opening it must work.
                mgr = StacStoreManager(sorted(present) or ["B01"], store)
                if present:
                    mgr.open(scene.name[:-5], eager=True)
            manager = StacStoreManager(list(ALL_BANDS), store, stac_url=world.stac_url)
            assert not any(r.error for r in ingest_items(manager, ids))
            expected = {k: v for k, v in clean.items() if k[0][len("es-l2a_") : -5] in ids}
            assert checksums(store) == expected, f"trial {trial}"
    # The kills must have hit different stages: some before, some after commits began.
    assert len(set(outcomes)) >= 3, outcomes
    print(f"kill trials: bands committed at kill time: {outcomes}")


def test_two_writers_on_overlapping_scenes_share_the_work(world, clean, tmp_path):
    ids = [i.id for i in world.items]
    first = _spawn(tmp_path, world, ids[:3])
    second = _spawn(tmp_path, world, ids[1:])
    outs = writer_results(first, second)
    fetched = [(o["identifier"], b) for o in outs for b in o["fetched"]]
    assert len(fetched) == len(set(fetched)), "no band downloaded by both processes"
    assert len(fetched) == len(ids) * len(ALL_BANDS), "no band lost"
    assert checksums(tmp_path) == clean


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(world, tmp_path):
    ids = [world.items[0].id]
    proc = _spawn(tmp_path, world, ids)
    lock = tmp_path / ".locks" / f"es-l2a_{ids[0]}.lock"
    deadline = time.monotonic() + 60
    scene = tmp_path / f"es-l2a_{ids[0]}.zarr"
    # Killed mid-write: a new scene's bands are written in place (no record: not present).
    while not any(scene.glob("B*/zarr.json")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock.exists(), "the dead writer's lock file is left behind"
    manager = StacStoreManager(list(ALL_BANDS), tmp_path, stac_url=world.stac_url)
    started = time.monotonic()
    manager.download_and_store(world.items[0])
    assert manager.complete(manager.identifier(world.items[0]))
    assert time.monotonic() - started < 60, "a stale lock must not be waited on"
