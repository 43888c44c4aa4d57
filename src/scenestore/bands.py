"""Canonical Sentinel-2 L2A band names and their native properties (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scenestore.errors import InvalidRequestError


@dataclass(frozen=True)
class BandSpec:
    """What scenestore knows of one canonical Sentinel-2 L2A band.

    Attributes:
        name: Canonical band name, e.g. ``"B04"``.
        resolution: Native ground sampling distance in metres (10, 20 or 60).
        dtype: Stored numpy dtype name.
        nodata: Fill value marking "no data" in the source and in the store.
        common_name: STAC ``eo:bands`` common name, if the band has one.
        is_reflectance: Whether the band holds surface reflectance digital numbers.
    """

    name: str
    resolution: int
    dtype: str
    nodata: int
    common_name: str | None
    is_reflectance: bool = True


BAND_SPECS: dict[str, BandSpec] = {
    spec.name: spec
    for spec in (
        BandSpec("B01", 60, "uint16", 0, "coastal"),
        BandSpec("B02", 10, "uint16", 0, "blue"),
        BandSpec("B03", 10, "uint16", 0, "green"),
        BandSpec("B04", 10, "uint16", 0, "red"),
        BandSpec("B05", 20, "uint16", 0, "rededge"),
        BandSpec("B06", 20, "uint16", 0, "rededge"),
        BandSpec("B07", 20, "uint16", 0, "rededge"),
        BandSpec("B08", 10, "uint16", 0, "nir"),
        BandSpec("B8A", 20, "uint16", 0, "nir08"),
        BandSpec("B09", 60, "uint16", 0, "nir09"),
        BandSpec("B11", 20, "uint16", 0, "swir16"),
        BandSpec("B12", 20, "uint16", 0, "swir22"),
        BandSpec("SCL", 20, "uint8", 0, None, is_reflectance=False),
    )
}

#: All canonical band names in Sentinel-2 order.
ALL_BANDS: tuple[str, ...] = tuple(BAND_SPECS)


def normalize_bands(bands: Iterable[str] | str) -> list[str]:
    """Validate band names and return them canonical, de-duplicated, in Sentinel-2 order.

    Accepts a list of names or one comma-separated string; names are case-insensitive
    (``"b8a"`` becomes ``"B8A"``).

    Args:
        bands: Band names, e.g. ``["B04", "b03"]`` or ``"B04,B03"``.

    Returns:
        The canonical names in the order of :data:`ALL_BANDS`.

    Raises:
        InvalidRequestError: If the list is empty or names an unknown band.
    """
    if isinstance(bands, str):
        bands = [b for b in bands.split(",")]
    names = [str(b).strip().upper() for b in bands]
    names = [n for n in names if n]
    if not names:
        raise InvalidRequestError(
            f"Empty band list {list(bands)!r}; expected at least one of {', '.join(ALL_BANDS)}."
        )
    unknown = [n for n in names if n not in BAND_SPECS]
    if unknown:
        raise InvalidRequestError(
            f"Unknown band {unknown[0]!r}; expected one of {', '.join(ALL_BANDS)}."
        )
    wanted = set(names)
    return [b for b in ALL_BANDS if b in wanted]
