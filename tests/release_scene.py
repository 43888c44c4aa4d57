"""The scene kept in ``tests/data/release-0.1.0``: one definition for its maker and its test.

``tests/data/make_release_store.py`` wrote the fixture with release 0.1.0's code from
:func:`release_dataset`; ``tests/test_old_release.py`` recomputes the same pixels with
:func:`expected_pixels` to check that today's code reads them back unchanged. Change nothing
here that alters a pixel or an attribute of the bands in :data:`BANDS`: the fixture on disk
would no longer match. Only public, stable names are used (``StacStoreManager``, odc-geo).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

#: The earth-search item the scene stands for, and its store identifier.
ITEM_ID = "S2B_33UVP_20230615_0_L2A"
IDENTIFIER = f"es-l2a_{ITEM_ID}"

#: Bands in the fixture, and the band the test adds to it.
BANDS = ["B02", "B03", "B04", "SCL"]
ADDED_BAND = "B08"

#: A 60 x 60 px corner of tile 33UVP at 10 m in UTM 33N, stored in 30 x 30 px chunks.
SIZE = 60
CHUNK = 30
EPSG = 32633
WEST, NORTH = 499980.0, 5400000.0

#: The chunk (row, column) that is all nodata, as on a tile's edge: zarr writes no file for it.
NODATA_CHUNK = (0, 0)

_SCALE, _OFFSET = 0.0001, -0.1


def _seed(band: str) -> int:
    return sum(ord(c) for c in band)


def expected_pixels(band: str) -> np.ndarray:
    """Return the stored pixels of ``band`` (uint16 digital numbers; uint8 classes for SCL)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if band == "SCL":
        pixels = ((yy // 6 + xx // 6 + _seed(band)) % 11 + 1).astype("uint8")
    else:
        pixels = ((yy * 37 + xx * 11 + _seed(band) * 101) % 9000 + 1000).astype("uint16")
    r, c = NODATA_CHUNK
    pixels[r * CHUNK : (r + 1) * CHUNK, c * CHUNK : (c + 1) * CHUNK] = 0
    return pixels


def geobox() -> GeoBox:
    """The scene's 10 m grid."""
    return GeoBox((SIZE, SIZE), Affine(10.0, 0.0, WEST, 0.0, -10.0, NORTH), f"EPSG:{EPSG}")


def _band_attrs(band: str) -> dict:
    href = (
        "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/33/U/VP/2023/6/"
        f"{ITEM_ID}/{band}.tif"
    )
    key = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "SCL": "scl"}[band]
    attrs = {
        "source": href,
        "asset_key": key,
        "nodata": 0,
        "native_resolution": 20 if band == "SCL" else 10,
        "footprint_coverage": 0.75,
    }
    if band != "SCL":
        attrs |= {"scale": _SCALE, "offset": _OFFSET, "reflectance_basis": "raster:bands"}
    return attrs


#: Scene attributes as a real earth-search ingest records them (a subset of the item's).
SCENE_ATTRS = {
    "datetime": "2023-06-15T10:06:39.024000Z",
    "platform": "sentinel-2b",
    "constellation": "sentinel-2",
    "instruments": ["msi"],
    "eo:cloud_cover": 12.5,
    "proj:epsg": EPSG,
    "mgrs:utm_zone": 33,
    "mgrs:latitude_band": "U",
    "mgrs:grid_square": "VP",
    "grid:code": "MGRS-33UVP",
    "s2:processing_baseline": "05.09",
    "s2:product_type": "S2MSI2A",
    "earthsearch:boa_offset_applied": True,
    "stac_id": ITEM_ID,
    "stac_collection": "sentinel-2-l2a",
    "scenestore_profile": "earth-search",
}


def release_dataset(bands: list[str]) -> xr.Dataset:
    """Return the bands as ``StacStoreManager.download_scene_from_source`` would shape them."""
    variables = {band: (("y", "x"), expected_pixels(band), _band_attrs(band)) for band in bands}
    return xr.Dataset(
        variables,
        coords=xr_coords(geobox(), crs_coord_name="spatial_ref"),
        attrs=dict(SCENE_ATTRS),
    )
