"""A symlink planted in a store is never followed out of it (issue 13, item 1).

Each case plants one kind of link (a scene, a band, ``_commits``, ``_staging``, ``.trash``,
``.quicklooks``, ``.locks``, a catalog ``--out``) pointing at a directory outside the store,
runs the real CLI command, and checks what a user would: every path, byte and mtime outside
is as it was, the command refuses in one line naming the link (or skips it, where skipping is
the documented behaviour), and the store still works afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scenestore.cli import app
from scenestore.errors import UnsafePathError
from scenestore.fsafety import inside_store, remove_tree_inside
from scenestore.store import open_store
from scenestore.store.inventory import list_scenes
from scenestore.store.layout import identifier_of, scene_path
from scenestore.store.quicklook import save_quicklook
from synthetic import ArrayStoreManager
from test_cli import run

RGB = ["B02", "B03", "B04"]


def cli(*args: str, check: bool = False):
    """Run a scenestore command in-process (exit code, stdout, stderr as a user sees them)."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if check and result.exit_code != 0:
        raise AssertionError(f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}")
    return result


class DatedManager(ArrayStoreManager):
    """Synthetic scenes with a sensing time, as the catalog needs."""

    def download_scene_from_source(self, item, bands):
        ds = super().download_scene_from_source(item, bands)
        ds.attrs["datetime"] = "2024-06-01T10:00:00Z"
        return ds


def make_store(store: Path, ids: tuple[str, ...]) -> Path:
    manager = DatedManager(RGB, store, size=40, chunk=20)
    for identifier in ids:
        manager.download_and_store(identifier)
    return store


def tree(root: Path) -> dict[str, tuple[bool, int, int, bytes | None]]:
    """Every path under ``root`` (links not followed): is-link, size, mtime and file bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(root))] = (path.is_symlink(), st.st_size, st.st_mtime_ns, data)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Two synthetic scenes in a store, and a 'victim' scene and files outside it."""
    root = tmp_path_factory.mktemp("links")
    make_store(root / "store", ("s1", "s2"))
    outside = make_store(root / "outside", ("victim",))
    for name in ("a", "b"):  # directories the .trash link would offer for deletion
        (outside / "dirs" / name).mkdir(parents=True)
        (outside / "dirs" / name / "keep.txt").write_text(name)
    (outside / "s1.png").write_bytes(b"not a quicklook of ours")
    (outside / "s1.lock").write_text("someone else's file")
    (outside / "catalog.json").write_text("{}")
    return root


@pytest.fixture
def where(template, tmp_path) -> tuple[Path, Path]:
    shutil.copytree(template, tmp_path / "w", symlinks=True)
    return tmp_path / "w" / "store", tmp_path / "w" / "outside"


def _link(link: Path, target: Path) -> Path:
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target.is_dir())
    return link


def _damage_victim(outside: Path) -> None:
    """A chunk gone from the victim: a repair that followed the link would delete its band."""
    chunks = sorted((outside / "victim.zarr" / "B02" / "c").rglob("*"))
    chunk = next(p for p in chunks if p.is_file())
    chunk.unlink()


def plant_scene(store, outside):
    _damage_victim(outside)
    return _link(store / "linked.zarr", outside / "victim.zarr")


def plant_band(store, outside):
    _damage_victim(outside)
    return _link(store / "s1.zarr" / "B02", outside / "victim.zarr" / "B02")


def plant_commits(store, outside):
    return _link(store / "s1.zarr" / "_commits", outside / "victim.zarr" / "_commits")


def plant_staging(store, outside):
    return _link(store / "s1.zarr" / "_staging", outside / "victim.zarr")


def plant_trash(store, outside):
    return _link(store / ".trash", outside / "dirs")


def plant_trash_entry(store, outside):
    """What an older scenestore left after rm of a linked scene: the link, moved to .trash."""
    _damage_victim(outside)
    return _link(store / ".trash" / "linked.zarr.0badc0de", outside / "victim.zarr")


def plant_quicklooks(store, outside):
    return _link(store / ".quicklooks", outside)


def plant_locks(store, outside):
    return _link(store / ".locks", outside)


