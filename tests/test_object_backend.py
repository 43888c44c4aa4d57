"""What only an object store has, against a real S3-compatible server (moto_server on 127.0.0.1).

The commit protocol itself (failed writes, killed writers, replacements, concurrency, damage,
removal while writing) runs on every backend in ``tests/test_conformance.py``. Here: store URLs,
lease locks made of conditional writes, error messages that name the bucket and never a key,
removal by ordered deletes (no rename), and the CLI, quicklooks and catalog on ``s3://``; and
with real writer processes (``tests/writer.py``) on ``s3://``: SIGKILLed mid-write, and two
racing over the same scenes; an S3 store equal, object for object, to a local one.
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

import numpy as np
import pystac
import pytest
import xarray as xr
import zarr
from hypothesis import assume, given
from hypothesis import strategies as st
from typer.testing import CliRunner
from zarr.storage import ObjectStore

from scenestore import ALL_BANDS, StacStoreManager
from scenestore.cli import app
from scenestore.errors import InvalidRequestError, StoreError
from scenestore.ingest import ingest_items
from scenestore.store import ObjectClient, is_object_url, open_store, parse_store_url
from scenestore.store._object import open_object_store
from scenestore.store.inventory import list_scenes
from scenestore.store.layout import commit_key, quicklook_key, scene_key, staging_key
from scenestore.store.lease import LEASE_ENV_VAR, LeaseLock
from scenestore.store.quicklook import save_quicklook
from scenestore.store.removal import remove_scene
from scenestore.store.verify import verify_scene
from scenestore_world import FaultPlan
from writer import writer_results

BANDS = ["B02", "B03", "B04", "SCL"]
WRITER = Path(__file__).parent / "writer.py"


def cli(*args: str):
    """Run a scenestore command in-process; return the result (exit code, stdout, stderr)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_store_urls_parse_to_bucket_and_prefix():
    url = parse_store_url("s3://scenes/a/b/")
    assert (url.scheme, url.bucket, url.prefix, str(url)) == (
        "s3",
        "scenes",
        "a/b",
        "s3://scenes/a/b",
    )
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


def test_conditional_writes_make_one_lock_holder_and_take_over_stale_leases(s3_store):
    client = ObjectClient(parse_store_url(s3_store))
    # The server honours If-None-Match: * and If-Match (what the lock is built on).
    etag = client.create("k", b"1")
    assert etag and client.create("k", b"2") is None
    assert client.put_if_match("k", b"3", etag) and client.put_if_match("k", b"4", etag) is None

    first = LeaseLock(client, ".locks/s.lock", lease_s=1.0)
    first.acquire()
    time.sleep(0.8)  # renewed by the heartbeat (every lease/3), so still held
    first.check()
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
        assert json.loads(client.get(".locks/s.lock"))["owner"] == second.owner
    assert json.loads(client.get(".locks/s.lock"))["expires_at"] == 0


def test_a_lease_taken_over_is_lost_and_its_holder_commits_nothing(s3_store):
    client = ObjectClient(parse_store_url(s3_store))
    first = LeaseLock(client, ".locks/t.lock", lease_s=1.0)
    first.acquire()
    first._stop.set()  # stalled past its lease
    first._heartbeat.join()
    time.sleep(1.1)
    with LeaseLock(client, ".locks/t.lock", lease_s=1.0, timeout_s=5) as second:
        first._start_heartbeat()  # it wakes up and tries to renew: the ETag has moved on
        time.sleep(0.6)
        with pytest.raises(StoreError, match="taken over by another writer"):
            first.check()
        first.release()
        second.check()  # the loser's release leaves the new lease alone


def test_missing_bucket_is_named_and_no_key_is_in_any_message(s3_server, s3_store):
    scenes = open_store("s3://no-such-bucket/x")
    with pytest.raises(StoreError) as err:
        list_scenes(scenes)
    text = str(err.value)
    assert "bucket 'no-such-bucket' does not exist" in text and "expected" in text
    with pytest.raises(StoreError) as err2:
        scenes.client.check_writable()
    for secret in s3_server.credentials.values():
        assert secret not in text and secret not in str(err2.value)


