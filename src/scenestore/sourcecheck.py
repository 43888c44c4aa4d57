"""Does a source COG's header agree with what its STAC item says? (pure comparison).

An item's ``proj:shape``/``proj:transform``/``proj:epsg`` and ``raster:bands`` data type
describe its assets; odc-stac trusts them and warps whatever the COG holds onto that grid, so
a COG of another size or CRS would be committed as (mostly) nodata. The header is compared
before any band is committed; :mod:`scenestore.stac` does the (header-only) read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Transform terms may differ by this much (metres) and still mean the same grid: items
#: round their transforms, GDAL writes doubles.
TRANSFORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class GridHeader:
    """The grid a raster is on, as an item describes it or as a COG header holds it.

    Attributes:
        shape: (rows, cols), or None if not known.
        transform: The six affine terms (a, b, c, d, e, f), or None if not known.
        epsg: The CRS's EPSG code, or None if not known / not an EPSG CRS.
        dtype: The numpy data type name, e.g. ``"uint16"``, or None if not known.
    """

    shape: tuple[int, int] | None
    transform: tuple[float, ...] | None
    epsg: int | None
    dtype: str | None


def expected_header(
    asset: Mapping[str, Any], epsg: int | None, dtype: str | None
) -> GridHeader:
    """What the item says one asset's COG holds.

    Args:
        asset: The asset's dict (``proj:shape``, ``proj:transform``, ``raster:bands``).
        epsg: The scene's EPSG code (from ``proj:epsg``/``proj:code``), or None if unknown.
        dtype: The data type to expect when the asset has no ``raster:bands`` data type.
    """
    shape = asset.get("proj:shape")
    transform = asset.get("proj:transform")
    bands = asset.get("raster:bands") or [{}]
    data_type = bands[0].get("data_type") if isinstance(bands[0], Mapping) else None
    return GridHeader(
        shape=(int(shape[0]), int(shape[1])) if shape and len(shape) >= 2 else None,
        transform=tuple(float(v) for v in transform[:6]) if transform else None,
        epsg=epsg,
        dtype=data_type or dtype,
    )


def header_mismatch(expected: GridHeader, actual: GridHeader) -> str | None:
    """Describe the first way the COG's header disagrees with the item, or None if it agrees.

    A field either side leaves unknown (None) is not compared. Size, CRS and data type must be
    equal; transforms may differ by :data:`TRANSFORM_TOLERANCE`.

    Returns:
        e.g. ``"size 40x40 (rows x cols) in the item but 20x20 in the COG"``, or None.
    """
    if expected.shape and actual.shape and tuple(expected.shape) != tuple(actual.shape):
        return (
            f"size {_shape(expected.shape)} (rows x cols) in the item but "
            f"{_shape(actual.shape)} in the COG"
        )
    if expected.epsg is not None and actual.epsg is not None and expected.epsg != actual.epsg:
        return f"CRS EPSG:{expected.epsg} in the item but EPSG:{actual.epsg} in the COG"
    if actual.epsg is None and expected.epsg is not None and actual.shape is not None:
        # A COG whose CRS is not an EPSG code cannot be the item's UTM zone.
        return f"CRS EPSG:{expected.epsg} in the item but a non-EPSG CRS in the COG"
    if (
        expected.transform
        and actual.transform
        and not _same_transform(expected.transform, actual.transform)
    ):
        return (
            f"transform {_terms(expected.transform)} in the item but "
            f"{_terms(actual.transform)} in the COG"
        )
    if expected.dtype and actual.dtype and expected.dtype != actual.dtype:
        return f"data type {expected.dtype} in the item but {actual.dtype} in the COG"
    return None


def _same_transform(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) <= TRANSFORM_TOLERANCE for x, y in zip(a[:6], b[:6], strict=True))


def _shape(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _terms(transform: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in transform[:6]) + ")"
