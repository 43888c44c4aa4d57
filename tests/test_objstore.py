"""Object-storage stores against a real S3-compatible server (moto_server on 127.0.0.1).

The same promises as a local store, checked where they matter: what is committed equals a
local store's bytes, a killed writer never leaves a band that looks present but is not whole,
concurrent writers share the work, and a failed replacement never damages a stored band.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import pytest
import xarray as xr
from hypothesis import assume, given
from hypothesis import strategies as st

from scenestore import ALL_BANDS, StacStoreManager
from scenestore.errors import InvalidRequestError, StoreError
from scenestore.ingest import ingest_items
from scenestore.objstore import ObjectScenes, is_object_url, parse_store_url
from scenestore.objstore.catalog import list_scenes, verify_scene
from scenestore.objstore.client import ObjectClient
from scenestore.objstore.lease import LeaseLock
from scenestore.objstore.location import commit_key, staging_key
from scenestore.world import FaultPlan
from writer import writer_results

WRITER = Path(__file__).parent / "writer.py"
BANDS = ["B02", "B04", "B8A", "SCL"]


def checksums(url: str) -> dict[tuple[str, str], str]:
    """(identifier, band) -> committed checksum for every committed band of a store."""
    scenes = ObjectScenes(url)
    return {
        (info.identifier, band): scenes.read_commit(info.identifier, band).checksum
        for info in list_scenes(scenes)
        for band in info.bands
    }


def test_store_urls_parse_to_bucket_and_prefix():
    url = parse_store_url("s3://scenes/a/b/")
    assert (url.scheme, url.bucket, url.prefix, str(url)) == ("s3", "scenes", "a/b", "s3://scenes/a/b")
    assert parse_store_url("s3a://scenes").prefix == ""
    for bad, match in [
        ("s3:///x", "names no bucket"),
        ("s3://b/../x", r"'\.\.' path segment"),
        ("s3://b/x?endpoint=y", "query or fragment"),
        ("ftp://b/x", "scheme 'ftp'"),
    ]:
        with pytest.raises(InvalidRequestError, match=match):
            parse_store_url(bad)


@given(
    bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{2,20}", fullmatch=True),
    segments=st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), max_size=3),
    identifier=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,30}", fullmatch=True),
)
def test_store_urls_round_trip_and_keys_stay_inside_the_scene(bucket, segments, identifier):
    assume(not any(s in (".", "..") for s in segments) and ".." not in identifier)
    url = parse_store_url(f"s3://{bucket}/{'/'.join(segments)}")
    assert parse_store_url(str(url)) == url and url.prefix == "/".join(segments)
    for key in (commit_key(identifier, "B04"), staging_key(identifier, "B04")):
        assert key.startswith(f"{identifier}.zarr/") and ".." not in key.split("/")
    assert is_object_url(str(url)) and not is_object_url(f"./{bucket}")


def test_s3_store_holds_the_same_scene_as_a_local_store(world, http, s3_store, tmp_path):
    item = world.items[0]
    s3 = StacStoreManager(BANDS, s3_store, stac_url=world.stac_url)
    local = StacStoreManager(BANDS, tmp_path, stac_url=world.stac_url)
    assert s3.check_writable() == s3_store
    assert s3.ingest(item).fetched == tuple(BANDS)
    local.ingest(item)
    ident = s3.identifier(item)
    xr.testing.assert_identical(s3.open(item, eager=True), local.open(item, eager=True))
    assert s3.open(item)["B04"].chunks is not None, "lazy by default"
    # The same layout, key for key, as the local store's files.
    keys = {k for k, _ in s3.objects.client.list(f"{ident}.zarr")}
    files = {
        str(p.relative_to(tmp_path))
        for p in (tmp_path / f"{ident}.zarr").rglob("*")
        if p.is_file()
    }
    assert keys == files
    assert s3.stored_bytes(ident, BANDS) == local.stored_bytes(ident, BANDS)
    # Asking again reads nothing from the source; the store answers from one listing.
    http.reset_stats()
    assert s3.ingest(item).skipped and http.requests() == []
    assert [i.identifier for i in list_scenes(s3.objects)] == [ident]
    assert verify_scene(s3.objects, ident) == []


def test_conditional_writes_make_one_lock_holder_and_take_over_stale_leases(s3_store):
    client = ObjectClient(parse_store_url(s3_store))
    # The server honours If-None-Match: * and If-Match (what the lock is built on).
    etag = client.put_if_absent("k", b"1")
    assert etag and client.put_if_absent("k", b"2") is None
    assert client.put_if_match("k", b"3", etag) and client.put_if_match("k", b"4", etag) is None

    first = LeaseLock(client, ".locks/s.lock", lease_s=1.0)
    first.acquire()
    blocked = LeaseLock(client, ".locks/s.lock", lease_s=1.0, timeout_s=0.3)
    with pytest.raises(StoreError, match="still held by another writer"):
        blocked.acquire()
    first._stop.set()  # the holder hangs: no more renewals (as if killed)
    first._heartbeat.join()
    time.sleep(1.1)
    with LeaseLock(client, ".locks/s.lock", lease_s=1.0, timeout_s=5) as second:
        second.check()
        with pytest.raises(StoreError, match="not renewed in time"):
            first.check()  # the stale holder may no longer commit
        first.release()  # and its release leaves the new holder's lease alone
        assert json.loads(client.get(".locks/s.lock")[0])["owner"] == second.owner
    assert json.loads(client.get(".locks/s.lock")[0])["expires_at"] == 0


def test_a_failed_replacement_leaves_the_stored_band_whole(world, s3_store):
    item = world.items[1]
    manager = StacStoreManager(["B04"], s3_store, stac_url=world.stac_url)
    manager.ingest(item)
    ident = manager.identifier(item)
    before = manager.objects.read_commit(ident, "B04")
    stored = manager.open(item, eager=True)

    def boom(block):
        raise OSError("connection reset while reading the source")

    broken = stored.copy()
    broken["B04"] = stored["B04"].copy(
        data=da.from_array(stored["B04"].values, chunks=60).map_blocks(boom, dtype="uint16")
    )
    with pytest.raises(OSError, match="connection reset"):
        manager.save_to_store(broken, ident)
    assert manager.objects.read_commit(ident, "B04") == before
    assert verify_scene(manager.objects, ident) == []
    xr.testing.assert_identical(manager.open(item, eager=True), stored)
    assert not manager.objects.client.list(f"{ident}.zarr/_staging")


def _spawn(
    store: str, world, ids: list[str], env: dict[str, str], bands=ALL_BANDS
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER), store, world.stac_url, ",".join(bands), *ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )


def _wait_for_band_chunks(url: str, proc: subprocess.Popen) -> float:
    """Wait until the writer has put its first band chunk; return when that was seen."""
    client = ObjectClient(parse_store_url(url))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        keys = [k for k, _ in client.list("")]
        if any(len(p := k.split("/")) > 2 and p[1] in ALL_BANDS and p[2] == "c" for k in keys):
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("the writer wrote no band chunk")


@pytest.fixture
def writer_env(s3_server) -> dict[str, str]:
    """Env of writer processes: the server's endpoint and keys."""
    return s3_server.env()