# (plant, command, whether the command skips the link and succeeds)
CASES: list[tuple[Callable, list[str], bool]] = [
    (plant_scene, ["rm", "linked", "--yes"], False),
    (plant_scene, ["verify", "linked", "--repair"], False),
    (plant_scene, ["verify", "--repair"], True),
    (plant_scene, ["ls"], True),
    (plant_scene, ["info", "linked"], False),
    (plant_scene, ["prune", "--not-in", "KEEP", "--yes"], True),
    (plant_scene, ["quicklook", "linked", "--out", "OUT"], False),
    (plant_scene, ["catalog", "--out", "CAT"], True),
    (plant_band, ["verify", "s1", "--repair"], False),
    (plant_band, ["info", "s1"], False),
    (plant_band, ["quicklook", "s1", "--out", "OUT"], False),
    (plant_band, ["rm", "s1", "--yes"], True),  # rm renames the link away, never follows it
    (plant_commits, ["rm", "s1", "--yes"], False),
    (plant_commits, ["verify", "s1", "--repair"], False),
    (plant_commits, ["ls"], True),
    (plant_staging, ["verify", "s1", "--repair"], False),
    (plant_trash, ["rm", "s1", "--yes"], False),
    (plant_trash, ["prune", "--not-in", "KEEP", "--yes"], False),
    (plant_trash_entry, ["rm", "s1", "--yes"], True),  # the old link is unlinked, not followed
    (plant_quicklooks, ["rm", "s1", "--yes"], False),
    (plant_locks, ["rm", "s1", "--yes"], False),
]


@pytest.mark.parametrize(
    ("plant", "command", "skips"),
    CASES,
    ids=[f"{p.__name__[6:]}-{'-'.join(c[:2])}" for p, c, _ in CASES],
)
def test_a_planted_link_is_never_followed(where, tmp_path, plant, command, skips):
    store, outside = where
    link = plant(store, outside)
    keep = tmp_path / "keep.txt"
    keep.write_text("s2\n")
    args = [
        {"KEEP": str(keep), "OUT": str(tmp_path / "q.png"), "CAT": str(tmp_path / "cat")}.get(a, a)
        for a in command
    ]
    before = tree(outside)

    proc = cli(args[0], "--store", str(store), *args[1:])

    assert tree(outside) == before, "nothing outside the store changes"
    lines = proc.stderr.strip().splitlines()
    if skips:  # and the linked scene is neither listed, verified, removed nor catalogued
        assert proc.exit_code == 0, proc.stderr
        assert "linked" not in proc.stdout
        catalog = tmp_path / "cat"
        assert not catalog.exists() or "linked" not in str(tree(catalog))
    else:
        assert proc.exit_code != 0 and len(lines) == 1, proc.stderr
        assert str(link) in proc.stderr and "link" in proc.stderr, proc.stderr
    # The store still works: once the link is gone, rm and prune of real scenes succeed.
    if link.is_symlink():
        link.unlink()
    cli("ls", "--store", str(store), check=True)
    cli("prune", "--store", str(store), "--not-in", str(keep), "--yes", check=True)
    cli("rm", "--store", str(store), "s2", "--yes", check=True)
    assert list_scenes(open_store(store)) == []
    assert tree(outside) == before


def test_ls_warns_of_a_linked_scene_and_lists_the_others(where):
    store, outside = where
    plant_scene(store, outside)
    proc = run("ls", "--store", str(store), "--json", check=True)
    assert '"linked"' not in proc.stdout and '"s1"' in proc.stdout and '"s2"' in proc.stdout
    # The warning names the link itself (the store client skips it before any scene is read).
    warning = " ".join(proc.stderr.split())
    assert f"Skipping {store / 'linked.zarr'}, never following a link out of the store" in warning


@pytest.mark.parametrize(
    ("plant", "identifier", "named"),
    [(plant_locks, "s3", ".locks"), (plant_scene, "linked", "linked.zarr"),
     (plant_commits, "s1", "_commits")],
)
def test_ingest_refuses_a_linked_store_path(where, plant, identifier, named):
    """The writer lock (opened with O_TRUNC), the scene and its records are never linked to."""
    store, outside = where
    plant(store, outside)
    before = tree(outside)
    with pytest.raises(UnsafePathError, match=named.replace(".", r"\.")):
        DatedManager(RGB, store, size=40, chunk=20).download_and_store(identifier)
    assert tree(outside) == before