@pytest.fixture
def ingested(world, s3_store):
    """Two world scenes (B02, B03, B04, SCL) ingested into a fresh S3 store."""
    manager = StacStoreManager(BANDS, s3_store, stac_url=world.stac_url)
    assert manager.check_writable() == s3_store
    for item in world.items[:2]:
        assert manager.ingest(item).fetched == tuple(BANDS)
    return manager, [manager.identifier(item) for item in world.items[:2]]


def test_removal_withdraws_commits_first_and_ls_never_shows_a_band_without_data(
    ingested, monkeypatch
):
    """Before every delete the remover sends (S3 cannot rename), a reader lists the store:
    every band it sees committed still has its array metadata and all its chunks."""
    manager, (first, _) = ingested
    reader = open_store(manager.store)
    deletes: list[list[str]] = []
    real_delete = ObjectClient.delete

    def observe() -> None:
        for info in list_scenes(reader):
            for band in info.bands:
                record = reader.read_commit(info.identifier, band)
                root = f"{info.identifier}.zarr/{band}"
                assert reader.client.exists(f"{root}/zarr.json"), band
                assert len(reader.client.list(f"{root}/c")) == record.chunk_count, band

    def observed_delete(self, keys):
        observe()
        deletes.append(list(keys))
        real_delete(self, keys)

    monkeypatch.setattr(ObjectClient, "delete", observed_delete)
    remove_scene(open_store(manager.store), first)
    observe()

    commits = [keys for keys in deletes if keys][0]
    assert all("/_commits/" in k and k.endswith(".json") for k in commits)
    data = [k for keys in deletes for k in keys]
    assert data.index(f"{first}.zarr/B04/zarr.json") < data.index(f"{first}.zarr/zarr.json")
    assert [i.identifier for i in list_scenes(reader)] == [ingested[1][1]]


def test_cli_ingest_ls_open_verify_on_s3_and_no_key_in_any_output(
    world, s3_server, s3_store, tmp_path
):
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", **s3_server.env()}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "scenestore.cli", "-v", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    items = []
    for item in world.items[:2]:
        items += ["--item", str(tmp_path / f"{item.id}.json")]
        (tmp_path / f"{item.id}.json").write_text(json.dumps(item.to_dict()))
    runs = [run("ingest", "--store", s3_store, "--bands", "B04,SCL", *items)]
    assert runs[-1].returncode == 0, runs[-1].stderr
    ident = f"es-l2a_{world.items[0].id}"
    runs.append(run("ls", "--store", s3_store))
    assert ident in runs[-1].stdout and "B04,SCL" in runs[-1].stdout
    runs.append(run("open", "--store", s3_store, ident, "--bands", "B04,SCL"))
    assert runs[-1].returncode == 0 and "uint16" in runs[-1].stdout
    runs.append(run("info", "--store", s3_store, ident))
    assert runs[-1].returncode == 0 and "120 x 120 px" in runs[-1].stdout
    runs.append(run("verify", "--store", s3_store))
    assert "4 committed bands checked: all match" in runs[-1].stdout
    runs.append(run("ingest", "--store", "s3://no-such-bucket/x", *items))
    assert runs[-1].returncode == 2
    assert "no-such-bucket" in runs[-1].stderr and "expected" in runs[-1].stderr
    text = "\n".join(r.stdout + r.stderr for r in runs)
    for secret in s3_server.credentials.values():
        assert secret not in text


def test_quicklook_and_catalog_of_s3_have_s3_hrefs_that_open(ingested, tmp_path):
    manager, (first, second) = ingested
    scenes = manager.scenes
    look_url, png = save_quicklook(scenes, first, max_size=64)
    assert look_url == f"{manager.store}/{quicklook_key(first)}" and png.startswith(b"\x89PNG")
    out = tmp_path / "catalog"

    run = cli("catalog", "--store", manager.store, "--out", str(out))

    assert run.exit_code == 0, run.output
    assert "2 items. Valid against the STAC core schemas" in run.stdout
    items = {i.id: i for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items()}
    assert set(items) == {first, second}
    assert items[first].assets["thumbnail"].href == look_url
    assert "thumbnail" not in items[second].assets
    for ident, item in items.items():
        # an asset is the stored array: 20 m bands on their own grid (layout 2)
        stored = scenes.open(ident, BANDS, eager=True, resolution="native")
        for band in BANDS:
            href = item.assets[band].href
            assert href == f"{manager.store}/{ident}.zarr/{band}"
            store = ObjectStore(open_object_store(parse_store_url(href)), read_only=True)
            np.testing.assert_array_equal(
                zarr.open_array(store, mode="r")[...], stored[band].values
            )
        group = ObjectStore(
            open_object_store(parse_store_url(item.assets["zarr"].href)), read_only=True
        )
        ds = xr.open_zarr(group, consolidated=False, mask_and_scale=False)
        np.testing.assert_array_equal(ds["B04"].values, stored["B04"].values)
        assert verify_scene(scenes, ident) == []

    for args in (["catalog", "--out", str(tmp_path / "c2")], ["ls"], ["rm", first, "--yes"]):
        no_bucket = cli(args[0], "--store", "s3://no-such-bucket/x", *args[1:])
        assert no_bucket.exit_code == 2, (args, no_bucket.output)
        assert "bucket 'no-such-bucket' does not exist" in no_bucket.stderr, args
    assert not (tmp_path / "c2").exists()


