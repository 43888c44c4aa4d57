"""Batch ingest in worker processes: the same bands as threads, and every guarantee kept."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import xarray as xr

from scenestore import StacStoreManager
from scenestore.errors import InvalidRequestError, SourceError
from scenestore.ingest import ingest_items
from scenestore.manager import IngestResult
from scenestore.procpool import PROCESSES_ENV, WORKER_DIED, processes_wanted
from scenestore.store import open_store
from scenestore.store.verify import verify_scene

BANDS = ["B02", "B05", "SCL"]


class Recording(StacStoreManager):
    """Writes, per scene, the pid of the process that ingested it (and its budget's gate)."""

    def __init__(self, *args, marks: Path, fail: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marks = marks
        self.fail = fail
        self.parent = os.getpid()

    def ingest(self, item):
        from scenestore import throttle

        identifier = self.identifier(item)
        gate = type(throttle._fleet_gate).__name__
        caps = os.environ.get(throttle.CONCURRENCY_ENV, "")
        (self.marks / f"{identifier}.pid").write_text(f"{os.getpid()} {gate} {caps}")
        if identifier == self.fail:
            raise SourceError(f"Scene {identifier!r} refused by the test; expected nothing.")
        return super().ingest(item)


class Killing(StacStoreManager):
    """Its worker is SIGKILLed at the first commit of scene ``target`` (never in the parent).

    The band's chunks are written, its commit record is not: the band must not look present.
    With ``once`` the worker dies only the first time (a marker file says it did).
    """

    def __init__(self, *args, target: str, marker: Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.marker = marker
        self.parent = os.getpid()

    def ingest(self, item):
        identifier = self.identifier(item)
        first = self.marker is None or not self.marker.exists()
        if identifier == self.target and os.getpid() != self.parent and first:
            client = self.scenes.client
            commit = client.put_if_absent

            def killed(key, data):
                if self.marker is not None:
                    self.marker.write_text("killed")
                os.kill(os.getpid(), signal.SIGKILL)
                return commit(key, data)  # pragma: no cover - never reached

            client.put_if_absent = killed
        return super().ingest(item)


def stored(store: Path, identifier: str) -> xr.Dataset:
    return StacStoreManager(BANDS, store).open(identifier, eager=True)


#: Every case here forks workers from this pytest process, after other tests (and the cases
#: themselves) have read pixels in threads: the fork-after-threads hang (scenestore.procpool)
#: must not come back. A hang fails the case, not the whole run.
POOL = pytest.mark.timeout(180)


@POOL
def test_workers_share_one_budget(world, tmp_path):
    manager = Recording(BANDS, tmp_path / "store", stac_url=world.stac_url, marks=tmp_path)
    results = ingest_items(manager, world.items[:2], processes=2)
    for result in results:
        _, gate, caps = (tmp_path / f"{result.identifier}.pid").read_text().split(" ", 2)
        assert gate == "FileGate"  # the rate and 429 pauses are shared through one directory
        assert "cdse=2" in caps  # CDSE's 4 requests in flight, split between 2 workers


@POOL
def test_a_failed_scene_in_a_worker_stops_no_other(world, tmp_path):
    items = world.items[:3]
    failing = StacStoreManager(BANDS).identifier(items[1])
    store = tmp_path / "store"
    manager = Recording(BANDS, store, stac_url=world.stac_url, marks=tmp_path, fail=failing)
    results = ingest_items(manager, items, processes=2, retries=0)
    assert [r.error is not None for r in results] == [False, True, False]
    assert "refused by the test" in (results[1].error or "")
    for result in (results[0], results[2]):
        assert open_store(store).committed_bands(result.identifier) == set(BANDS)
    assert not open_store(store).exists(failing)


@POOL
def test_a_worker_killed_once_is_replaced_and_its_scene_stored(world, tmp_path):
    items = world.items[:3]
    target = StacStoreManager(BANDS).identifier(items[0])
    store, marker = tmp_path / "store", tmp_path / "killed"
    manager = Killing(BANDS, store, stac_url=world.stac_url, target=target, marker=marker)
    results = ingest_items(manager, items, processes=2)
    assert marker.exists()  # the worker did die
    assert not any(r.error for r in results)
    assert [r.identifier for r in results] == [manager.identifier(i) for i in items]
    for result in results:
        assert open_store(store).committed_bands(result.identifier) == set(BANDS)
        assert verify_scene(open_store(store), result.identifier) == []


@POOL
def test_a_scene_that_kills_its_worker_fails_alone_and_leaves_no_band_present(world, tmp_path):
    items = world.items[:3]
    target = StacStoreManager(BANDS).identifier(items[2])
    store = tmp_path / "store"
    manager = Killing(BANDS, store, stac_url=world.stac_url, target=target)
    results = ingest_items(manager, items, processes=2)
    assert results[2].error == WORKER_DIED.format(env=PROCESSES_ENV)
    assert not any(r.error for r in results[:2])
    scenes = open_store(store)
    # chunks were written before the kill, but no commit: nothing looks present
    assert any((store / f"{target}.zarr").rglob("c/*"))
    assert scenes.committed_bands(target) == set()
    assert manager.missing_bands(target) == BANDS
    # the next run (threads here) stores it whole
    again = ingest_items(StacStoreManager(BANDS, store, stac_url=world.stac_url), [items[2]])
    assert again[0].fetched == tuple(BANDS)
    assert verify_scene(scenes, target) == []


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_the_pool_can_be_turned_off(world, tmp_path, monkeypatch, how):
    manager = Recording(BANDS, tmp_path / "store", stac_url=world.stac_url, marks=tmp_path)
    if how == "environment":
        monkeypatch.setenv(PROCESSES_ENV, "off")
        results = ingest_items(manager, world.items[:2])
    else:
        monkeypatch.setenv(PROCESSES_ENV, "2")
        results = ingest_items(manager, world.items[:2], processes=0)
    for result in results:
        assert (tmp_path / f"{result.identifier}.pid").read_text().split()[0] == str(os.getpid())


def test_a_memory_store_is_ingested_in_threads(world, tmp_path):
    manager = Recording(BANDS, "memory://procpool", stac_url=world.stac_url, marks=tmp_path)
    results = ingest_items(manager, world.items[:2], processes=2)
    assert not any(r.error for r in results)
    for result in results:
        assert (tmp_path / f"{result.identifier}.pid").read_text().split()[0] == str(os.getpid())
        assert manager.complete(result.identifier)


_AUTO_CHILD = """
import json, os, sys
from pathlib import Path
import pystac
sys.path.insert(0, sys.argv[4])
from test_ingest_processes import BANDS, Recording
from scenestore.ingest import ingest_items
items = [pystac.Item.from_dict(d) for d in json.loads(Path(sys.argv[1]).read_text())]
manager = Recording(BANDS, sys.argv[2], stac_url=sys.argv[3], marks=Path(sys.argv[2]).parent)
assert not any(r.error for r in ingest_items(manager, items))
print(os.getpid())
"""


def test_small_scenes_use_both_cores_unasked(world, tmp_path, monkeypatch):
    """Unset, two small scenes of a local store go to worker processes in a process with no
    other thread (a fresh one here: the test process runs the world's servers)."""
    import subprocess
    import sys

    from scenestore.procpool import small_scene_processes

    if small_scene_processes(world.items[:2]) < 2:
        pytest.skip("one usable core")
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    docs = tmp_path / "items.json"
    docs.write_text(json.dumps([i.to_dict(transform_hrefs=False) for i in world.items[:2]]))
    store = tmp_path / "store"
    args = [str(docs), str(store), world.stac_url, str(Path(__file__).parent)]
    run = subprocess.run(
        [sys.executable, "-c", _AUTO_CHILD, *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    parent = run.stdout.split()[-1]
    pids = {(tmp_path / f"es-l2a_{i.id}.pid").read_text().split()[0] for i in world.items[:2]}
    assert parent not in pids, "ingested in worker processes"


def test_only_known_small_items_choose_processes():
    import pystac

    from scenestore.procpool import small_scene_processes

    def item(px: int | None) -> pystac.Item:
        doc = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": f"s{px}",
            "geometry": None,
            "properties": {"datetime": "2024-06-01T00:00:00Z"},
            "links": [],
            "assets": {"red": {"href": "r.tif"}},
        }
        if px is not None:
            doc["assets"]["red"]["proj:shape"] = [px, px]
        return pystac.Item.from_dict(doc)

    cores = small_scene_processes([item(1098)] * 8)
    assert cores == min(len(os.sched_getaffinity(0)), 8) or cores == 1
    assert small_scene_processes([item(1098)]) == 1  # one scene: nothing to share
    assert small_scene_processes([item(1098), item(10980)]) == 1  # a full tile among them
    assert small_scene_processes([item(1098), item(None)]) == 1  # a grid not known
    assert small_scene_processes(["S2A_1", "S2A_2"]) == 1  # ids: not known
    damaged = item(1098)
    damaged.assets["red"].extra_fields["proj:shape"] = ["1098", None]
    assert small_scene_processes([item(1098), damaged]) == 1  # damaged: threads, no error


def test_processes_wanted_reads_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    assert processes_wanted() == 1  # unset, no scenes: threads only
    assert processes_wanted(0) == 1
    assert processes_wanted(3) == 3
    monkeypatch.setenv(PROCESSES_ENV, "4")
    assert processes_wanted() == 4
    monkeypatch.setenv(PROCESSES_ENV, "0")
    assert processes_wanted() == 1
    monkeypatch.setenv(PROCESSES_ENV, "many")
    with pytest.raises(InvalidRequestError, match="SCENESTORE_PROCESSES='many' is not a number"):
        processes_wanted()
    with pytest.raises(InvalidRequestError, match="Worker processes -1 is below 0"):
        processes_wanted(-1)


@POOL
def test_processes_store_the_same_bands_as_threads(world, tmp_path):
    items = world.items[:3]
    by = {}
    # Threads first: the workers are forked after this process has read pixels in threads
    # (its block pool made, its scene and band threads just ended), the case that hung.
    for processes in (0, 2):
        store = tmp_path / f"p{processes}"
        manager = Recording(BANDS, store, stac_url=world.stac_url, marks=tmp_path)
        seen: list[IngestResult] = []
        results = ingest_items(manager, items, processes=processes, on_result=seen.append)
        assert [r.identifier for r in results] == [manager.identifier(i) for i in items]
        assert not any(r.error for r in results)
        assert all(r.fetched == tuple(BANDS) for r in results)
        # on_result runs in this process: the list it fills is this process's own
        assert sorted(r.identifier for r in seen) == sorted(r.identifier for r in results)
        pids = {int((tmp_path / f"{r.identifier}.pid").read_text().split()[0]) for r in results}
        if processes == 0:
            assert pids == {os.getpid()}
        else:
            assert os.getpid() not in pids and len(pids) == 2
        by[processes] = store
    for item in items:
        identifier = StacStoreManager(BANDS).identifier(item)
        xr.testing.assert_identical(stored(by[0], identifier), stored(by[2], identifier))
        assert verify_scene(open_store(by[2]), identifier) == []


def _forked_child_exits(child: Callable[[], None], timeout_s: float = 20.0) -> bool:
    """Fork and run ``child`` in the child: whether it returned, within ``timeout_s``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


@POOL
def test_a_child_forked_after_the_block_pool_ran_gets_a_pool_of_its_own():
    from scenestore.store.arrays import block_pool

    assert block_pool().submit(lambda: 1).result() == 1  # the pool and its threads exist
    # The inherited pool counts the parent's idle threads: without the reset at the fork a
    # task handed to it waits forever.
    assert _forked_child_exits(lambda: block_pool().submit(lambda: 1).result(timeout=5))


@POOL
def test_a_fork_waits_for_threads_that_used_proj_to_end():
    import rasterio.crs

    from scenestore.procpool import _settle_threads

    def lookup(epsg: int) -> None:
        rasterio.crs.CRS.from_epsg(epsg).to_wkt()

    # A joined thread may still be closing its PROJ context (SQLite's global mutex held):
    # unsettled, about 1 fork in 20 here hangs at the child's first CRS lookup.
    for i in range(60):
        thread = threading.Thread(target=lookup, args=(32632,))
        thread.start()
        thread.join()
        _settle_threads()
        assert _forked_child_exits(functools.partial(lookup, 32633 + i % 5)), f"fork {i} hung"


def test_workers_die_with_a_caller_killed_by_sigkill(world, tmp_path, monkeypatch):
    """A caller killed with SIGKILL runs no clean-up: its workers must not write on."""
    import subprocess
    import sys

    import psutil

    monkeypatch.setenv(PROCESSES_ENV, "2")
    writer = Path(__file__).parent / "writer.py"
    ids = [i.id for i in world.items[:2]]
    args = [str(tmp_path / "store"), world.stac_url, ",".join(BANDS), *ids]
    caller = subprocess.Popen([sys.executable, str(writer), *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while len(workers) < 2 and time.monotonic() < deadline and caller.poll() is None:
        workers = psutil.Process(caller.pid).children()
        time.sleep(0.01)
    assert len(workers) >= 2, "the caller forked its workers"
    caller.kill()
    caller.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers outlived their caller: {alive}"
