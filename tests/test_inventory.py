"""ls, rm and prune as a user runs them, and removal while a real ingest writes to the store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from filelock import FileLock

from scenestore import StacStoreManager
from scenestore.bands import ALL_BANDS
from scenestore.errors import InvalidIdentifierError, InvalidRequestError, SceneNotFoundError
from scenestore.idlist import read_id_file
from scenestore.store import open_store
from scenestore.store.inventory import SceneInfo
from scenestore.store.inventory import list_scenes as _list_scenes
from scenestore.store.layout import lock_path, scene_path
from scenestore.store.removal import (
    TRASH_DIR,
    select_before,
    select_not_in,
)
from scenestore.store.removal import remove_scene as _remove_scene
from scenestore.store.removal import remove_scenes as _remove_scenes
from scenestore.store.verify import verify_store as _verify_store
from test_cli import run, snapshot

WRITER = Path(__file__).parent / "writer.py"


# The store functions take a SceneStore now; these keep the tests' store-directory calls.
def list_scenes(store: Path) -> list[SceneInfo]:
    return _list_scenes(open_store(store))


def remove_scene(store: Path, identifier: str, **kwargs) -> int:
    return _remove_scene(open_store(store), identifier, **kwargs)


def remove_scenes(store: Path, identifiers: list[str], **kwargs):
    return _remove_scenes(open_store(store), identifiers, **kwargs)


def verify_store(store: Path):
    return _verify_store(open_store(store))


@pytest.fixture(scope="module")
def filled(world, tmp_path_factory) -> Path:
    """A store holding B02,B03,B04 of every scene of the world (copied per test)."""
    store = tmp_path_factory.mktemp("inventory") / "store"
    manager = StacStoreManager(["B02", "B03", "B04"], store, stac_url=world.stac_url)
    for item in world.items:
        manager.download_and_store(item)
    return store


@pytest.fixture
def store(filled, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(filled, copy)
    return copy


def ident(item) -> str:
    return f"es-l2a_{item.id}"


def info(identifier: str, when: str | None, stac_id: str | None = None) -> SceneInfo:
    return SceneInfo(identifier, ("B02",), 1, datetime=when, item_id=stac_id)


def test_selectors_pick_by_sensing_day_and_keep_list():
    infos = [
        info("a", "2024-06-01T23:59:59Z", "A"),
        info("b", "2024-06-02T00:00:00Z", "B"),
        info("c", None, "C"),
    ]
    assert [i.identifier for i in select_before(infos, date(2024, 6, 2))] == ["a"]
    assert select_before(infos, date(2024, 6, 1)) == []
    # kept by identifier (a) or by source item id (B); c has no date and is never "before".
    assert [i.identifier for i in select_not_in(infos, {"a", "B"})] == ["c"]


def read_keep_list(path):
    """What ``prune --not-in`` keeps: the ids of an id list (scenestore.idlist)."""
    return {entry.value for entry in read_id_file(path)}


def test_keep_list_forms_and_mistakes(tmp_path):
    text = tmp_path / "keep.txt"
    text.write_text("# keep these\nes-l2a_A\n\n  S2B_X  \n")
    assert read_keep_list(text) == {"es-l2a_A", "S2B_X"}
    items = tmp_path / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": [{"id": "S2A_1"}]}))
    assert read_keep_list(items) == {"S2A_1"}
    one = tmp_path / "item.json"
    one.write_text(json.dumps({"type": "Feature", "id": "S2A_2"}))
    assert read_keep_list(one) == {"S2A_2"}
    cases = {
        "broken.json": ("{not json", "not valid JSON"),
        "geom.json": ('{"type": "Polygon"}', "JSON 'Polygon', not an ItemCollection"),
        "bad.txt": ("../x\n", "bad.txt:1: .*'../x' is not safe"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(InvalidRequestError, match=message):
            read_keep_list(tmp_path / name)
    with pytest.raises(InvalidRequestError, match="Cannot read id file '/no/such.txt'"):
        read_keep_list(Path("/no/such.txt"))


def test_ls_json_rm_and_prune(world, store, tmp_path):
    listed = json.loads(run("ls", "--store", str(store), "--json", check=True).stdout)
    assert [r["identifier"] for r in listed] == sorted(ident(i) for i in world.items)
    first = listed[0]
    assert first["bands"] == ["B02", "B03", "B04"] and first["size_bytes"] > 0
    assert first["tile"] and first["datetime"].startswith("2024-") and first["cloud_cover"] >= 0
    table = run("ls", "--store", str(store), check=True).stdout
    assert "sensing date" in table and first["tile"] in table and first["datetime"][:10] in table

    before = snapshot(store)
    dry = run("rm", "--store", str(store), first["identifier"], check=True).stdout
    assert "Dry run: nothing removed" in dry and first["identifier"] in dry
    assert snapshot(store) == before, "a dry run changes nothing"

    removed = run("rm", "--store", str(store), first["identifier"], "--yes", check=True).stdout
    assert "Removed 1 scenes" in removed
    assert not scene_path(store, first["identifier"]).exists()
    assert not list((store / TRASH_DIR).iterdir())

    days = sorted({r["datetime"][:10] for r in listed[1:]})
    cut = days[-1]
    older = [r["identifier"] for r in listed[1:] if r["datetime"][:10] < cut]
    out = run("prune", "--store", str(store), "--before", cut, "--yes", check=True).stdout
    assert f"Removed {len(older)} scenes" in out
    left = {i.identifier for i in list_scenes(store)}
    assert left == {r["identifier"] for r in listed[1:] if r["datetime"][:10] >= cut}

    keep = tmp_path / "keep.json"  # a saved search: an ItemCollection of STAC items
    kept_item = next(i for i in world.items if ident(i) in left)
    keep.write_text(json.dumps({"type": "FeatureCollection", "features": [kept_item.to_dict()]}))
    out = run("prune", "--store", str(store), "--not-in", str(keep), "--yes", check=True).stdout
    assert {i.identifier for i in list_scenes(store)} == {ident(kept_item)}
    assert verify_store(store)[1] == []


def test_a_scene_being_written_is_skipped_and_left_whole(world, store):
    busy, free = ident(world.items[0]), ident(world.items[1])
    before = snapshot(scene_path(store, busy))
    with FileLock(lock_path(store, busy)):  # as an ingest writing the scene holds it
        proc = run("rm", "--store", str(store), busy, free, "--yes")
        results = remove_scenes(store, [busy])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Removed 1 scenes" in proc.stdout
    assert f"skipped: Scene '{busy}' is being written by another process" in proc.stderr
    assert [r.removed for r in results] == [False]
    assert snapshot(scene_path(store, busy)) == before
    assert not scene_path(store, free).exists()

    held = threading.Event()

    def ingest_for_a_moment() -> None:
        with FileLock(lock_path(store, busy)):
            held.set()
            time.sleep(0.3)

    writer = threading.Thread(target=ingest_for_a_moment)
    writer.start()
    held.wait(10)
    assert remove_scene(store, busy, wait_seconds=30) > 0  # --wait: removed once released
    writer.join()
    assert not scene_path(store, busy).exists()


def test_unknown_scene_removes_nothing(world, store):
    with pytest.raises(SceneNotFoundError, match="'es-l2a_nope' is not in the store"):
        remove_scenes(store, [ident(world.items[0]), "es-l2a_nope"])
    with pytest.raises(InvalidIdentifierError):
        remove_scene(store, "../x")
    assert len(list_scenes(store)) == len(world.items)


def _violations(store: Path) -> list[str]:
    """Committed bands whose array is missing (checked twice: a racing write is no alarm)."""
    found, scenes = [], open_store(store)
    for scene in list_scenes(store):
        path = scene_path(store, scene.identifier)
        committed = scenes.committed_bands
        for band in sorted(committed(scene.identifier)):
            array = path / band / "zarr.json"
            if (
                not array.exists()
                and band in committed(scene.identifier)
                and not array.exists()
            ):
                found.append(f"{scene.identifier}/{band}")
    return found


def test_removal_while_a_real_ingest_writes_the_same_store(world, tmp_path):
    """Remove every scene we can while a writer process ingests all of them, all 13 bands.

    At no moment may a listed scene have a committed band without its array; a scene the
    writer holds is skipped; at the end each scene is either gone or complete and verified.
    """
    store = tmp_path / "store"
    ids = [i.id for i in world.items]
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(store), world.stac_url, ",".join(ALL_BANDS), *ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    removed, busy, violations = set(), set(), []
    deadline = time.monotonic() + 120
    while writer.poll() is None and time.monotonic() < deadline:
        if store.is_dir():
            for scene in list_scenes(store):
                for result in remove_scenes(store, [scene.identifier]):
                    (removed if result.removed else busy).add(result.identifier)
            violations += _violations(store)
        time.sleep(0.01)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [r["error"] for r in reports] == [None] * len(ids), reports
    assert violations == []
    assert busy, "no scene was ever busy: the removals never overlapped a write"
    assert removed, "no scene was removed while the writer ran"
    for scene in list_scenes(store):  # what is left is whole
        assert set(scene.bands) == set(ALL_BANDS), scene
    assert verify_store(store)[1] == []
    assert not any((store / TRASH_DIR).iterdir())