# -- real writer processes on s3:// (killed mid-write, racing), and S3 against a local store ----


def checksums(url: str) -> dict[tuple[str, str], str]:
    """(identifier, band) -> committed checksum for every committed band of a store."""
    scenes = open_store(url)
    return {
        (info.identifier, band): scenes.read_commit(info.identifier, band).checksum
        for info in list_scenes(scenes)
        for band in info.bands
    }


def _spawn(store: str, world, ids: list[str], env: dict[str, str], bands=ALL_BANDS):
    """Start ``tests/writer.py`` ingesting ``ids`` into ``store`` in a process of its own."""
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


#: Lease of the writers that get killed, so the rerun takes their locks over within a second.
#: (Writers that must finish keep the default lease: a short one could lapse on a busy machine.)
SHORT_LEASE = {LEASE_ENV_VAR: "1"}


@pytest.mark.slow
def test_sigkill_mid_write_into_s3_never_leaves_a_band_half_present(world, s3_server, s3_store):
    """Writers SIGKILLed at random moments while writing into the S3 store: after each, every
    committed band verifies and opens; a rerun takes over the dead writer's lease and completes
    the store to the checksums of a clean run."""
    ids = [world.items[2].id]
    env = s3_server.env()
    with world.faulted(cog=FaultPlan(latency_s=0.004, path_glob="*.tif")):
        clean_url = f"{s3_store}/clean"
        proc = _spawn(clean_url, world, ids, env)
        first_chunk = _wait_for_band_chunks(clean_url, proc)
        writer_results(proc, timeout=120)
        write_window = time.monotonic() - first_chunk
        clean = checksums(clean_url)
        assert len(clean) == len(ids) * len(ALL_BANDS)
        rng = random.Random(7)
        outcomes = []
        for trial, (low, high) in enumerate([(0.0, 0.3), (0.3, 0.6), (0.6, 0.9)]):
            url = f"{s3_store}/trial{trial}"
            proc = _spawn(url, world, ids, {**env, **SHORT_LEASE})
            # Kill while chunks are being written: from the first chunk to the end of the run.
            _wait_for_band_chunks(url, proc)
            time.sleep(rng.uniform(low, high) * write_window)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)  # reaps it and closes its stdout pipe
            scenes = open_store(url)
            committed = 0
            for info in list_scenes(scenes):
                assert verify_scene(scenes, info.identifier) == [], f"trial {trial}"
                if info.bands:  # a band listed as present opens, all of it
                    StacStoreManager(list(info.bands), url).open(info.identifier, eager=True)
                committed += len(info.bands)
            outcomes.append(committed)
            manager = StacStoreManager(list(ALL_BANDS), url, stac_url=world.stac_url)
            assert not any(r.error for r in ingest_items(manager, ids)), f"trial {trial}"
            assert checksums(url) == clean, f"trial {trial}"
    assert len(set(outcomes)) >= 2, outcomes
    print(f"S3 kill trials: bands committed at kill time: {outcomes}")


def test_two_writer_processes_on_overlapping_scenes_share_the_work(world, s3_server, s3_store):
    ids = [i.id for i in world.items]
    first = _spawn(s3_store, world, ids[:3], s3_server.env(), BANDS)
    second = _spawn(s3_store, world, ids[1:], s3_server.env(), BANDS)
    outs = writer_results(first, second)
    fetched = [(o["identifier"], b) for o in outs for b in o["fetched"]]
    assert len(fetched) == len(set(fetched)), "no band downloaded by both processes"
    assert len(fetched) == len(ids) * len(BANDS), "no band lost"
    scenes = open_store(s3_store)
    infos = list_scenes(scenes)
    assert [i.bands for i in infos] == [tuple(sorted(BANDS))] * len(ids)
    assert all(verify_scene(scenes, i.identifier) == [] for i in infos)


