"""Layout 2: 20 m and 60 m bands stored at native resolution, opened on the 10 m grid.

Everything runs against the offline world (real STAC API, real COGs over HTTP) into real zarr
stores on disk; the reference pixels are the COGs read with rasterio and repeated with numpy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from typer.testing import CliRunner

from release_scene import IDENTIFIER, expected_pixels, release_dataset
from scenestore import StacStoreManager
from scenestore.bands import BAND_SPECS
from scenestore.cli import app
from scenestore.store.native import GRID_ATTR, LAYOUT_ATTR, LAYOUT_VERSION

#: One band of each resolution (10, 20, 60 m) and SCL (20 m, uint8).
BANDS = ["B02", "B05", "B8A", "B01", "SCL"]
FIXTURE = Path(__file__).parent / "data" / "release-0.1.0" / "local"


class TenMetreManager(StacStoreManager):
    """Stores every band at 10 m, as the release before layout 2 did."""

    def download_for_store(self, item, bands):
        return self.download_scene_from_source(item, bands)


def cog_pixels(href: str) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(1)


def test_open_equals_the_cog_repeated_and_the_10m_layout(world, tmp_path):
    item = world.items[0]
    manager = StacStoreManager(BANDS, tmp_path / "native", stac_url=world.stac_url)
    manager.download_and_store(item)
    ds = manager.open(item)
    assert all(ds[b].chunks is not None for b in BANDS), "lazy"
    for band in BANDS:
        native = cog_pixels(item.assets[manager.profile.asset_key(band)].href)
        factor = BAND_SPECS[band].resolution // 10
        expected = native.repeat(factor, axis=0).repeat(factor, axis=1)
        np.testing.assert_array_equal(ds[band].values, expected, err_msg=band)
        assert ds[band].dtype == BAND_SPECS[band].dtype
    # Value for value, attribute for attribute: the Dataset the 10 m layout stores.
    old = TenMetreManager(BANDS, tmp_path / "ten", stac_url=world.stac_url)
    old.download_and_store(item)
    xr.testing.assert_identical(ds.load(), old.open(item).load())
    for band in BANDS:
        assert ds[band].encoding["chunks"] == old.open(item)[band].encoding["chunks"]
    # load() and the no-store download give it too.
    xr.testing.assert_identical(manager.load(item).load(), ds)
    nostore = StacStoreManager(BANDS, stac_url=world.stac_url).load(item)
    xr.testing.assert_identical(nostore.load().drop_attrs(), ds.drop_attrs())
    # harmonize works on the repeated bands
    assert manager.open(item, harmonize=True)["B05"].dtype == "float32"


def test_native_open_gives_native_shapes_coords_and_less_disk(world, tmp_path):
    item = world.items[0]
    manager = StacStoreManager(BANDS, tmp_path / "native", stac_url=world.stac_url)
    manager.download_and_store(item)
    ds = manager.open(item, resolution="native")
    size = ds.sizes["x"]
    assert ds["B02"].dims == ("y", "x") and ds["B02"].shape == (size, size)
    for band, res in [("B05", 20), ("B8A", 20), ("SCL", 20), ("B01", 60)]:
        assert ds[band].dims == (f"y_{res}m", f"x_{res}m")
        assert ds[band].shape == (size * 10 // res, size * 10 // res)
        assert ds[band].attrs[GRID_ATTR]["factor"] == res // 10
        x, x_native = ds["x"].values, ds[f"x_{res}m"].values
        f = res // 10
        np.testing.assert_allclose(x_native, x.reshape(-1, f).mean(axis=1))
        # the native grid's origin is the 10 m grid's
        assert x_native[0] - res / 2 == pytest.approx(x[0] - 5)
        native = cog_pixels(item.assets[manager.profile.asset_key(band)].href)
        np.testing.assert_array_equal(ds[band].values, native, err_msg=band)
        # chunks cover the ground of the 10 m chunk
        chunk10 = ds["B02"].encoding["chunks"][0]
        assert ds[band].encoding["chunks"][0] * f == chunk10
    assert ds.attrs[LAYOUT_ATTR] == LAYOUT_VERSION
    # plain xarray reads the native grids too
    raw = xr.open_zarr(tmp_path / "native" / f"{manager.identifier(item)}.zarr", consolidated=False)
    assert raw["B01"].dims == ("y_60m", "x_60m")
    old = TenMetreManager(BANDS, tmp_path / "ten", stac_url=world.stac_url)
    old.download_and_store(item)
    ident = manager.identifier(item)
    assert manager.stored_bytes(ident, BANDS) < old.stored_bytes(ident, BANDS)


def test_a_native_band_added_later_and_verify(world, tmp_path):
    item = world.items[1]
    StacStoreManager(["B02"], tmp_path, stac_url=world.stac_url).download_and_store(item)
    manager = StacStoreManager(["B02", "B05", "B01"], tmp_path, stac_url=world.stac_url)
    manager.download_and_store(item)
    native = manager.open(item, resolution="native", verify=True)
    assert native["B05"].dims == ("y_20m", "x_20m")
    result = CliRunner().invoke(app, ["verify", "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    href = item.assets["rededge1"].href
    np.testing.assert_array_equal(
        manager.open(item)["B05"].values, cog_pixels(href).repeat(2, 0).repeat(2, 1)
    )


def test_an_old_layout_scene_opens_and_takes_a_native_band_at_10m(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    manager = StacStoreManager(["B02", "B05"], store)
    # B05 handed over on its 20 m grid, as download_for_store gives it
    ds = release_dataset(["B02"]).drop_vars("B02")
    pixels = expected_pixels("B03")[::2, ::2]
    y20 = ds["y"].values.reshape(-1, 2).mean(axis=1)
    x20 = ds["x"].values.reshape(-1, 2).mean(axis=1)
    ds = ds.assign_coords(y_20m=("y_20m", y20), x_20m=("x_20m", x20))
    ds["B05"] = (("y_20m", "x_20m"), pixels, {"nodata": 0})
    manager.save_to_store(ds, IDENTIFIER)
    meta = json.loads((store / f"{IDENTIFIER}.zarr" / "B05" / "zarr.json").read_text())
    assert meta["shape"] == [60, 60], "an old-layout scene keeps every band at 10 m"
    assert GRID_ATTR not in meta["attributes"]
    group = json.loads((store / f"{IDENTIFIER}.zarr" / "zarr.json").read_text())
    assert LAYOUT_ATTR not in group["attributes"]
    opened = manager.open(IDENTIFIER, verify=True)
    np.testing.assert_array_equal(opened["B05"].values, pixels.repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(opened["B02"].values, expected_pixels("B02"))
    assert manager.open(IDENTIFIER, resolution="native")["B05"].dims == ("y", "x")
    result = CliRunner().invoke(app, ["verify", "--store", str(store)])
    assert result.exit_code == 0, result.output


def test_a_single_grid_dataset_round_trips_as_given(tmp_path):
    manager = StacStoreManager(["B02", "B03"], tmp_path)
    ds = release_dataset(["B02", "B03"])
    manager.save_to_store(ds, IDENTIFIER)
    opened = manager.open(IDENTIFIER, eager=True)
    for band in ["B02", "B03"]:
        np.testing.assert_array_equal(opened[band].values, ds[band].values)
        stored = {k: v for k, v in opened[band].attrs.items() if k != "grid_mapping"}
        assert stored == ds[band].attrs and opened[band].dims == ("y", "x")
    assert opened.attrs == ds.attrs
    native = manager.open(IDENTIFIER, resolution="native")
    assert native["B02"].dims == ("y", "x") and native.attrs[LAYOUT_ATTR] == LAYOUT_VERSION


def test_a_band_off_the_nested_grid_is_refused(tmp_path):
    from scenestore import CoordinateMismatchError

    manager = StacStoreManager(["B05"], tmp_path)
    ds = release_dataset(["B02"]).drop_vars("B02")
    y20 = ds["y"].values.reshape(-1, 2).mean(axis=1)
    x20 = ds["x"].values.reshape(-1, 2).mean(axis=1) + 7.0  # shifted by 7 m
    ds = ds.assign_coords(y_20m=("y_20m", y20), x_20m=("x_20m", x20))
    ds["B05"] = (("y_20m", "x_20m"), np.ones((30, 30), "uint16"))
    with pytest.raises(CoordinateMismatchError, match="x_20m"):
        manager.save_to_store(ds, IDENTIFIER)
    assert not manager.exists(IDENTIFIER)


def test_info_shows_each_bands_grid(world, tmp_path):
    item = world.items[2]
    manager = StacStoreManager(["B02", "B05", "B01"], tmp_path, stac_url=world.stac_url)
    manager.download_and_store(item)
    result = CliRunner().invoke(app, ["info", "--store", str(tmp_path), manager.identifier(item)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if "│ B0" in line}
    assert "10 m" in rows["B02"] and "20 m" in rows["B05"] and "60 m" in rows["B01"]


def test_chunks_fit_the_cog_tiles():
    from scenestore.stac import tile_aligned_chunk

    assert tile_aligned_chunk(10980, [512] * 13) == 1536  # 3 tile rows, / 2 and / 6 nested
    assert tile_aligned_chunk(10980, [1024, 512]) == 3072
    assert tile_aligned_chunk(1098, [512]) == 1098  # one chunk: one strip, every tile once
    assert tile_aligned_chunk(10980, []) == 1830


def _full_resolution_tiles(path: Path) -> list[tuple[int, int]]:
    """Byte spans of the full-resolution level's tiles of a COG on disk."""
    spans = []
    with rasterio.open(path) as src:
        rows, cols = src.block_shapes[0]
        for i in range(-(-src.height // rows)):
            for j in range(-(-src.width // cols)):
                offset = int(src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1))
                size = int(src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1))
                spans.append((offset, offset + size))
    return spans


def test_every_source_byte_is_fetched_once(world, tmp_path):
    """An ingest of all 13 bands fetches each full-resolution COG tile once, no overview tile.

    GDAL reads the 4 bytes before a tile (its size) with it, so two strips meeting at a tile
    row share those; the header read (the first 16 KB) may reach into a tiny COG's tiles,
    which the strip's one GET fetches again (a few KB of a small scene, none of a full one).
    """
    from scenestore.bands import ALL_BANDS

    item = world.items[2]
    world.http.reset_stats()
    StacStoreManager(list(ALL_BANDS), tmp_path, stac_url=world.stac_url).download_and_store(item)
    for band in ALL_BANDS:
        path = f"{item.id}/{band}.tif"
        spans = []
        for record in world.http.requests():
            if record.path == path and record.range:
                start, _, end = record.range.removeprefix("bytes=").partition("-")
                spans.append((int(start), int(end) + 1))
        header, *reads = sorted(spans)
        assert header[0] == 0 and reads and reads[0][0] > 0, f"{band}: one header read: {spans}"
        # GDAL's first 16 KB, not rounded up to a larger piece by another cache layer
        assert header[1] <= 16384, f"{band}: header read {header}"
        tiles = _full_resolution_tiles(world.manifest.band_path(item.id, band))
        first, last = min(s for s, _ in tiles), max(e for _, e in tiles)
        # from the first tile's size field to the end of the file (its last 4 bytes at most)
        assert reads[0][0] >= first - 4 and last <= reads[-1][1] <= last + 4, (band, reads)
        fetched = sum(e - s for s, e in reads)
        assert fetched <= reads[-1][1] - reads[0][0] + 4 * len(reads), f"{band} twice: {reads}"
