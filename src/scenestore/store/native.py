"""Bands on native grids nested in the scene grid: recognising them, recording them, upsampling.

Layout 2 (:data:`LAYOUT_VERSION`) keeps a band whose pixels are ``f`` times the scene grid's
(Sentinel-2's 20 m and 60 m bands beside the 10 m grid) on its own grid: dimensions
``y_<res>``/``x_<res>`` with their own coordinate arrays in the scene group, the same origin as
the scene grid and ``f`` x ``f`` scene pixels per native pixel. Each such band records its grid
in its array attributes (:data:`GRID_ATTR`); the scene group records the layout version
(:data:`LAYOUT_ATTR`). Scenes without it (layout 1, release 0.1 and the releases before this
one) hold every band on the scene grid.

Opening on the scene grid repeats each native pixel ``f`` x ``f`` times, lazily and block by
block, which is exactly nearest resampling: the Dataset is the one layout 1 stores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from scenestore.errors import CoordinateMismatchError
from scenestore.store.layout import FOOTPRINT_ATTR

if TYPE_CHECKING:  # xarray loads on first use: `ls`, `rm` and `verify` never need it
    import xarray as xr

#: Group attribute holding the scene's layout version (absent: layout 1, every band on x/y).
LAYOUT_ATTR = "scenestore_layout"
#: This release's layout: bands may sit on native grids nested in the scene grid.
LAYOUT_VERSION = 2
#: Array attribute of a band on a native grid: ``{"dims": [ydim, xdim], "factor": f,
#: "resolution": pixel size}``. A band without it lies on the scene grid (``y``/``x``).
GRID_ATTR = "scenestore_grid"
#: Dimensions of the scene grid.
BASE_DIMS = ("y", "x")


def grid_dims(resolution: float) -> tuple[str, str]:
    """The dimension names of a native grid of the given pixel size, e.g. ``y_20m``/``x_20m``."""
    return f"y_{resolution:g}m", f"x_{resolution:g}m"


def band_grid(var: xr.DataArray) -> tuple[str, str]:
    """The (y, x) dimensions a band lies on."""
    return str(var.dims[-2]), str(var.dims[-1])


def nest_factor(ds: xr.Dataset, band: str, *, identifier: str) -> int:
    """How many scene pixels one pixel of the band spans along each axis (1 on the scene grid).

    Raises:
        CoordinateMismatchError: If the band lies on dimensions other than y/x whose
            coordinates do not nest exactly in the scene grid (same origin, a whole number of
            scene pixels per pixel, the same footprint), or the scene grid is not given.
    """
    ydim, xdim = band_grid(ds[band])
    if (ydim, xdim) == BASE_DIMS:
        return 1
    if any(d not in ds.coords for d in (*BASE_DIMS, ydim, xdim)):
        raise CoordinateMismatchError(
            f"Scene {identifier!r}: band {band} lies on {ydim}/{xdim} but the dataset lacks "
            "their coordinates or the scene grid's y/x; expected y/x coordinates and, for a "
            "band on a coarser grid, its own coordinates nested in y/x."
        )
    factors = set()
    for base_dim, dim in zip(BASE_DIMS, (ydim, xdim), strict=True):
        base = np.asarray(ds[base_dim].values, dtype="float64")
        native = np.asarray(ds[dim].values, dtype="float64")
        factor = base.size // native.size if native.size else 0
        if factor < 1 or native.size * factor != base.size:
            raise CoordinateMismatchError(
                f"Scene {identifier!r}: band {band} has {native.size} {dim} values, which does "
                f"not divide the scene grid's {base.size} {base_dim} values; expected a grid "
                "nested in the scene grid."
            )
        step = abs(float(base[1] - base[0])) if base.size > 1 else 1.0
        expected = nested_coords(base, factor)
        diff = float(np.max(np.abs(expected - native))) if native.size else 0.0
        if diff > step * 1e-3:
            raise CoordinateMismatchError(
                f"Scene {identifier!r}: band {band}'s {dim} coordinates are off the scene grid "
                f"nested {factor}x by up to {diff:g} (pixel size {step:g}); expected the same "
                "origin and footprint as the scene grid."
            )
        factors.add(factor)
    if len(factors) != 1:
        raise CoordinateMismatchError(
            f"Scene {identifier!r}: band {band} nests {sorted(factors)}x along y/x; expected "
            "square pixels (one factor on both axes)."
        )
    return factors.pop()


def nested_coords(base: np.ndarray[Any, Any], factor: int) -> np.ndarray[Any, Any]:
    """Pixel centres of the grid ``factor`` times coarser than ``base`` (pixel centres too)."""
    centres: np.ndarray[Any, Any] = np.asarray(base, dtype="float64").reshape(-1, factor)
    return np.asarray(centres.mean(axis=1))


def grid_record(ds: xr.Dataset, band: str, factor: int) -> dict[str, Any]:
    """The :data:`GRID_ATTR` value of a native band."""
    ydim, xdim = band_grid(ds[band])
    x = np.asarray(ds[xdim].values, dtype="float64")
    resolution = abs(float(x[1] - x[0])) if x.size > 1 else None
    return {"dims": [ydim, xdim], "factor": factor, "resolution": resolution}


def to_scene_grid(ds: xr.Dataset, bands: list[str]) -> xr.Dataset:
    """Return ``ds[bands]`` with every band on the scene grid (y/x), native ones repeated lazily.

    Each native block becomes one scene-grid block ``factor`` times its size (a native chunk of
    ``chunk // factor`` px gives blocks of ``chunk`` px, the scene grid's own chunking). The
    :data:`GRID_ATTR` of bands and the :data:`LAYOUT_ATTR` and footprint of the scene are
    dropped: the result is the Dataset a scene of layout 1 holds.
    """
    import xarray as xr

    variables: dict[str, xr.DataArray] = {}
    for band in bands:
        var = ds[band]
        attrs = {k: v for k, v in var.attrs.items() if k != GRID_ATTR}
        if band_grid(var) == BASE_DIMS:
            var = var.copy(deep=False)
            var.attrs = attrs
            variables[band] = var
            continue
        factor = ds.sizes["x"] // var.shape[-1]
        data = upsample_array(var.data, factor)
        up = xr.DataArray(data, dims=(*var.dims[:-2], *BASE_DIMS), attrs=attrs)
        # The encoding a scene-grid band would have: its chunks cover the same ground.
        up.encoding = dict(var.encoding)
        if "chunks" in var.encoding:
            up.encoding["chunks"] = tuple(int(c) * factor for c in var.encoding["chunks"])
        if "preferred_chunks" in var.encoding:
            up.encoding["preferred_chunks"] = {
                base_dim: int(var.encoding["preferred_chunks"][dim]) * factor
                for dim, base_dim in zip(band_grid(var), BASE_DIMS, strict=True)
                if dim in var.encoding["preferred_chunks"]
            }
        variables[band] = up
    return xr.Dataset(
        variables,
        coords={c: ds.coords[c] for c in ("y", "x", "spatial_ref") if c in ds.coords},
        attrs={k: v for k, v in ds.attrs.items() if k not in (LAYOUT_ATTR, FOOTPRINT_ATTR)},
    )


def upsample_array(data: Any, factor: int) -> Any:
    """Repeat each pixel ``factor`` x ``factor`` times along the last two axes (dask: lazily,
    block by block, each block ``factor`` times larger; numpy: at once)."""
    import dask.array as da

    if not isinstance(data, da.Array):
        return repeat_block(np.asarray(data), factor)
    chunks = tuple(
        tuple(c * factor for c in dim) if axis >= data.ndim - 2 else dim
        for axis, dim in enumerate(data.chunks)
    )
    # dask's typing takes the function for an array argument; it is map_blocks' func.
    return data.map_blocks(repeat_block, factor, chunks=chunks, dtype=data.dtype)  # type: ignore[arg-type]


def repeat_block(block: np.ndarray[Any, Any], factor: int) -> np.ndarray[Any, Any]:
    """One block, each pixel repeated ``factor`` times along the last two axes."""
    return block.repeat(factor, axis=-2).repeat(factor, axis=-1)


__all__ = [
    "BASE_DIMS",
    "GRID_ATTR",
    "LAYOUT_ATTR",
    "LAYOUT_VERSION",
    "band_grid",
    "grid_dims",
    "grid_record",
    "nest_factor",
    "nested_coords",
    "to_scene_grid",
    "upsample_array",
]