#: Lease of the writers that get killed, so the rerun takes their locks over within a second.
#: (Writers that must finish keep the default 60 s: a short lease could lapse on a busy machine.)
SHORT_LEASE = {"SCENESTORE_LOCK_LEASE_S": "1"}


@pytest.mark.slow
def test_sigkill_mid_write_into_s3_never_leaves_a_band_half_present(world, s3_store, writer_env):
    """Writers SIGKILLed at random moments while writing into the S3 store: after each, every
    committed band verifies and opens; a rerun takes over the dead writer's lease and completes
    the store to the checksums of a clean run."""
    ids = [world.items[2].id]
    with world.faulted(cog=FaultPlan(latency_s=0.004, path_glob="*.tif")):
        clean_url = f"{s3_store}/clean"
        proc = _spawn(clean_url, world, ids, writer_env)
        first_chunk = _wait_for_band_chunks(clean_url, proc)
        proc.communicate(timeout=120)
        write_window = time.monotonic() - first_chunk
        clean = checksums(clean_url)
        assert len(clean) == len(ids) * len(ALL_BANDS)
        rng = random.Random(7)
        outcomes = []
        for trial, (low, high) in enumerate([(0.0, 0.3), (0.3, 0.6), (0.6, 0.9)]):
            url = f"{s3_store}/trial{trial}"
            proc = _spawn(url, world, ids, {**writer_env, **SHORT_LEASE})
            # Kill while chunks are being written: from the first chunk to the end of the run.
            _wait_for_band_chunks(url, proc)
            time.sleep(rng.uniform(low, high) * write_window)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            scenes = ObjectScenes(url)
            committed = 0
            for info in list_scenes(scenes):
                assert verify_scene(scenes, info.identifier) == [], f"trial {trial}"
                if info.bands:
                    mgr = StacStoreManager(list(info.bands), url)
                    mgr.open(info.identifier, eager=True)
                committed += len(info.bands)
            outcomes.append(committed)
            manager = StacStoreManager(list(ALL_BANDS), url, stac_url=world.stac_url)
            assert not any(r.error for r in ingest_items(manager, ids))
            assert checksums(url) == clean, f"trial {trial}"
    assert len(set(outcomes)) >= 2, outcomes
    print(f"S3 kill trials: bands committed at kill time: {outcomes}")


