"""The scene's 10 m grid, and how each band's native grid nests in it (pure planning).

Sentinel-2 tiles put their 20 m and 60 m bands on grids that share the 10 m grid's origin, so
nearest resampling onto 10 m is an exact 2x or 6x repetition of native pixels. Reading those
bands at native resolution and repeating them gives the same pixels as GDAL's nearest warp
at a fraction of the cost; any band whose grid does not nest is warped as before.
"""

from __future__ import annotations

from typing import Any

import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from scenestore.errors import ItemError

#: Pixel size of the scene grid in metres (20 m and 60 m bands nest in it).
RESOLUTION = 10

#: Factor key of bands that must be warped onto the 10 m grid by GDAL.
WARP = 1


def scene_geobox(item: dict[str, Any], asset_keys: list[str], epsg: int) -> GeoBox:
    """Return the scene's 10 m grid from the footprint of its assets' ``proj:`` fields.

    The footprint is taken from every asset that has ``proj:shape``/``proj:transform``
    (odc-stac does the same), so requesting a 20 m band alone still yields the scene's full
    10 m grid.

    Raises:
        ItemError: If no asset has grid fields.
    """
    footprints = []
    for asset in item.get("assets", {}).values():
        shape_, transform = asset.get("proj:shape"), asset.get("proj:transform")
        if not shape_ or not transform:
            continue
        a = Affine(*transform[:6])
        footprints.append((a.c, a.f + shape_[0] * a.e, a.c + shape_[1] * a.a, a.f))
    if not footprints:
        props = item.get("properties", {})
        if props.get("proj:shape") and props.get("proj:transform"):
            a, shape_ = Affine(*props["proj:transform"][:6]), props["proj:shape"]
            footprints.append((a.c, a.f + shape_[0] * a.e, a.c + shape_[1] * a.a, a.f))
    if not footprints:
        raise ItemError(
            f"Item {item.get('id')!r} has no proj:shape/proj:transform on assets {asset_keys}; "
            "expected the projection extension's grid fields."
        )
    left = min(f[0] for f in footprints)
    bottom = min(f[1] for f in footprints)
    right = max(f[2] for f in footprints)
    top = max(f[3] for f in footprints)
    width = round((right - left) / RESOLUTION)
    height = round((top - bottom) / RESOLUTION)
    return GeoBox((height, width), Affine(RESOLUTION, 0, left, 0, -RESOLUTION, top), f"EPSG:{epsg}")


def nest_factor(asset: dict[str, Any], geobox: GeoBox, chunk: int) -> int:
    """Return how many 10 m pixels one native pixel of the asset spans, if its grid nests.

    Returns:
        2 or 6 (or any integer > 1) when the asset's grid has the 10 m grid's origin, a pixel
        size that is that many times 10 m, exactly covers the grid, and the factor divides the
        chunk edge; otherwise :data:`WARP` (1), meaning "warp onto the 10 m grid".
    """
    shape, transform = asset.get("proj:shape"), asset.get("proj:transform")
    if not shape or not transform:
        return WARP
    a = Affine(*transform[:6])
    g = geobox.affine
    factor = round(a.a / RESOLUTION)
    if (
        factor <= 1
        or a.a != factor * RESOLUTION
        or a.e != -factor * RESOLUTION
        or a.b != 0
        or a.d != 0
        or (a.c, a.f) != (g.c, g.f)
        or tuple(shape) != (geobox.shape[0] // factor, geobox.shape[1] // factor)
        or geobox.shape[0] % factor
        or geobox.shape[1] % factor
        or chunk % factor
    ):
        return WARP
    return factor


def plan_reads(
    item: dict[str, Any], keys: dict[str, str], geobox: GeoBox, chunk: int
) -> dict[int, dict[str, str]]:
    """Group bands by nesting factor: ``{1: {band: key}, 2: {...}, 6: {...}}``."""
    plan: dict[int, dict[str, str]] = {}
    for band, key in keys.items():
        factor = nest_factor(item["assets"][key], geobox, chunk)
        plan.setdefault(factor, {})[band] = key
    return plan


def coarsen(geobox: GeoBox, factor: int) -> GeoBox:
    """Return the grid with the same origin and footprint and ``factor`` times larger pixels."""
    g = geobox.affine
    return GeoBox(
        (geobox.shape[0] // factor, geobox.shape[1] // factor),
        Affine(g.a * factor, 0, g.c, 0, g.e * factor, g.f),
        geobox.crs,
    )


def upsample(ds: xr.Dataset, factor: int, geobox: GeoBox, *, rows: int | None = None) -> xr.Dataset:
    """Repeat each native pixel ``factor`` x ``factor`` times onto the 10 m ``geobox`` (lazy).

    Each native block becomes one 10 m block ``factor`` times its size
    (:func:`scenestore.store.native.upsample_array`), so native blocks of ``chunk // factor``
    pixels give 10 m blocks of exactly ``chunk`` pixels, aligned with the stored chunks.

    Args:
        ds: Bands on the native grid, dask-backed.
        factor: 10 m pixels per native pixel along each axis.
        geobox: The 10 m grid.
        rows: Cut the native blocks into blocks of this many rows first (views, no copy), so
            a tall native read yields several 10 m strips, each one chunk row high.
    """
    from scenestore.store.native import upsample_array

    coords = xr_coords(geobox, crs_coord_name="spatial_ref")
    out = {}
    for name, var in ds.data_vars.items():
        src = var.data
        if rows is not None:
            src = src.rechunk({src.ndim - 2: rows})
        out[name] = xr.DataArray(upsample_array(src, factor), dims=var.dims, attrs=var.attrs)
    return xr.Dataset(out, coords=coords, attrs=ds.attrs)
