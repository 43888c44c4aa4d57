"""Provider profiles: how one STAC collection names bands, places its CRS and names scenes.

Profiles are data. Parsing an item against a profile (:func:`asset_key`, :func:`epsg_of`,
:func:`tile_of`) is pure and needs no network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scenestore.bands import ALL_BANDS
from scenestore.errors import InvalidRequestError, ItemError

_ES_L2A_KEYS = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}


@dataclass(frozen=True)
class Profile:
    """How scenestore talks to one STAC collection of Sentinel-2 L2A scenes.

    Attributes:
        name: Profile name used on the command line, e.g. ``"earth-search"``.
        stac_url: Default STAC API root URL.
        collection: STAC collection id.
        id_prefix: Prefix of scene identifiers, unique per provider and collection, so two
            providers never overwrite each other's scenes.
        asset_keys: Asset key of each canonical band.
        description: One line for humans.
    """

    name: str
    stac_url: str
    collection: str
    id_prefix: str
    asset_keys: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def asset_key(self, band: str) -> str:
        """Return the asset key of a canonical band.

        Raises:
            InvalidRequestError: If the profile has no asset for the band.
        """
        try:
            return self.asset_keys[band]
        except KeyError:
            raise InvalidRequestError(
                f"Unknown band {band!r} for profile {self.name!r}; expected one of "
                f"{', '.join(self.asset_keys)}."
            ) from None


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="earth-search",
            stac_url="https://earth-search.aws.element84.com/v1",
            collection="sentinel-2-l2a",
            id_prefix="es-l2a",
            asset_keys=_ES_L2A_KEYS,
            description="Element 84 Earth Search v1, sentinel-2-l2a (COGs on AWS)",
        ),
    )
}


def get_profile(name: str | Profile) -> Profile:
    """Return a profile by name (a Profile passes through).

    Raises:
        InvalidRequestError: If no profile has that name.
    """
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidRequestError(
            f"Unknown provider profile {name!r}; expected one of {', '.join(PROFILES)}."
        ) from None


def epsg_of(item: Mapping[str, Any], asset_keys: list[str] | None = None) -> int:
    """Return the EPSG code of an item's grid, wherever the provider put it.

    Looks at item ``proj:epsg``, item ``proj:code`` and then ``proj:epsg``/``proj:code`` of the
    given assets (CDSE puts it on each asset).

    Args:
        item: The STAC item as a dict.
        asset_keys: Assets to look at when the item properties say nothing.

    Raises:
        ItemError: If no CRS is found.
    """
    props = item.get("properties", {})
    candidates = [props]
    assets = item.get("assets", {})
    candidates += [assets[k] for k in (asset_keys or list(assets)) if k in assets]
    for where in candidates:
        if where.get("proj:epsg"):
            return int(where["proj:epsg"])
        code = where.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            return int(code.split(":", 1)[1])
    raise ItemError(
        f"Item {item.get('id')!r} names no CRS; expected proj:epsg or proj:code on the item or "
        "its band assets."
    )


def require_utm(item_id: str, epsg: int) -> int:
    """Check that an EPSG code is a WGS 84 UTM zone (Sentinel-2 tiles always are).

    Raises:
        ItemError: If the CRS is not UTM.
    """
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise ItemError(
            f"Item {item_id!r} is in EPSG:{epsg}; expected a WGS 84 UTM zone (EPSG:326xx or "
            "327xx) as every Sentinel-2 tile is."
        )
    return epsg


_TILE_RE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})$")


def normalize_tile(tile: str) -> str:
    """Return an MGRS tile id as ``33UUP`` (zone without leading zero, upper case).

    Raises:
        InvalidRequestError: If the text is not an MGRS 100 km tile id.
    """
    m = _TILE_RE.match(str(tile).strip().upper())
    if not m or not 1 <= int(m.group(1)) <= 60:
        raise InvalidRequestError(
            f"Invalid MGRS tile {tile!r}; expected a zone 1-60, a latitude band and two letters, "
            "e.g. '33UUP'."
        )
    return f"{int(m.group(1))}{m.group(2)}{m.group(3)}"


def tile_of(item: Mapping[str, Any]) -> str | None:
    """Return the MGRS tile of an item from whichever property the provider uses."""
    props = item.get("properties", {})
    code = props.get("grid:code")
    if isinstance(code, str) and code.startswith("MGRS-"):
        return normalize_tile(code[5:])
    if props.get("s2:mgrs_tile"):
        return normalize_tile(props["s2:mgrs_tile"])
    if props.get("mgrs:utm_zone") and props.get("mgrs:latitude_band"):
        zone, band = props["mgrs:utm_zone"], props["mgrs:latitude_band"]
        return normalize_tile(f"{zone}{band}{props.get('mgrs:grid_square', '')}")
    m = re.search(r"_T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z]{2})_", str(item.get("id", "")))
    return normalize_tile(m.group(1)) if m else None


__all__ = [
    "ALL_BANDS",
    "PROFILES",
    "Profile",
    "epsg_of",
    "get_profile",
    "normalize_tile",
    "tile_of",
]