def test_two_writer_processes_on_overlapping_scenes_share_the_work(world, s3_store, writer_env):
    ids = [i.id for i in world.items]
    first = _spawn(s3_store, world, ids[:3], writer_env, BANDS)
    second = _spawn(s3_store, world, ids[1:], writer_env, BANDS)
    outs = writer_results(first, second)
    fetched = [(o["identifier"], b) for o in outs for b in o["fetched"]]
    assert len(fetched) == len(set(fetched)), "no band downloaded by both processes"
    assert len(fetched) == len(ids) * len(BANDS), "no band lost"
    scenes = ObjectScenes(s3_store)
    assert all(verify_scene(scenes, i.identifier) == [] for i in list_scenes(scenes))


def test_cli_ingest_ls_open_verify_on_s3_and_no_key_in_any_output(world, s3_server, s3_store,
                                                                   tmp_path):
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", **s3_server.env()}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "scenestore.cli", "-v", *args],
            capture_output=True, text=True, timeout=300, env=env,
        )

    items = []
    for item in world.items[:2]:
        items += ["--item", str(tmp_path / f"{item.id}.json")]
        (tmp_path / f"{item.id}.json").write_text(json.dumps(item.to_dict()))
    runs = [cli("ingest", "--store", s3_store, "--bands", "B04,SCL", *items)]
    assert runs[-1].returncode == 0, runs[-1].stderr
    ident = f"es-l2a_{world.items[0].id}"
    runs.append(cli("ls", "--store", s3_store))
    assert ident in runs[-1].stdout and "B04,SCL" in runs[-1].stdout
    runs.append(cli("open", "--store", s3_store, ident, "--bands", "B04,SCL"))
    assert runs[-1].returncode == 0 and "uint16" in runs[-1].stdout
    runs.append(cli("info", "--store", s3_store, ident))
    assert runs[-1].returncode == 0 and "120 x 120 px" in runs[-1].stdout
    runs.append(cli("verify", "--store", s3_store))
    assert "4 committed bands checked: all match" in runs[-1].stdout
    runs.append(cli("ingest", "--store", "s3://no-such-bucket/x", *items))
    assert runs[-1].returncode == 2
    assert "no-such-bucket" in runs[-1].stderr and "expected" in runs[-1].stderr
    text = "\n".join(r.stdout + r.stderr for r in runs)
    for secret in s3_server.credentials.values():
        assert secret not in text
