"""From stored digital numbers to surface reflectance: which scale and offset, and applying them.

scenestore stores the raw digital numbers (DN) each provider serves and records, per band, the
``scale`` and ``offset`` with which ``reflectance = DN * scale + offset``, so that a reader
can harmonise scenes of any provider and processing baseline without guessing.
:func:`reflectance_of` decides them (pure); :func:`harmonize` applies them.

The rules, first match wins:

1. Earth Search ``sentinel-2-l2a`` items carry ``earthsearch:boa_offset_applied``. ``true``
   means Element 84 already subtracted the offset from the DNs: offset 0, whatever
   ``raster:bands`` says (its ``-0.1`` is known to be wrong on those items; the flag is the
   truth, per Element 84). ``false`` means the DNs are as ESA made them: the baseline rule.
2. ``raster:bands`` scale/offset (STAC 1.0, Earth Search) or ``raster:scale``/``raster:offset``
   on the asset or its ``bands`` (STAC 1.1, CDSE): used as given.
3. The processing baseline (Planetary Computer has no raster metadata): from baseline 04.00
   on, L2A DNs carry ``BOA_ADD_OFFSET`` = -1000, so offset = -1000 * scale = -0.1; before
   it, 0. Scale is ``1 / BOA_QUANTIFICATION_VALUE`` = 0.0001.
4. No baseline anywhere: the sensing date, against ESA's switch to 04.00 on 2022-01-25.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import xarray as xr

from scenestore.bands import BAND_SPECS
from scenestore.errors import InvalidRequestError
from scenestore.profiles import parse_time, processing_baseline

#: L2A reflectance quantification: DN 10000 is reflectance 1.
QUANTIFICATION = 10_000
#: DN offset of L2A products from processing baseline 04.00 on.
BOA_ADD_OFFSET = -1_000
#: The first baseline with the offset.
OFFSET_BASELINE = (4, 0)
#: The day ESA started processing with baseline 04.00.
OFFSET_FROM = datetime(2022, 1, 25, tzinfo=UTC)

#: Band attribute names written to the store.
SCALE_ATTR, OFFSET_ATTR, BASIS_ATTR = "scale", "offset", "reflectance_basis"


@dataclass(frozen=True)
class Reflectance:
    """How one band's digital numbers become reflectance: ``DN * scale + offset``.

    Attributes:
        scale: Multiplier of the DN.
        offset: Added after scaling (0, or -0.1 for the -1000 DN offset).
        basis: Which rule decided, e.g. ``"raster:bands"`` or ``"processing baseline 05.11"``.
    """

    scale: float
    offset: float
    basis: str

    def attrs(self) -> dict[str, Any]:
        """The band attributes that record this."""
        return {SCALE_ATTR: self.scale, OFFSET_ATTR: self.offset, BASIS_ATTR: self.basis}


def raster_scale_offset(asset: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """Return the asset's declared scale and offset (None where not declared).

    Reads ``raster:bands[0].scale/offset`` (raster extension v1), ``raster:scale`` /
    ``raster:offset`` on the asset (raster v2, STAC 1.1) and on ``bands[0]``.
    """
    places: list[Mapping[str, Any]] = []
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and rb and isinstance(rb[0], Mapping):
        places.append({"raster:scale": rb[0].get("scale"), "raster:offset": rb[0].get("offset")})
    places.append(asset)
    bands = asset.get("bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        places.append(bands[0])
    scale = offset = None
    for where in places:
        if scale is None:
            scale = _number(where.get("raster:scale"))
        if offset is None:
            offset = _number(where.get("raster:offset"))
    return scale, offset


def reflectance_of(item: Mapping[str, Any], asset: Mapping[str, Any]) -> Reflectance:
    """Decide the scale and offset of one reflectance band of an item (pure).

    Args:
        item: The STAC item as a dict (``id`` and ``properties`` are read).
        asset: The band's asset as a dict.

    Returns:
        The band's :class:`Reflectance`.
    """
    props = item.get("properties", {})
    scale, offset = raster_scale_offset(asset)
    unit = scale if scale is not None else 1 / QUANTIFICATION
    applied = props.get("earthsearch:boa_offset_applied")
    if isinstance(applied, bool):
        if applied:
            return Reflectance(unit, 0.0, "earthsearch:boa_offset_applied=true")
        by_baseline = _by_baseline(item, unit)
        if by_baseline is not None:
            return Reflectance(
                unit,
                by_baseline.offset,
                f"earthsearch:boa_offset_applied=false, {by_baseline.basis}",
            )
    if scale is not None or offset is not None:
        return Reflectance(unit, offset if offset is not None else 0.0, "raster metadata")
    by_baseline = _by_baseline(item, unit)
    if by_baseline is not None:
        return by_baseline
    when = parse_time(props.get("datetime"))
    if when is None:
        raise InvalidRequestError(
            f"Item {item.get('id')!r} has no processing baseline, raster scale/offset or "
            "sensing time; expected one of them to decide its reflectance offset."
        )
    has_offset = when >= OFFSET_FROM
    return Reflectance(
        unit,
        BOA_ADD_OFFSET * unit if has_offset else 0.0,
        f"sensing date {when.date().isoformat()} (no baseline given)",
    )


def _by_baseline(item: Mapping[str, Any], unit: float) -> Reflectance | None:
    baseline = processing_baseline(item)
    if baseline is None:
        return None
    offset = BOA_ADD_OFFSET * unit if baseline >= OFFSET_BASELINE else 0.0
    return Reflectance(unit, offset, f"processing baseline {baseline[0]:02d}.{baseline[1]:02d}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def harmonize(ds: xr.Dataset) -> xr.Dataset:
    """Turn stored reflectance DNs into float32 reflectance; nodata becomes NaN.

    Bands that are not reflectance (SCL) are returned as they are. Lazy stays lazy.

    Raises:
        InvalidRequestError: If a reflectance band lacks its ``scale``/``offset`` attributes.
    """
    out = ds.copy()
    for name, var in ds.data_vars.items():
        spec = BAND_SPECS.get(str(name))
        has_attrs = SCALE_ATTR in var.attrs and OFFSET_ATTR in var.attrs
        if spec is not None and not spec.is_reflectance:
            continue
        if not has_attrs:
            if spec is None:
                continue
            raise InvalidRequestError(
                f"Band {name!r} has no {SCALE_ATTR!r}/{OFFSET_ATTR!r} attributes, so "
                f"harmonize=True cannot make it reflectance (it has {sorted(var.attrs)}); "
                "expected a band "
                "stored by this scenestore version (delete and download it again)."
            )
        scale = np.float32(var.attrs[SCALE_ATTR])
        offset = np.float32(var.attrs[OFFSET_ATTR])
        nodata = var.attrs.get("nodata", spec.nodata if spec else None)
        values = var.astype(np.float32) * scale + offset
        if nodata is not None:
            values = values.where(var != nodata)
        dropped = (SCALE_ATTR, OFFSET_ATTR, "nodata")
        attrs = {k: v for k, v in var.attrs.items() if k not in dropped}
        attrs.update({"units": "1", "harmonized_from_dn": True})
        out[name] = values.assign_attrs(attrs)
    return out


__all__ = [
    "BOA_ADD_OFFSET",
    "OFFSET_BASELINE",
    "OFFSET_FROM",
    "QUANTIFICATION",
    "Reflectance",
    "harmonize",
    "raster_scale_offset",
    "reflectance_of",
]
