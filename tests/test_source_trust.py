"""What is committed is what the source holds: COG headers against items, antimeridian AOIs."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely.geometry
from hypothesis import given
from hypothesis import strategies as st
from rasterio.enums import Resampling

from scenestore.aoi import bbox_geometry, parse_bbox, parse_geojson
from scenestore.errors import InvalidRequestError
from scenestore.search import build_query, search_scenes
from scenestore.sourcecheck import GridHeader, expected_header, header_mismatch

ENV = {**os.environ, "COLUMNS": "2000"}  # no wrapping: the message is one line


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scenestore.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )


# -- the pure comparison ----------------------------------------------------------------------

ITEM = GridHeader((60, 60), (20.0, 0.0, 500000.0, 0.0, -20.0, 4000000.0), 32633, "uint16")


def test_an_agreeing_header_is_no_mismatch():
    assert header_mismatch(ITEM, ITEM) is None
    # Unknown fields (an item without proj:shape) are not compared.
    assert header_mismatch(GridHeader(None, None, 32633, None), ITEM) is None


@given(
    rows=st.integers(1, 20000),
    cols=st.integers(1, 20000),
    epsg=st.sampled_from([32601, 32633, 32660, 32701, 32733, 32760]),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "float32"]),
)
def test_each_disagreement_is_named_with_both_values(rows, cols, epsg, dtype):
    cog = GridHeader((rows, cols), ITEM.transform, epsg, dtype)
    problem = header_mismatch(ITEM, cog)
    if (rows, cols) != ITEM.shape:
        assert problem == f"size 60x60 (rows x cols) in the item but {rows}x{cols} in the COG"
    elif epsg != ITEM.epsg:
        assert problem == f"CRS EPSG:32633 in the item but EPSG:{epsg} in the COG"
    elif dtype != ITEM.dtype:
        assert problem == f"data type uint16 in the item but {dtype} in the COG"
    else:
        assert problem is None


@given(shift=st.floats(-1e4, 1e4, allow_nan=False))
def test_a_shifted_transform_is_a_mismatch_beyond_the_tolerance(shift):
    t = list(ITEM.transform)
    t[2] += shift
    problem = header_mismatch(ITEM, GridHeader(ITEM.shape, tuple(t), ITEM.epsg, ITEM.dtype))
    assert (problem is None) == (abs(shift) <= 1e-3)


def test_expected_header_reads_the_item_fields():
    asset = {
        "proj:shape": [60, 60],
        "proj:transform": [20, 0, 500000, 0, -20, 4000000, 0, 0, 1],
        "raster:bands": [{"data_type": "uint16"}],
    }
    assert expected_header(asset, 32633, "uint8") == ITEM
    assert expected_header({}, 32633, "uint8") == GridHeader(None, None, 32633, "uint8")


# -- COGs that disagree with their items, end to end through the CLI --------------------------


@pytest.fixture(scope="module")
def own_world(tmp_path_factory):
    """A one-scene world of its own: its COGs are rewritten by the tests below."""
    from scenestore_world import OfflineWorld

    with OfflineWorld(tmp_path_factory.mktemp("trust"), scenes=1, size="tiny", seed=5) as w:
        yield w


@contextlib.contextmanager
def rewritten(world, band: str, how: str) -> Iterator[Path]:
    """Rewrite one band's COG so it disagrees with its item; put the original back after."""
    path = Path(world.manifest.data_dir) / world.items[0].id / f"{band}.tif"
    original = path.read_bytes()
    with rasterio.open(path) as src:
        profile, data = src.profile.copy(), src.read()
    profile.update(driver="GTiff", tiled=True, blockxsize=16, blockysize=16)
    profile.pop("compress", None)
    if how == "size":
        h, w = data.shape[1] // 2, data.shape[2] // 2
        with rasterio.open(path) as src:
            data = src.read(out_shape=(data.shape[0], h, w), resampling=Resampling.nearest)
        profile.update(height=h, width=w, transform=src.transform * src.transform.scale(2, 2))
    elif how == "crs":
        profile.update(crs=f"EPSG:{world.manifest.scenes[0].epsg + 1}")  # the next UTM zone
    elif how == "empty":  # the header agrees; every pixel is nodata
        data = np.zeros_like(data)
    elif how == "dtype":
        profile.update(dtype="float32")
        data = data.astype(np.float32)
    try:
        path.unlink()
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        yield path
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize(
    ("how", "values"),
    [
        ("size", ("120x120", "60x60")),
        ("crs", None),
        ("dtype", ("uint16", "float32")),
        ("empty", ("entirely nodata", "footprint covers")),
    ],
)
def test_a_cog_that_disagrees_with_its_item_is_refused_and_nothing_committed(
    own_world, tmp_path, how, values
):
    from scenestore.stac import StacStoreManager

    item = own_world.items[0]
    epsg = own_world.manifest.scenes[0].epsg
    values = values or (f"EPSG:{epsg}", f"EPSG:{epsg + 1}")
    store = tmp_path / "store"
    w, s, e, n = item.bbox
    with rewritten(own_world, "B04", how):
        proc = run(
            "ingest",
            "--store",
            str(store),
            "--stac-url",
            own_world.stac_url,
            "--bbox",
            f"{w},{s},{e},{n}",
            "--start",
            "2024-01-01",
            "--end",
            "2025-12-31",
            "--bands",
            "B02,B04",
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "B04.tif" in ln]
    assert len(lines) == 1, proc.stdout + proc.stderr
    line = lines[0]
    assert f"{own_world.data_url}/{item.id}/B04.tif" in line and item.id in line, line
    assert all(v in line for v in values), line
    manager = StacStoreManager(["B02", "B04"], store, stac_url=own_world.stac_url)
    missing = manager.missing_bands(f"es-l2a_{item.id}")
    # A header is checked before any band is read; an empty band is refused as it is written.
    assert "B04" in missing and (how == "empty" or missing == ["B02", "B04"]), missing
    if store.exists():
        verify = run("verify", "--store", str(store))
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_agreeing_world_still_ingests_with_one_header_read_per_asset(own_world, tmp_path):
    from scenestore.stac import StacStoreManager

    item = own_world.items[0]
    own_world.http.reset_stats()
    manager = StacStoreManager(["B04", "B11"], tmp_path / "store", stac_url=own_world.stac_url)
    manager.ingest(item.id)
    assert manager.missing_bands(f"es-l2a_{item.id}") == []
    # The header read of the check is the one odc-stac's open is served from GDAL's cache:
    # each COG is opened (HEAD) and its header fetched (Range from byte 0) once, not twice.
    for band in ("B04", "B11"):
        path = f"{item.id}/{band}.tif"
        records = [r for r in own_world.http.requests() if r.path == path]
        assert sum(r.method == "HEAD" for r in records) == 1, records
        assert sum((r.range or "").startswith("bytes=0-") for r in records) == 1, records