def test_flow_quicklook_refuses_a_linked_quicklooks_dir(where):
    store, outside = where
    plant_quicklooks(store, outside)
    before = tree(outside)
    with pytest.raises(UnsafePathError, match=r"\.quicklooks"):
        save_quicklook(open_store(store), "s1", max_size=20)
    assert tree(outside) == before


def test_quicklook_never_writes_through_a_planted_temp_name(where, tmp_path):
    """A link at the old predictable temp name ``.<out>.tmp`` is not written through."""
    store, outside = where
    out = tmp_path / "q.png"
    bait = _link(tmp_path / ".q.png.tmp", outside / "s1.png")
    before = tree(outside)
    cli("quicklook", "--store", str(store), "s1", "--out", str(out), check=True)
    assert tree(outside) == before
    assert out.read_bytes().startswith(b"\x89PNG") and bait.is_symlink()
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask(), "the mode open() would give"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".q.png.tmp", "q.png", "w"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_catalog_out_that_is_a_link_is_refused(where, tmp_path):
    store, outside = where
    out = _link(tmp_path / "cat", outside)  # outside holds a catalog.json: it looks rewritable
    before = tree(outside)
    proc = cli("catalog", "--store", str(store), "--out", str(out))
    assert proc.exit_code != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(out) in proc.stderr
    assert tree(outside) == before and out.is_symlink()


def test_catalog_replacing_one_with_a_linked_subdir_leaves_the_target(where, tmp_path):
    """The old catalog is deleted whole, but a link inside it is removed, not followed."""
    store, outside = where
    out = tmp_path / "cat"
    cli("catalog", "--store", str(store), "--out", str(out), check=True)
    _link(out / "planted", outside / "dirs")
    before = tree(outside)
    cli("catalog", "--store", str(store), "--out", str(out), check=True)
    assert tree(outside) == before and not (out / "planted").exists()


def test_ingest_refuses_a_linked_staging_dir(world, tmp_path):
    """``<scene>/_staging`` -> a directory holding ``B03``: ingest must not delete it."""
    store, outside = tmp_path / "store", tmp_path / "outside"
    item_file = tmp_path / "item.json"
    item_file.write_text(json.dumps(world.items[0].to_dict()))
    common = ["--store", str(store), "--stac-url", world.stac_url, "--item", str(item_file)]
    cli("ingest", *common, "--bands", "B02", check=True)
    (outside / "B03").mkdir(parents=True)
    (outside / "B03" / "zarr.json").write_text("{}")
    scene = next(store.glob("*.zarr"))
    link = _link(scene / "_staging", outside)
    before = tree(outside)

    proc = cli("ingest", *common, "--bands", "B02,B03")

    assert tree(outside) == before
    assert proc.exit_code == 1 and str(link) in proc.stdout + proc.stderr
    scenes, identifier = open_store(store), identifier_of(scene)
    assert scenes.committed_bands(identifier) == {"B02"}
    link.unlink()
    cli("ingest", *common, "--bands", "B02,B03", check=True)
    assert scenes.committed_bands(identifier) == {"B02", "B03"}
    cli("verify", "--store", str(store), check=True)


def test_helpers_refuse_links_and_paths_outside(tmp_path):
    store, outside = tmp_path / "store", tmp_path / "outside"
    (store / "real" / "sub").mkdir(parents=True)
    (outside / "x").mkdir(parents=True)
    _link(store / "link", outside)
    assert inside_store(store, store / "real" / "sub") == store / "real" / "sub"
    assert inside_store(store, store / "new" / "dir") == store / "new" / "dir"  # not there yet
    bad_paths = (store / "link", store / "link" / "x", outside, store / ".." / "outside")
    for bad in bad_paths:
        with pytest.raises(UnsafePathError, match="symlink|not inside|outside"):
            inside_store(store, bad)
    with pytest.raises(UnsafePathError, match="is a symlink"):
        remove_tree_inside(store, store / "link" / "x")
    assert (outside / "x").is_dir()
    remove_tree_inside(store, store / "real")
    remove_tree_inside(store, store / "real")  # missing: no error
    assert not (store / "real").exists()
    assert scene_path(store, "s") == store / "s.zarr"
