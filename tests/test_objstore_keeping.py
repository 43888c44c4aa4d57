"""rm, prune, quicklook and catalog on an ``s3://`` store, against the real moto server.

One store of two world scenes is ingested per module (and the same scenes into a local
store); each test that changes it works on a server-side copy under a prefix of its own.
The commands run in-process (typer's runner), with the endpoint and keys of the test server
in the environment, as a user's shell would have them.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
import zarr
from typer.testing import CliRunner
from zarr.storage import ObjectStore

from scenestore import StacStoreManager
from scenestore.cli import app
from scenestore.objstore import ObjectScenes, parse_store_url
from scenestore.objstore.catalog import list_scenes, verify_scene
from scenestore.objstore.client import ObjectClient, open_object_store
from scenestore.objstore.location import quicklook_key
from scenestore.stores import save_quicklook

BANDS = ["B02", "B03", "B04", "SCL"]


def cli(*args: str):
    """Run a scenestore command in-process; return the result (exit code, stdout, stderr)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def bucket_objects(url: str) -> dict[str, tuple[int, str | None]]:
    """Every object under the store's prefix, locks excepted: key -> (size, ETag)."""
    client = ObjectClient(parse_store_url(url))
    return {
        key: (size, client.get(key)[1])
        for key, size in client.list("")
        if not key.startswith(".locks/")
    }


@pytest.fixture(scope="module")
def stored(world, s3_server, tmp_path_factory):
    """Two world scenes (B02, B03, B04, SCL) in an S3 store and in a local store."""
    base = f"s3://{s3_server.bucket}/keeping-{uuid.uuid4().hex[:8]}"
    local = tmp_path_factory.mktemp("keeping") / "store"
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env().items():
            env.setenv(name, value)
        for store in (base, local):
            manager = StacStoreManager(BANDS, store, stac_url=world.stac_url)
            for item in world.items[:2]:
                manager.download_and_store(item)
    return base, local, [manager.identifier(item) for item in world.items[:2]]


@pytest.fixture
def s3_copy(stored, s3_store):
    """A copy of the module's S3 store under the test's own prefix (server-side copies)."""
    base = parse_store_url(stored[0])
    root = ObjectClient(parse_store_url(f"s3://{base.bucket}"))
    target = parse_store_url(s3_store).prefix
    for key, _ in root.list(base.prefix):
        root.copy(key, f"{target}/{key[len(base.prefix) + 1:]}")
    return s3_store


def test_rm_and_prune_dry_runs_leave_the_bucket_unchanged_and_yes_removes(world, stored,
                                                                          s3_copy, tmp_path):
    _, _, (first, second) = stored
    save_quicklook(s3_copy, first, max_size=64)  # rm takes the scene's quicklook along
    before = bucket_objects(s3_copy)
    keep = tmp_path / "keep.txt"
    keep.write_text(f"# keep the second scene\n{second}\n")
    day = max(item.datetime.date() for item in world.items[:2]).isoformat()
    older = sum(item.datetime.date().isoformat() < day for item in world.items[:2])

    dry = [
        cli("rm", "--store", s3_copy, first, second),
        cli("prune", "--store", s3_copy, "--before", day),
        cli("prune", "--store", s3_copy, "--not-in", str(keep)),
    ]

    for run in dry:
        assert run.exit_code == 0, run.output
        assert "Dry run: nothing removed" in run.stdout
    assert "2 scenes to remove" in dry[0].stdout
    assert (f"{older} scenes sensed before {day}" if older else "No scene sensed before") in (
        dry[1].stdout
    )
    assert bucket_objects(s3_copy) == before, "a dry run changes nothing in the bucket"

    removed = cli("prune", "--store", s3_copy, "--not-in", str(keep), "--yes")

    assert removed.exit_code == 0, removed.output
    assert "Removed 1 scenes, freed" in removed.stdout
    scenes = ObjectScenes(s3_copy)
    assert [i.identifier for i in list_scenes(scenes)] == [second]
    left = bucket_objects(s3_copy)
    assert not [k for k in left if k.startswith(f"{first}.zarr/")], "no object of it is left"
    assert quicklook_key(first) in before and quicklook_key(first) not in left
    assert left == {
        k: v for k, v in before.items()
        if not k.startswith(f"{first}.zarr/") and k != quicklook_key(first)
    }, "everything else is as it was"
    assert verify_scene(scenes, second) == []

    gone = cli("rm", "--store", s3_copy, first, second, "--yes")
    assert gone.exit_code == 2 and f"Scene {first!r} is not in the store" in gone.stderr
    assert [i.identifier for i in list_scenes(scenes)] == [second], "a typo removes nothing"
    assert cli("rm", "--store", s3_copy, second, "--yes").exit_code == 0
    assert not [k for k in bucket_objects(s3_copy) if ".zarr/" in k or ".quicklooks/" in k]
    for args in (["rm", first, "--yes"], ["prune", "--before", day, "--yes"], ["ls"]):
        no_bucket = cli(args[0], "--store", "s3://no-such-bucket/x", *args[1:])
        assert no_bucket.exit_code == 2, (args, no_bucket.output)
        assert "bucket 'no-such-bucket' does not exist" in no_bucket.stderr, args