# -- antimeridian and NaN bboxes ---------------------------------------------------------------


def test_nan_in_a_bbox_has_its_own_message():
    with pytest.raises(InvalidRequestError) as err:
        parse_bbox("nan,1,2,3")
    assert str(err.value) == "bbox value 'nan' is not a number; expected W,S,E,N in degrees."


@given(
    w=st.floats(0.5, 179.5),
    e=st.floats(-179.5, -0.5),
    s=st.floats(-80, 0),
    height=st.floats(0.1, 10),
)
def test_a_bbox_with_w_above_e_crosses_the_antimeridian(w, e, s, height):
    n = s + height
    assert parse_bbox((w, s, e, n)) == (w, s, e, n)
    geom = bbox_geometry((w, s, e, n))
    assert geom.geom_type == "MultiPolygon"
    # The two halves together are the narrow strip across 180, not the band the other way.
    assert math.isclose(geom.area, ((180 - w) + (e + 180)) * height, rel_tol=1e-9)
    assert not geom.contains(parse_geojson({"type": "Point", "coordinates": [0.0, s + height / 2]}))


@given(w=st.floats(150, 179), e=st.floats(-179, -150))
def test_a_naive_polygon_across_the_antimeridian_is_split(w, e):
    ring = [[w, -10], [e, -10], [e, 10], [w, 10], [w, -10]]
    geom = parse_geojson({"type": "Polygon", "coordinates": [ring]})
    split = bbox_geometry((w, -10, e, 10))
    assert geom.symmetric_difference(split).area < 1e-6
    # An already split MultiPolygon is taken as it is.
    again = parse_geojson(
        {
            "type": "MultiPolygon",
            "coordinates": [
                [[[w, -10], [180, -10], [180, 10], [w, 10], [w, -10]]],
                [[[-180, -10], [e, -10], [e, 10], [-180, 10], [-180, -10]]],
            ],
        }
    )
    assert again.symmetric_difference(split).area < 1e-6


@pytest.mark.parametrize("box", [(-180, -80, 180, 80), (-180, -90, 180, 90), (-180, 0, 10, 10)])
def test_a_polygon_with_an_edge_along_the_antimeridian_is_not_split(box):
    """A whole-world box goes all the way round; its +180 -> -180 edge is no crossing."""
    geom = parse_geojson(shapely.geometry.mapping(shapely.geometry.box(*box)))
    assert geom.symmetric_difference(shapely.geometry.box(*box)).area < 1e-6


def test_an_antimeridian_aoi_finds_no_scene_of_the_band_between(world):
    """170E..170W: the world's scenes lie between, where a naive 340-degree band would reach."""
    lon = world.items[0].bbox[0]
    assert -170 < lon < 170  # so the naive reading would have returned it
    ring = [[170, -60], [-170, -60], [-170, 60], [170, 60], [170, -60]]
    for area in ({"aoi": {"type": "Polygon", "coordinates": [ring]}}, {"bbox": "170,-60,-170,60"}):
        query = build_query(start="2024-01-01", end="2025-12-31", **area)
        assert search_scenes(query, stac_url=world.stac_url) == []
