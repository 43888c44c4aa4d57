"""Quicklooks: what the PNG shows, and that a big scene is never read whole into memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import rasterio
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.io import MemoryFile

from scenestore import StacStoreManager
from scenestore.errors import IncompleteSceneError, InvalidRequestError
from scenestore.store import open_store
from scenestore.store.layout import scene_path
from scenestore.store.quicklook import (
    decimation_step,
    png_bytes,
    render_quicklook,
    stretch_rgba,
)
from synthetic import ArrayStoreManager, expected_band
from test_cli import run


def test_decimation_step_and_stretch():
    assert decimation_step((10980, 10980), 512) == 22
    assert decimation_step((120, 120), 512) == 1
    assert decimation_step((1098, 549), 549) == 2
    with pytest.raises(InvalidRequestError, match="Quicklook size 0 is below 1"):
        decimation_step((10, 10), 0)
    refl = np.linspace(0.0, 0.3, 3 * 10 * 10, dtype=np.float32).reshape(3, 10, 10)
    valid = np.ones((10, 10), bool)
    valid[0, :] = False
    rgba, (lo, hi) = stretch_rgba(refl, valid)
    assert rgba.shape == (10, 10, 4) and rgba.dtype == np.uint8
    assert (rgba[0, :, 3] == 0).all() and (rgba[1:, :, 3] == 255).all()
    assert (rgba[0, :, :3] == 0).all()
    assert rgba[..., :3][valid].min() == 0 and rgba[..., :3][valid].max() == 255
    assert 0.0 < lo < hi < 0.3
    empty, _ = stretch_rgba(refl, np.zeros((10, 10), bool))
    assert not empty.any()
    # Percentiles over the "clear" left half only: the bright right half saturates.
    clear = np.zeros((10, 10), bool)
    clear[:, :5] = True
    ramp = np.broadcast_to(np.linspace(0.0, 0.5, 10, dtype=np.float32), (3, 10, 10))
    rgba, (lo, hi) = stretch_rgba(ramp, np.ones((10, 10), bool), basis=clear)
    assert hi < 0.25 and (rgba[:, 6:, :3] == 255).all()
    # A flat scene is stretched over at least 0.1 reflectance, not over its noise.
    flat = 0.15 + np.random.default_rng(0).normal(0, 0.002, (3, 10, 10)).astype(np.float32)
    rgba, (lo, hi) = stretch_rgba(flat, np.ones((10, 10), bool))
    assert hi - lo == pytest.approx(0.1) and rgba[..., :3].max() < 80


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(4))))
def test_png_bytes_decode_to_the_same_pixels_with_gdal(rgba):
    with MemoryFile(png_bytes(rgba)) as mem, mem.open() as png:
        assert (png.driver, png.count, png.width, png.height) == (
            "PNG", 4, rgba.shape[1], rgba.shape[0])
        assert np.array_equal(np.moveaxis(png.read(), 0, -1), rgba)


def test_a_big_scene_is_read_decimated_not_whole(tmp_path):
    """2400 px bands (11.5 MB each, 34.5 MB for RGB): the quicklook's peak stays below a third
    of one band (decoded chunks and the 120 px result); reading a band whole would not."""
    size, chunk = 2400, 600
    manager = ArrayStoreManager(["B02", "B03", "B04"], tmp_path, size=size, chunk=chunk)
    manager.download_and_store("big")
    one_band = size * size * 2

    tracemalloc.start()
    look = render_quicklook(open_store(tmp_path), "big", max_size=120)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert look.step == 20 and look.rgba.shape == (120, 120, 4)
    assert peak < one_band / 3, f"peak {peak / 1e6:.1f} MB; one band is {one_band / 1e6:.1f} MB"
    # The picture is the stretched decimated pixels: the red channel orders like B04's DNs.
    red = expected_band("B04", size)[::20, ::20].astype(float)
    channel = look.rgba[..., 0].astype(float)
    assert np.corrcoef(red.ravel(), channel.ravel())[0, 1] > 0.95


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_cli_quicklook_of_a_world_scene(world, tmp_path):
    store = tmp_path / "store"
    manager = StacStoreManager(["B02", "B03", "B04", "SCL"], store, stac_url=world.stac_url)
    item = world.items[1]  # a scene with nodata at its swath edge, and clouds
    manager.download_and_store(item)
    ident = manager.identifier(item)
    out = tmp_path / "look.png"

    proc = run("quicklook", "--store", str(store), ident, "--out", str(out), check=True)

    assert "120 x 120 px" in proc.stdout and "nodata transparent" in proc.stdout
    with rasterio.open(out) as png:
        assert (png.driver, png.count, png.dtypes[0]) == ("PNG", 4, "uint8")
        rgba = png.read()
    b02 = zarr.open_array(scene_path(store, ident) / "B02", mode="r")[...]
    assert (b02 == 0).sum() > 0 and ((rgba[3] == 0) == (b02 == 0)).all(), "transparent at nodata"
    assert rgba[:3, rgba[3] > 0].std() > 10, "a stretched picture, not a flat one"
    scl = manager.open(ident)["SCL"].values  # SCL on the 10 m grid
    cloud, ground = np.isin(scl, (8, 9, 10)), np.isin(scl, (4, 5))
    assert cloud.any() and ground.any()
    # Stretched for the ground: clouds come out bright, the ground in the lower mid tones.
    assert rgba[:3, cloud].mean() > 150 and 20 < rgba[:3, ground].mean() < 120
    assert not list(tmp_path.glob("*.aux.xml")), "no GDAL sidecar next to the PNG"


def test_quicklook_needs_the_rgb_bands(world, tmp_path):
    store = tmp_path / "store"
    manager = StacStoreManager(["B02"], store, stac_url=world.stac_url)
    manager.download_and_store(world.items[0])
    with pytest.raises(IncompleteSceneError, match=r"lacks bands \['B04', 'B03'\]"):
        render_quicklook(open_store(store), manager.identifier(world.items[0]))