def test_removal_withdraws_commits_first_and_ls_never_shows_a_band_without_data(
    stored, s3_copy, monkeypatch
):
    """Before every delete the remover sends, a reader lists the store: every band it sees
    committed still has its array metadata and all its committed chunks."""
    from scenestore.objstore.removal import remove_scene

    _, _, (first, _) = stored
    reader = ObjectScenes(s3_copy)
    deletes: list[list[str]] = []
    real_delete = ObjectClient.delete

    def observe() -> None:
        for info in list_scenes(reader):
            for band in info.bands:
                record = reader.read_commit(info.identifier, band)
                root = f"{info.identifier}.zarr/{band}"
                chunks = [k for k, _ in reader.client.list(f"{root}/c")]
                assert reader.client.exists(f"{root}/zarr.json"), band
                assert len(chunks) == record.chunk_count, band

    def observed_delete(self, keys):
        observe()
        deletes.append(list(keys))
        real_delete(self, keys)

    monkeypatch.setattr(ObjectClient, "delete", observed_delete)
    remove_scene(ObjectScenes(s3_copy), first)
    observe()

    commits, data, last = deletes
    assert commits and all("/_commits/" in k and k.endswith(".json") for k in commits)
    assert f"{first}.zarr/B04/zarr.json" in data and f"{first}.zarr/zarr.json" not in data
    assert last == [f"{first}.zarr/zarr.json", quicklook_key(first)]


def test_a_held_lease_skips_the_scene_and_wait_waits_for_it(stored, s3_copy):
    _, _, (first, second) = stored
    writer = ObjectScenes(s3_copy)
    before = bucket_objects(s3_copy)

    with writer.lock(first):  # an ingest writing the first scene
        busy = cli("rm", "--store", s3_copy, first, second, "--yes")

    assert busy.exit_code == 1, busy.output
    assert f"skipped: Scene {first!r} is being written by another process" in busy.stderr
    assert "Removed 1 scenes" in busy.stdout
    assert [i.identifier for i in list_scenes(writer)] == [first]
    assert {k: v for k, v in before.items() if k.startswith(f"{first}.zarr/")} == {
        k: v for k, v in bucket_objects(s3_copy).items() if k.startswith(f"{first}.zarr/")
    }, "the busy scene is untouched"

    lock = writer.lock(first)
    lock.__enter__()
    threading.Timer(1.0, lock.__exit__, (None, None, None)).start()
    waited = cli("rm", "--store", s3_copy, first, "--yes", "--wait", "20")

    assert waited.exit_code == 0, waited.output
    assert list_scenes(writer) == []


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_quicklook_from_s3_equals_the_local_one(stored, s3_store, tmp_path):
    base, local, (_, cloudy) = stored
    outs = {}
    for name, store in (("s3", base), ("local", str(local))):
        outs[name] = tmp_path / f"{name}.png"
        run = cli("quicklook", "--store", store, cloudy, "--out", str(outs[name]), "--size", "60")
        assert run.exit_code == 0, run.output
        assert "60 x 60 px (1 in 2 pixels each way)" in run.stdout
    with rasterio.open(outs["s3"]) as a, rasterio.open(outs["local"]) as b:
        rgba = a.read()
        np.testing.assert_array_equal(rgba, b.read())
    assert (rgba[3] == 0).any() and (rgba[3] == 255).any(), "nodata edge transparent"
    assert outs["s3"].read_bytes() == outs["local"].read_bytes()

    missing = cli("quicklook", "--store", base, "es-l2a_nope", "--out", str(tmp_path / "n.png"))
    assert missing.exit_code == 2 and "'es-l2a_nope' is not in the store" in missing.stderr
    no_bucket = cli("quicklook", "--store", "s3://no-such-bucket/x", cloudy, "--out",
                    str(tmp_path / "n.png"))
    assert no_bucket.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in no_bucket.stderr
    assert not (tmp_path / "n.png").exists()


