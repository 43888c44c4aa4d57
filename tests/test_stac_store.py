"""The STAC store manager against the offline world: real STAC API, real HTTP Range reads."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import rasterio
import xarray as xr

from scenestore import (
    ALL_BANDS,
    IncompleteSceneError,
    ItemError,
    SceneNotFoundError,
    StacStoreManager,
    build_query,
    search_scenes,
)
from scenestore.bands import BAND_SPECS


def band_gets(http) -> Counter:
    """Number of GET/HEAD requests the COG server answered per band file."""
    counts: Counter = Counter()
    for path, stat in http.stats().items():
        if path.endswith(".tif"):
            counts[path.rsplit("/", 1)[-1][:-4]] += stat.requests
    return counts


def world_query(world, **kwargs):
    lons = [c for it in world.items for c in (it.bbox[0], it.bbox[2])]
    lats = [c for it in world.items for c in (it.bbox[1], it.bbox[3])]
    bbox = (min(lons) - 0.01, min(lats) - 0.01, max(lons) + 0.01, max(lats) + 0.01)
    return build_query(start="2024-01-01", end="2025-12-31", bbox=bbox, **kwargs)


def test_search_returns_every_scene_sorted_and_across_pages(world):
    found = search_scenes(world_query(world), stac_url=world.stac_url, page_size=1)
    assert sorted(i.id for i in found) == sorted(i.id for i in world.items)
    times = [i.properties["datetime"] for i in found]
    assert times == sorted(times)


def test_search_filters_cloud_cover_and_tiles(world):
    clouds = sorted(i.properties["eo:cloud_cover"] for i in world.items)
    limit = clouds[len(clouds) // 2]
    found = search_scenes(world_query(world, max_cloud=limit), stac_url=world.stac_url)
    assert found and all(i.properties["eo:cloud_cover"] <= limit for i in found)
    assert len(found) == sum(c <= limit for c in clouds)
    tile = world.items[0].properties["grid:code"][5:]
    found = search_scenes(world_query(world, tiles=[tile]), stac_url=world.stac_url)
    assert found and {i.properties["grid:code"] for i in found} == {f"MGRS-{tile}"}


def test_bands_are_fetched_incrementally_and_counted_at_the_server(world, http, tmp_path):
    item = world.items[0]
    four = ["B02", "B03", "B04", "B08"]
    StacStoreManager(four, tmp_path, stac_url=world.stac_url).download_and_store(item)
    assert set(band_gets(http)) == set(four)
    http.reset_stats()
    manager = StacStoreManager(list(ALL_BANDS), tmp_path, stac_url=world.stac_url)
    assert manager.missing_bands(manager.identifier(item)) == [
        b for b in ALL_BANDS if b not in four
    ]
    ds = manager.load(item)
    fetched = band_gets(http)
    assert set(fetched) == set(ALL_BANDS) - set(four), "only the 9 missing bands are fetched"
    assert len(fetched) == 9
    assert sorted(ds.data_vars) == sorted(ALL_BANDS)
    http.reset_stats()
    manager.load(item)
    assert band_gets(http) == Counter(), "a complete scene is opened without any request"


def test_stored_scene_matches_the_item_grid_and_the_cog_pixels(world, tmp_path):
    item = world.items[1]
    manager = StacStoreManager(["B04", "B11", "SCL"], tmp_path, stac_url=world.stac_url)
    ds = manager.load(item)
    red = item.assets["red"]
    height, width = red.extra_fields["proj:shape"]
    a = red.extra_fields["proj:transform"]
    assert ds.sizes == {"y": height, "x": width}
    assert float(ds.x[0]) == a[2] + 5 and float(ds.y[0]) == a[5] - 5, (
        "pixel centres on the 10 m grid"
    )
    assert ds.spatial_ref.attrs["crs_wkt"] and "spatial_ref" in ds.coords
    assert f"EPSG:{ds.odc.crs.epsg}" == item.properties["proj:code"]  # pystac moves proj:epsg here
    assert ds["B04"].dtype == np.uint16 and ds["SCL"].dtype == np.uint8
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(red.href) as src:
        np.testing.assert_array_equal(ds["B04"].values, src.read(1))
    with (
        rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"),
        rasterio.open(item.assets["swir16"].href) as src,
    ):  # 20 m: nearest onto 10 m
        np.testing.assert_array_equal(
            ds["B11"].values, np.repeat(np.repeat(src.read(1), 2, 0), 2, 1)
        )
    assert ds.attrs["eo:cloud_cover"] == item.properties["eo:cloud_cover"]
    assert ds.attrs["stac_id"] == item.id
    json.dumps(ds.attrs)  # JSON-safe
    meta = json.loads(
        (tmp_path / f"{manager.identifier(item)}.zarr" / "B04" / "zarr.json").read_text()
    )
    blosc = [c for c in meta["codecs"] if c["name"] == "blosc"][0]
    assert blosc["configuration"]["cname"] == "zstd" and meta["fill_value"] == 0


def test_four_usage_patterns(world, http, tmp_path):
    item = world.items[2]
    bands = ["B02", "SCL"]
    manager = StacStoreManager(bands, tmp_path, stac_url=world.stac_url)
    ident = manager.identifier(item)
    assert ident == f"es-l2a_{item.id}"
    # 3. download only
    assert manager.download_and_store(item) is None and manager.complete(ident)
    # 1. normal: complete, so no request
    http.reset_stats()
    normal = manager.load(item)
    assert band_gets(http) == Counter()
    # 2. forced: every band fetched again
    forced = manager.load(item, force=True)
    assert set(band_gets(http)) == set(bands)
    xr.testing.assert_identical(normal.load(), forced.load())
    # 4. offline: from the store only, even with an unreachable STAC API
    http.reset_stats()
    offline = StacStoreManager(bands, tmp_path, stac_url="http://127.0.0.1:9/nothing")
    ds = offline.open(item.id)
    assert ds["B02"].chunks is not None
    xr.testing.assert_identical(ds.load(), normal.load())
    assert band_gets(http) == Counter()


def test_scene_by_id_is_fetched_from_the_api(world, tmp_path):
    item = world.items[3]
    manager = StacStoreManager(["B05"], tmp_path, stac_url=world.stac_url)
    manager.download_and_store(item.id)
    assert manager.identifier(item.id) == manager.identifier(item)
    assert manager.complete(manager.identifier(item.id))
    with pytest.raises(SceneNotFoundError, match="'S2A_00XXX_20990101_0_L2A' is not in collection"):
        manager.download_and_store("S2A_00XXX_20990101_0_L2A")


def test_offline_open_of_missing_and_incomplete_scene(world, tmp_path):
    item = world.items[0]
    StacStoreManager(["B02"], tmp_path, stac_url=world.stac_url).download_and_store(item)
    with pytest.raises(IncompleteSceneError, match=r"lacks bands \['B03'\]"):
        StacStoreManager(["B02", "B03"], tmp_path).open(item)
    with pytest.raises(SceneNotFoundError, match="not in the store"):
        StacStoreManager(["B02"], tmp_path).open(world.items[1])


def test_item_without_the_asset_of_a_band(world, tmp_path):
    item = world.items[0].clone()
    del item.assets["nir08"]
    with pytest.raises(ItemError, match=r"has no asset 'nir08' for band B8A"):
        StacStoreManager(["B8A"], tmp_path, stac_url=world.stac_url).download_and_store(item)
    assert not any(tmp_path.glob("*.zarr"))


def test_item_in_a_non_utm_crs_is_rejected(world, tmp_path):
    item = world.items[0].clone()
    item.properties["proj:code"] = "EPSG:4326"
    with pytest.raises(ItemError, match="EPSG:4326; expected a WGS 84 UTM zone"):
        StacStoreManager(["B02"], tmp_path, stac_url=world.stac_url).download_and_store(item)


@pytest.mark.parametrize("band", ["B01", "B8A", "SCL"])
def test_every_resolution_lands_on_the_10m_grid(world, tmp_path, band):
    item = world.items[0]
    ds = StacStoreManager([band], tmp_path, stac_url=world.stac_url).load(item)
    assert ds.sizes == dict(
        zip(("y", "x"), item.assets["red"].extra_fields["proj:shape"], strict=True)
    )
    assert ds[band].dtype == np.dtype(BAND_SPECS[band].dtype)
    assert int(ds[band].max()) > 0


def test_native_repeat_and_gdal_warp_give_the_same_pixels(world, tmp_path):
    """60 m bands nest in the 10 m grid and are repeated; with a chunk edge that 6 does not
    divide they are warped by GDAL instead. Both must be exactly nearest resampling."""
    item = world.items[0]
    nested = StacStoreManager(["B01", "B05"], tmp_path / "a", stac_url=world.stac_url).load(item)
    warped = StacStoreManager(
        ["B01", "B05"], tmp_path / "b", stac_url=world.stac_url, chunk_size=50
    ).load(item)
    assert warped["B01"].encoding["chunks"] == (50, 50)
    xr.testing.assert_identical(nested.load(), warped.load())


@pytest.mark.parametrize("chunk", [24, 60])
def test_native_reads_cut_into_several_strips_give_the_same_pixels(world, tmp_path, chunk):
    """With stored chunks smaller than the scene, a 20 m or 60 m band is read in native
    strips as tall as several stored strips and cut before repeating; the pixels must be
    exactly those of a GDAL warp (chunk 50, which 6 does not divide) and on chunks of
    ``chunk`` px."""
    item = world.items[0]
    bands = ["B01", "B05", "B02"]
    manager = StacStoreManager(bands, tmp_path / "a", stac_url=world.stac_url, chunk_size=chunk)
    lazy = manager.download_scene_from_source(item, bands)
    assert lazy["B05"].data.numblocks[0] > 1, "several strips"
    stored = manager.load(item)
    warped = StacStoreManager(
        bands, tmp_path / "b", stac_url=world.stac_url, chunk_size=50
    ).load(item)
    assert stored["B05"].encoding["chunks"] == (chunk, chunk)
    xr.testing.assert_identical(stored.load(), warped.load())


def test_parallel_ingest_of_several_scenes_keeps_order_and_isolates_failures(world, tmp_path):
    from scenestore.ingest import ingest_items

    broken = world.items[1].clone()
    del broken.assets["red"]
    items = [world.items[0], broken, world.items[2], world.items[3]]
    results = ingest_items(
        StacStoreManager(["B04"], tmp_path, stac_url=world.stac_url), items, max_workers=2
    )
    assert [r.identifier for r in results] == [f"es-l2a_{i.id}" for i in items]
    assert [bool(r.error) for r in results] == [False, True, False, False]
    assert "has no asset 'red' for band B04" in results[1].error
    assert all(r.fetched == ("B04",) for r in results if not r.error)
