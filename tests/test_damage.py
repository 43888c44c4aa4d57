"""Every damage to a stored scene is found, reported in one line and repairable; reads of a
damaged chunk raise a clear error instead of returning wrong values (or crashing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner
from zarr.codecs import BloscCodec

from scenestore import ALL_BANDS, StacStoreManager
from scenestore.cli import app
from scenestore.errors import (
    CoordinateMismatchError,
    DamagedSceneError,
    IncompleteSceneError,
    InvalidRequestError,
)
from scenestore.store import LocalClient, open_store
from scenestore.store.layout import commit_key, identifier_of
from scenestore.store.records import TREE_SCHEME, ChecksumBuilder, CommitRecord, record_bytes
from synthetic import ArrayStoreManager

BAND = "B04"


@pytest.fixture(scope="module")
def clean(world, tmp_path_factory) -> Path:
    """A store holding all 13 bands of one scene of the world (copied per test)."""
    store = tmp_path_factory.mktemp("damage") / "clean"
    StacStoreManager(list(ALL_BANDS), store, stac_url=world.stac_url).download_and_store(
        world.items[0]
    )
    return store


@pytest.fixture
def store(clean, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(clean, copy)
    return copy


def ident(world) -> str:
    return f"es-l2a_{world.items[0].id}"


def chunk_file(scene: Path, band: str = BAND) -> Path:
    return next(p for p in sorted((scene / band / "c").rglob("*")) if p.is_file())


def flip_byte(scene: Path) -> None:
    chunk = chunk_file(scene)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def truncate_chunk(scene: Path) -> None:
    chunk = chunk_file(scene)
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])


DAMAGE = {
    "flipped byte": flip_byte,
    "truncated chunk": truncate_chunk,
    "deleted chunk": lambda scene: chunk_file(scene).unlink(),
    "garbage commit record": lambda s: (s / "_commits" / f"{BAND}.json").write_text("{garbage"),
    "commit record of wrong fields": lambda s: (s / "_commits" / f"{BAND}.json").write_text(
        json.dumps({"band": BAND, "shape": "wide"})
    ),
    "deleted band zarr.json": lambda scene: (scene / BAND / "zarr.json").unlink(),
    "deleted scene zarr.json": lambda scene: (scene / "zarr.json").unlink(),
    "garbage scene zarr.json": lambda scene: (scene / "zarr.json").write_text("not json"),
    # What a writer killed while replacing a committed band leaves: a staged array.
    "leftover staging": lambda scene: shutil.copytree(scene / BAND, scene / "_staging" / BAND),
}

#: How each damage shows through ``open``: the lazy read, the eager one, or only verify=True.
ON_OPEN = {
    "flipped byte": "read",
    "truncated chunk": "read",
    "deleted chunk": "verify",
    "garbage commit record": "open",
    "commit record of wrong fields": "open",
    "deleted band zarr.json": "open",
    "deleted scene zarr.json": "open",
    "garbage scene zarr.json": "open",
    "leftover staging": None,
}


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), f"{args}: crashed with {result.exception!r}"
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_damage_is_reported_in_one_line_and_repaired(world, clean, store, kind):
    identifier = ident(world)
    scene = store / f"{identifier}.zarr"
    DAMAGE[kind](scene)

    found = cli("verify", "--store", str(store))
    assert found.exit_code == 1, found.output
    rows = [ln for ln in found.output.splitlines() if ln.startswith(f"│ {identifier}")]
    assert len(rows) == 1, found.output

    # ls, info and open report it (or open lazily), never crash.
    listed = cli("ls", "--store", str(store))
    assert listed.exit_code == 0 and identifier in listed.output
    assert cli("info", "--store", str(store), identifier).exit_code in (0, 1)
    opened = cli("open", "--store", str(store), identifier, "--verify")
    assert opened.exit_code in (0, 1)
    manager = StacStoreManager(list(ALL_BANDS), store, stac_url=world.stac_url)
    how = ON_OPEN[kind]
    if how == "open":
        with pytest.raises(DamagedSceneError, match="verify --repair"):
            manager.open(identifier)
    elif how == "read":
        lazy = manager.open(identifier)
        with pytest.raises(DamagedSceneError, match=rf"{identifier}' band {BAND}: chunk c/"):
            lazy[BAND].values  # noqa: B018 (computing is the read)
        with pytest.raises(DamagedSceneError, match=f"band {BAND}"):
            manager.open(identifier, eager=True)
    elif how == "verify":
        manager.open(identifier, eager=True)  # zarr reads a missing chunk as fill...
        with pytest.raises(DamagedSceneError, match="0 chunk files where 1 were committed"):
            manager.open(identifier, verify=True)  # ...which verify=True refuses to return
    if how in ("open", "verify"):  # the CLI prints a lazy scene: chunks are not read
        assert opened.exit_code == 1 and "verify --repair" in opened.output

    repaired = cli("verify", "--store", str(store), "--repair")
    assert repaired.exit_code == 0, repaired.output
    manager.download_and_store(world.items[0])
    assert cli("verify", "--store", str(store)).exit_code == 0
    ours = manager.open(identifier, eager=True, verify=True)
    reference = StacStoreManager(list(ALL_BANDS), clean).open(identifier, eager=True)
    xr.testing.assert_identical(ours, reference)
    assert json.loads((scene / "zarr.json").read_text())["attributes"] == json.loads(
        (clean / f"{identifier}.zarr" / "zarr.json").read_text()
    )["attributes"]


def test_garbage_record_counts_as_missing_so_a_rerun_refetches_it(world, store):
    identifier = ident(world)
    (store / f"{identifier}.zarr" / "_commits" / f"{BAND}.json").write_bytes(b"\x00\xff")
    manager = StacStoreManager(list(ALL_BANDS), store, stac_url=world.stac_url)
    assert manager.missing_bands(identifier) == [BAND]
    assert manager.ingest(world.items[0]).fetched == (BAND,)
    assert cli("verify", "--store", str(store)).exit_code == 0


def test_new_bands_carry_a_crc32c_checked_before_blosc(world, store):
    meta = json.loads((store / f"{ident(world)}.zarr" / BAND / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]


def test_truncated_chunk_in_an_eager_13_band_open_is_an_error_not_a_crash(world, store):
    scene = store / f"{ident(world)}.zarr"
    for band in ALL_BANDS:  # every band at once, so Blosc would run in many threads
        chunk = chunk_file(scene, band)
        chunk.write_bytes(chunk.read_bytes()[:-7])
    code = (
        "import sys\nfrom scenestore import ALL_BANDS, StacStoreManager\n"
        "from scenestore.errors import DamagedSceneError\n"
        f"m = StacStoreManager(list(ALL_BANDS), {str(store)!r})\n"
        "try:\n    m.open(sys.argv[1], eager=True)\n"
        "except DamagedSceneError as err:\n    print(err)\n    sys.exit(3)\n"
    )
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", code, ident(world)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
        assert "crc32c" in proc.stdout and "verify --repair" in proc.stdout


def _rewrite_without_checksum(scene: Path, band: str) -> None:
    """Make ``band`` what the previous release wrote: Blosc last, no crc32c (real zarr)."""
    data = zarr.open_array(scene / band, mode="r")[...]
    attrs = json.loads((scene / band / "zarr.json").read_text())["attributes"]
    shutil.rmtree(scene / band)
    array = zarr.create_array(
        store=scene / band,
        shape=data.shape,
        dtype=data.dtype,
        chunks=data.shape,
        fill_value=0,
        compressors=[BloscCodec(cname="zstd", clevel=3)],
        attributes=attrs,
        dimension_names=["y", "x"],
        zarr_format=3,
    )
    array[...] = data
    identifier = identifier_of(scene)
    old = open_store(scene.parent).read_commit(identifier, band)
    # Re-hash the rewritten chunks in the record's scheme, in name order (what verify does).
    found = ChecksumBuilder(TREE_SCHEME)
    chunks = sorted(p for p in (scene / band / "c").rglob("*") if p.is_file())
    for chunk in chunks:
        found.add(chunk.relative_to(scene / band).as_posix(), chunk.read_bytes())
    record = CommitRecord(
        band=band,
        shape=old.shape,
        chunks=old.chunks,
        dtype=old.dtype,
        source=old.source,
        chunk_count=len(chunks),
        nbytes=sum(p.stat().st_size for p in chunks),
        checksum=found.checksum(),
    )
    LocalClient(scene.parent).put(commit_key(identifier, band), record_bytes(record))


def test_scenes_stored_without_checksums_still_open_and_verify(world, clean, store):
    identifier = ident(world)
    scene = store / f"{identifier}.zarr"
    _rewrite_without_checksum(scene, BAND)
    assert cli("verify", "--store", str(store)).exit_code == 0
    manager = StacStoreManager(list(ALL_BANDS), store)
    reference = StacStoreManager(list(ALL_BANDS), clean).open(identifier, eager=True)
    np.testing.assert_array_equal(manager.open(identifier, eager=True)[BAND], reference[BAND])
    truncate_chunk(scene)  # Blosc would trust its header: the length is checked instead
    with pytest.raises(DamagedSceneError, match="Blosc header says"):
        manager.open(identifier, eager=True)


class EpsgStringManager(ArrayStoreManager):
    """A subclass whose spatial_ref gives its CRS as "EPSG:..." rather than as WKT."""

    def __init__(self, bands, store, *, crs: str = "EPSG:32633") -> None:
        super().__init__(bands, store)
        self.crs = crs

    def download_scene_from_source(self, item, bands):
        ds = super().download_scene_from_source(item, bands)
        return ds.assign_coords(spatial_ref=xr.DataArray(0, attrs={"crs_wkt": self.crs}))


def test_crs_as_an_epsg_string_saves_twice_and_info_works(tmp_path):
    EpsgStringManager(["B02"], tmp_path).download_and_store("s1")
    second = EpsgStringManager(["B02", "B03"], tmp_path)
    second.download_and_store("s1")  # compares "EPSG:32633" with itself through pyproj
    assert second.complete("s1")
    shown = cli("info", "--store", str(tmp_path), "s1")
    assert shown.exit_code == 0 and "EPSG:32633" in shown.output
    # The same CRS as WKT is the same CRS; another zone is not, and garbage is named.
    ArrayStoreManager(["B04"], tmp_path).download_and_store("s1")
    with pytest.raises(CoordinateMismatchError, match="EPSG:32632"):
        EpsgStringManager(["B08"], tmp_path, crs="EPSG:32632").download_and_store("s1")
    with pytest.raises(InvalidRequestError, match="'not-a-crs', which pyproj cannot parse"):
        EpsgStringManager(["B08"], tmp_path, crs="not-a-crs").download_and_store("s1")
    with pytest.raises(IncompleteSceneError):
        EpsgStringManager(["B08"], tmp_path).open("s1")
