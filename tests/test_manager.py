"""The StoreManager contract, on a real zarr store, with an in-process source."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scenestore import (
    CoordinateMismatchError,
    IncompleteSceneError,
    InvalidIdentifierError,
    InvalidRequestError,
    SceneNotFoundError,
    StoreRequiredError,
)
from scenestore.store import open_store
from synthetic import ArrayStoreManager, expected_band

BANDS = ["B02", "B03", "B04"]


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: equal snapshots mean an unchanged store."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_normal_use_downloads_once_then_opens_from_store(tmp_path):
    mgr = ArrayStoreManager(BANDS, tmp_path)
    assert not mgr.exists("s1") and mgr.missing_bands("s1") == BANDS
    ds = mgr.load("s1")
    assert mgr.downloads == [BANDS]
    assert sorted(ds.data_vars) == BANDS
    for band in BANDS:
        np.testing.assert_array_equal(ds[band].values, expected_band(band))
        assert ds[band].dtype == np.uint16
    assert "spatial_ref" in ds.coords
    again = mgr.load("s1")
    assert mgr.downloads == [BANDS], "a complete scene must not be downloaded again"
    xr.testing.assert_identical(ds.load(), again.load())


def test_forced_load_downloads_everything_again(tmp_path):
    mgr = ArrayStoreManager(BANDS, tmp_path)
    mgr.download_and_store("s1")
    ds = mgr.load("s1", force=True)
    assert mgr.downloads == [BANDS, BANDS]
    np.testing.assert_array_equal(ds["B04"].values, expected_band("B04"))
    assert open_store(tmp_path).committed_bands("s1") == set(BANDS)


def test_download_only_fills_the_store_and_returns_nothing(tmp_path):
    mgr = ArrayStoreManager(BANDS, tmp_path)
    assert mgr.download_and_store("s1") is None
    assert mgr.complete("s1")
    mgr.download_and_store("s1")
    assert mgr.downloads == [BANDS]


def test_offline_open_reads_store_only_and_is_lazy(tmp_path):
    ArrayStoreManager(BANDS, tmp_path).download_and_store("s1")
    offline = ArrayStoreManager(BANDS, tmp_path)
    ds = offline.open("s1")
    assert offline.downloads == []
    assert ds["B02"].chunks is not None, "open must be lazy (dask-backed) by default"
    eager = offline.open("s1", eager=True)
    assert eager["B02"].chunks is None and eager["B02"].dtype == np.uint16
    np.testing.assert_array_equal(eager["B03"].values, expected_band("B03"))


def test_offline_open_of_missing_or_incomplete_scene_fails_clearly(tmp_path):
    with pytest.raises(SceneNotFoundError, match="'nope' is not in the store"):
        ArrayStoreManager(BANDS, tmp_path).open("nope")
    ArrayStoreManager(["B02"], tmp_path).download_and_store("s1")
    with pytest.raises(IncompleteSceneError, match=r"lacks bands \['B03', 'B04'\]"):
        ArrayStoreManager(BANDS, tmp_path).open("s1")


def test_no_store_downloads_everything_and_keeps_nothing(tmp_path):
    mgr = ArrayStoreManager(BANDS, None)
    assert mgr.missing_bands("s1") == BANDS and not mgr.exists("s1")
    assert sorted(mgr.load("s1").data_vars) == BANDS
    for call in (lambda: mgr.download_and_store("s1"), lambda: mgr.open("s1")):
        with pytest.raises(StoreRequiredError, match="store=None"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_incremental_bands_fetch_only_missing_and_load_returns_all(tmp_path):
    ArrayStoreManager(["B02"], tmp_path).download_and_store("s1")
    mgr = ArrayStoreManager(BANDS, tmp_path)
    assert mgr.missing_bands("s1") == ["B03", "B04"]
    stored_b02 = tree_snapshot(tmp_path / "s1.zarr" / "B02")
    ds = mgr.load("s1")
    assert mgr.downloads == [["B03", "B04"]]
    assert sorted(ds.data_vars) == BANDS, "load returns every requested band, stored or new"
    assert tree_snapshot(tmp_path / "s1.zarr" / "B02") == stored_b02, "stored chunks untouched"


def test_coordinate_mismatch_on_append_leaves_store_unchanged(tmp_path):
    ArrayStoreManager(["B02"], tmp_path).download_and_store("s1")
    before = tree_snapshot(tmp_path)
    shifted = ArrayStoreManager(BANDS, tmp_path, x0=500020.0)
    with pytest.raises(CoordinateMismatchError, match=r"'s1'.*x coordinates differ.*by up to 20"):
        shifted.download_and_store("s1")
    assert tree_snapshot(tmp_path) == before
    # Sub-pixel float noise is tolerated and the stored coordinates are kept.
    ArrayStoreManager(BANDS, tmp_path, x0=500000.0 + 1e-7).download_and_store("s1")
    stored = xr.open_zarr(tmp_path / "s1.zarr", consolidated=False)
    assert float(stored.x[0]) == 500005.0


def test_identifier_validation_blocks_path_escape(tmp_path):
    mgr = ArrayStoreManager(BANDS, tmp_path / "store")
    for bad in ["../x", "a/b", "", "a\\b", "..", ".hidden", "x\x00y", "tab\tid"]:
        with pytest.raises(InvalidIdentifierError, match="Scene identifier"):
            mgr.download_and_store(bad)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "store").exists()


def test_bad_band_lists_are_rejected():
    with pytest.raises(InvalidRequestError, match="Empty band list"):
        ArrayStoreManager([], None)
    with pytest.raises(InvalidRequestError, match="repeats a band"):
        ArrayStoreManager(["B02", "B02"], None)


def test_validation_survives_python_O(tmp_path):
    """Preconditions are errors, not asserts: they still fire under python -O."""
    code = (
        "import sys; sys.path.insert(0, 'tests');"
        "from synthetic import ArrayStoreManager;"
        "from scenestore import StoreRequiredError, InvalidIdentifierError\n"
        "try:\n ArrayStoreManager(['B02'], None).download_and_store('s')\n"
        "except StoreRequiredError: print('store-ok')\n"
        f"try:\n ArrayStoreManager(['B02'], {str(tmp_path)!r}).download_and_store('../x')\n"
        "except InvalidIdentifierError: print('id-ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        check=True,
    ).stdout
    assert out.split() == ["store-ok", "id-ok"]


def test_killed_writer_leaves_band_missing_and_rerun_completes(tmp_path):
    """SIGKILL a real writer process mid-band: the band must not look present."""
    writer = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "synthetic.py"),
            str(tmp_path),
            "k1",
            "B02,B03",
            "0.05",
        ],
    )
    scene = tmp_path / "k1.zarr"
    staged = scene / "_staging"
    deadline = time.monotonic() + 60
    # Wait until some, but not all, chunks of the bands are on disk: the writer is mid-band.
    # (A band of a new scene is written in place: without its commit record it is not present.)
    while time.monotonic() < deadline:
        chunks = [p for p in scene.glob("B0*/c/*/*")] if scene.exists() else []
        if len(chunks) >= 4:
            break
        assert writer.poll() is None, "writer finished before it could be killed"
        time.sleep(0.01)
    else:
        pytest.fail("writer never started writing chunks")
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert len(chunks) < 2 * 36, "the writer must have been killed mid-write"

    mgr = ArrayStoreManager(["B02", "B03"], tmp_path, size=120, chunk=20)
    assert mgr.exists("k1")
    assert mgr.missing_bands("k1") == ["B02", "B03"]
    with pytest.raises(IncompleteSceneError):
        mgr.open("k1")
    mgr.download_and_store("k1")
    assert mgr.complete("k1")
    ds = mgr.open("k1", eager=True)
    np.testing.assert_array_equal(ds["B02"].values, expected_band("B02", 120))
    assert not staged.exists()


def test_failed_overwrite_keeps_the_stored_band(tmp_path):
    """A forced re-download that fails mid-way must not damage the band already stored."""
    mgr = ArrayStoreManager(["B02"], tmp_path)
    mgr.download_and_store("s1")
    before = tree_snapshot(tmp_path / "s1.zarr" / "B02")

    class Broken(ArrayStoreManager):
        def download_scene_from_source(self, item, bands):
            ds = super().download_scene_from_source(item, bands)
            return ds.map(lambda v: v.copy(data=v.data.map_blocks(_boom, dtype=v.dtype)))

    with pytest.raises(RuntimeError, match="source broke"):
        Broken(["B02"], tmp_path).load("s1", force=True)
    assert open_store(tmp_path).committed_bands("s1") == {"B02"}
    assert tree_snapshot(tmp_path / "s1.zarr" / "B02") == before


def _boom(block):
    raise RuntimeError("source broke")


def test_commit_record_describes_the_band(tmp_path):
    ArrayStoreManager(["B02"], tmp_path).download_and_store("s1")
    record = json.loads((tmp_path / "s1.zarr" / "_commits" / "B02.json").read_text())
    assert record["band"] == "B02" and record["shape"] == [60, 60] and record["chunks"] == [20, 20]


def test_store_path_that_is_a_file_is_rejected(tmp_path):
    from scenestore import StoreError

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        ArrayStoreManager(BANDS, f).download_and_store("s1")
    assert f.read_text() == "x"