def _without_written_at(data: bytes) -> dict:
    """A commit record's fields but the commit time (which differs between two ingests)."""
    return {k: v for k, v in json.loads(data).items() if k != "written_at"}


def test_s3_store_holds_what_a_local_store_holds_and_a_repeat_skips(
    world, http, s3_store, tmp_path
):
    item = world.items[0]
    s3 = StacStoreManager(BANDS, s3_store, stac_url=world.stac_url)
    local = StacStoreManager(BANDS, tmp_path, stac_url=world.stac_url)
    assert s3.ingest(item).fetched == tuple(BANDS)
    assert local.ingest(item).fetched == tuple(BANDS)
    ident = s3.identifier(item)
    client = s3.scenes.client
    objects = {key: client.get(key) for key, _ in client.list(scene_key(ident))}
    root = tmp_path / scene_key(ident)
    files = {str(p.relative_to(tmp_path)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # The same layout, key for key, as the local store's files, and the same bytes in each.
    assert sorted(objects) == sorted(files)
    records = [commit_key(ident, band) for band in BANDS]
    assert set(records) <= set(objects)
    for key, data in objects.items():
        if key in records:
            assert _without_written_at(data) == _without_written_at(files[key]), key
        else:
            assert data == files[key], key
    assert not client.list(staging_key(ident)), "no staging left behind"
    xr.testing.assert_identical(s3.open(item, eager=True), local.open(item, eager=True))
    assert s3.stored_bytes(ident, BANDS) == local.stored_bytes(ident, BANDS)
    # Asking again reads nothing from the source; the store answers from its listings.
    http.reset_stats()
    again = s3.ingest(item)
    assert again.skipped and again.fetched == () and http.requests() == []
    assert [i.identifier for i in list_scenes(s3.scenes)] == [ident]
    assert verify_scene(s3.scenes, ident) == []


# -- rm, prune and quicklook through the CLI on s3:// ------------------------------------------


def bucket_objects(url: str) -> dict[str, tuple[int, str | None]]:
    """Every object under the store's prefix, locks excepted: key -> (size, ETag)."""
    client = ObjectClient(parse_store_url(url))
    return {
        key: (size, client.get_versioned(key)[1])
        for key, size in client.list("")
        if not key.startswith(".locks/")
    }


def test_rm_and_prune_dry_runs_leave_the_bucket_unchanged_and_yes_removes(
    world, ingested, tmp_path
):
    manager, (first, second) = ingested
    store = manager.store
    save_quicklook(manager.scenes, first, max_size=64)  # rm takes the scene's quicklook along
    before = bucket_objects(store)
    assert quicklook_key(first) in before
    keep = tmp_path / "keep.txt"
    keep.write_text(f"# keep the second scene\n{second}\n")
    day = max(item.datetime.date() for item in world.items[:2]).isoformat()
    older = sum(item.datetime.date().isoformat() < day for item in world.items[:2])

    dry = [
        cli("rm", "--store", store, first, second),
        cli("prune", "--store", store, "--before", day),
        cli("prune", "--store", store, "--not-in", str(keep)),
    ]

    for run in dry:
        assert run.exit_code == 0, run.output
        assert "Dry run: nothing removed" in run.stdout
    assert "2 scenes to remove" in dry[0].stdout
    assert (f"{older} scenes sensed before {day}" if older else "No scene sensed before") in (
        dry[1].stdout
    )
    assert "1 scenes not in" in dry[2].stdout
    assert bucket_objects(store) == before, "a dry run changes nothing in the bucket"

    removed = cli("prune", "--store", store, "--not-in", str(keep), "--yes")

    assert removed.exit_code == 0, removed.output
    assert "Removed 1 scenes, freed" in removed.stdout
    scenes = open_store(store)
    assert [i.identifier for i in list_scenes(scenes)] == [second]
    left = bucket_objects(store)
    assert not [k for k in left if k.startswith(f"{scene_key(first)}/")], "no object of it left"
    assert quicklook_key(first) not in left
    # the store index records the removal (derived data); everything else is as it was
    assert {k: v for k, v in left.items() if not k.startswith(".index/")} == {
        k: v
        for k, v in before.items()
        if not k.startswith((f"{scene_key(first)}/", ".index/")) and k != quicklook_key(first)
    }, "everything else is as it was"
    assert verify_scene(scenes, second) == []

    gone = cli("rm", "--store", store, first, second, "--yes")
    assert gone.exit_code == 2 and f"Scene {first!r} is not in the store" in gone.stderr
    assert [i.identifier for i in list_scenes(scenes)] == [second], "a typo removes nothing"
    assert cli("rm", "--store", store, second, "--yes").exit_code == 0
    assert not [k for k in bucket_objects(store) if ".zarr/" in k or ".quicklooks/" in k]
    no_bucket = cli("prune", "--store", "s3://no-such-bucket/x", "--before", day, "--yes")
    assert no_bucket.exit_code == 2, no_bucket.output
    assert "bucket 'no-such-bucket' does not exist" in no_bucket.stderr


def test_quicklook_from_s3_equals_the_local_one(world, ingested, tmp_path):
    manager, (_, cloudy) = ingested
    local = StacStoreManager(BANDS, tmp_path / "local", stac_url=world.stac_url)
    local.ingest(world.items[1])
    outs = {}
    for name, store in (("s3", manager.store), ("local", str(tmp_path / "local"))):
        outs[name] = tmp_path / f"{name}.png"
        run = cli("quicklook", "--store", store, cloudy, "--out", str(outs[name]), "--size", "60")
        assert run.exit_code == 0, run.output
        assert "60 x 60 px (1 in 2 pixels each way)" in run.stdout
    assert outs["s3"].read_bytes() == outs["local"].read_bytes()
    assert outs["s3"].read_bytes().startswith(b"\x89PNG")

    missing = cli(
        "quicklook", "--store", manager.store, "es-l2a_nope", "--out", str(tmp_path / "n.png")
    )
    assert missing.exit_code == 2 and "'es-l2a_nope' is not in the store" in missing.stderr
    no_bucket = cli(
        "quicklook", "--store", "s3://no-such-bucket/x", cloudy, "--out", str(tmp_path / "n.png")
    )
    assert no_bucket.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in no_bucket.stderr
    assert not (tmp_path / "n.png").exists()


def test_a_remover_killed_before_its_last_delete_leaves_a_scene_ingest_and_rm_finish(
    world, ingested, monkeypatch
):
    """Removal on S3 drops the records, deletes all but the group ``zarr.json``, then that: a
    remover killed just before the last delete leaves a scene listed with no bands, which the
    next ingest replaces and ``rm`` finishes."""
    manager, (first, second) = ingested
    store = manager.store
    real_delete = ObjectClient.delete
    last = {f"{scene_key(i)}/zarr.json" for i in (first, second)}

    def dies_before_the_group_metadata(self, keys):
        if len(keys) == 1 and keys[0] in last:
            raise KeyboardInterrupt("killed")  # not a StoreError: nothing may catch it
        real_delete(self, keys)

    with monkeypatch.context() as patch:
        patch.setattr(ObjectClient, "delete", dies_before_the_group_metadata)
        for identifier in (first, second):
            with pytest.raises(KeyboardInterrupt):
                remove_scene(open_store(store), identifier)

    assert sorted(k for k in bucket_objects(store) if ".zarr/" in k) == sorted(last)
    listed = cli("ls", "--store", store, "--json")
    assert listed.exit_code == 0, listed.output
    assert [(r["identifier"], r["bands"]) for r in json.loads(listed.stdout)] == [
        (first, []),
        (second, []),
    ], "listed with no committed band, never with a band whose data is gone"

    assert manager.ingest(world.items[0]).fetched == tuple(BANDS), "the next ingest replaces"
    finished = cli("rm", "--store", store, second, "--yes")
    assert finished.exit_code == 0, finished.output
    scenes = open_store(store)
    assert [(i.identifier, i.bands) for i in list_scenes(scenes)] == [(first, tuple(sorted(BANDS)))]
    assert verify_scene(scenes, first) == []
    assert not [k for k in bucket_objects(store) if k.startswith(f"{scene_key(second)}/")]