def test_catalog_of_s3_validates_and_its_hrefs_open(stored, s3_copy, tmp_path):
    _, _, (first, second) = stored
    look_url, _ = save_quicklook(s3_copy, first, max_size=64)
    out = tmp_path / "catalog"

    run = cli("catalog", "--store", s3_copy, "--out", str(out))

    assert run.exit_code == 0, run.output
    assert "2 items. Valid against the STAC core schemas (3 objects" in run.stdout
    items = {i.id: i for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items()}
    assert set(items) == {first, second}
    assert items[first].assets["thumbnail"].href == look_url
    assert "thumbnail" not in items[second].assets
    scenes = ObjectScenes(s3_copy)
    for ident, item in items.items():
        stored_ds = scenes.open(ident, BANDS, eager=True)
        for band in BANDS:
            href = item.assets[band].href
            assert href == f"{s3_copy}/{ident}.zarr/{band}"
            store = ObjectStore(open_object_store(parse_store_url(href)), read_only=True)
            np.testing.assert_array_equal(zarr.open_array(store, mode="r")[...],
                                          stored_ds[band].values)
        group = ObjectStore(open_object_store(parse_store_url(item.assets["zarr"].href)),
                            read_only=True)
        ds = xr.open_zarr(group, consolidated=False, mask_and_scale=False)
        np.testing.assert_array_equal(ds["B04"].values, stored_ds["B04"].values)

    no_bucket = cli("catalog", "--store", "s3://no-such-bucket/x", "--out", str(tmp_path / "c2"))
    assert no_bucket.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in no_bucket.stderr
    assert not (tmp_path / "c2").exists()


def test_a_remover_killed_before_the_last_delete_leaves_a_scene_rm_finishes(stored, s3_copy,
                                                                            monkeypatch):
    from scenestore.objstore.removal import remove_scene

    _, _, (first, second) = stored
    real_delete = ObjectClient.delete
    calls = []

    def dies_before_the_group_metadata(self, keys):
        calls.append(keys)
        if len(calls) == 3:  # the first remover's last delete: it is killed here
            raise KeyboardInterrupt("killed")  # not a StoreError: nothing may catch it
        real_delete(self, keys)

    monkeypatch.setattr(ObjectClient, "delete", dies_before_the_group_metadata)
    with pytest.raises(KeyboardInterrupt):
        remove_scene(ObjectScenes(s3_copy), first)

    scenes = ObjectScenes(s3_copy)
    assert [(i.identifier, i.bands) for i in list_scenes(scenes)] == [
        (first, ()), (second, tuple(sorted(BANDS)))
    ], "listed with no committed band, never with a band whose data is gone"
    finished = cli("rm", "--store", s3_copy, first, "--yes")
    assert finished.exit_code == 0, finished.output
    assert [i.identifier for i in list_scenes(scenes)] == [second]
    assert not [k for k in bucket_objects(s3_copy) if k.startswith(f"{first}.zarr/")]
