"""Provider profiles: how one STAC collection names bands, places its CRS and names scenes.

Profiles are data. Parsing an item against a profile (:func:`asset_key`, :func:`epsg_of`,
:func:`tile_of`, :func:`processing_baseline`, :func:`generation_time`) is pure and needs no
network.

* ``earth-search`` (the default): Earth Search v1 ``sentinel-2-l2a``; prefix ``es-l2a``; CRS
  on the item; public COGs (lowercase common-name keys, ``-jp2`` twins ignored).
* ``earth-search-c1``: Earth Search v1 ``sentinel-2-c1-l2a``; prefix ``es-c1l2a``; CRS on the
  item; public COGs, same keys.
* ``planetary-computer``: Planetary Computer ``sentinel-2-l2a``; prefix ``pc-l2a``; CRS on the
  item; ``B04``/``SCL`` keys; hrefs SAS-signed (:mod:`scenestore.hrefs`).
* ``cdse``: Copernicus Data Space ``sentinel-2-l2a``; prefix ``cdse-l2a``; CRS (``proj:code``)
  on each asset; ``B04_10m``/``SCL_20m`` keys; JPEG 2000 on ``s3://eodata`` read with S3
  credentials from the environment or an AWS profile.

Identifiers are ``<id_prefix>_<item id>``: the prefix is unique per provider and collection,
so the same acquisition from two providers (or from Earth Search's two collections) is two
scenes that never overwrite each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from scenestore.bands import ALL_BANDS
from scenestore.errors import InvalidRequestError, ItemError
from scenestore.hrefs import PLANETARY_COMPUTER_SIGNING, HrefSigning, S3Access
from scenestore.tiles import normalize_tile, tile_of

#: Earth Search v1 asset keys (both collections): lowercase common names. The ``-jp2`` twins of
#: ``sentinel-2-l2a`` (requester-pays JPEG 2000 on ``s3://sentinel-s2-l2a``) are never used.
_ES_KEYS = {
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

#: Planetary Computer asset keys: the band names themselves.
_PC_KEYS = {band: band for band in ALL_BANDS}

#: CDSE asset keys: band and resolution; each band at its native resolution (B01 and B09 at
#: 60 m; the resampled ``B01_20m``, ``B02_20m``... are never used).
_CDSE_KEYS = {
    "B01": "B01_60m",
    "B02": "B02_10m",
    "B03": "B03_10m",
    "B04": "B04_10m",
    "B05": "B05_20m",
    "B06": "B06_20m",
    "B07": "B07_20m",
    "B08": "B08_10m",
    "B8A": "B8A_20m",
    "B09": "B09_60m",
    "B11": "B11_20m",
    "B12": "B12_20m",
    "SCL": "SCL_20m",
}

#: The public S3 endpoint of the CDSE ``eodata`` bucket (path-style, HTTPS).
CDSE_S3_ENDPOINT = "eodata.dataspace.copernicus.eu"


@dataclass(frozen=True)
class Profile:
    """How scenestore talks to one STAC collection of Sentinel-2 L2A scenes.

    Attributes:
        name: Profile name used on the command line, e.g. ``"earth-search"``.
        stac_url: Default STAC API root URL.
        collection: STAC collection id.
        id_prefix: Prefix of scene identifiers (``<id_prefix>_<item id>``), unique per
            provider and collection, so two providers never overwrite each other's scenes.
        asset_keys: Asset key of each canonical band.
        description: One line for humans.
        crs_on: Where the provider puts the CRS: ``"item"`` (``proj:epsg``/``proj:code`` in
            the item properties) or ``"asset"`` (``proj:code`` on each band asset).
        signing: How hrefs are signed before reading (None: read as they are).
        s3: How ``s3://`` hrefs are read (None: the provider has none).
        rate_limit: Requests per second this process sends to the provider's STAC API and
            asset host together (None: no limit); see :mod:`scenestore.throttle`.
        max_concurrent: Requests in flight at once to the provider (None: no cap).
    """

    name: str
    stac_url: str
    collection: str
    id_prefix: str
    asset_keys: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    crs_on: Literal["item", "asset"] = "item"
    signing: HrefSigning | None = None
    s3: S3Access | None = None
    rate_limit: float | None = None
    max_concurrent: int | None = None

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

    def epsg(self, item: Mapping[str, Any], asset_keys: list[str] | None = None) -> int:
        """Return the EPSG code of an item's grid, looking first where this provider puts it.

        Raises:
            ItemError: If no CRS is found anywhere.
        """
        return epsg_of(item, asset_keys, assets_first=self.crs_on == "asset")


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="earth-search",
            stac_url="https://earth-search.aws.element84.com/v1",
            collection="sentinel-2-l2a",
            id_prefix="es-l2a",
            asset_keys=_ES_KEYS,
            description="Element 84 Earth Search v1, sentinel-2-l2a (COGs on AWS)",
        ),
        Profile(
            name="earth-search-c1",
            stac_url="https://earth-search.aws.element84.com/v1",
            collection="sentinel-2-c1-l2a",
            id_prefix="es-c1l2a",
            asset_keys=_ES_KEYS,
            description="Element 84 Earth Search v1, sentinel-2-c1-l2a (Collection 1 COGs on AWS)",
        ),
        Profile(
            name="planetary-computer",
            stac_url="https://planetarycomputer.microsoft.com/api/stac/v1",
            collection="sentinel-2-l2a",
            id_prefix="pc-l2a",
            asset_keys=_PC_KEYS,
            description="Microsoft Planetary Computer, sentinel-2-l2a (SAS-signed COGs on Azure)",
            signing=PLANETARY_COMPUTER_SIGNING,
        ),
        Profile(
            name="cdse",
            stac_url="https://stac.dataspace.copernicus.eu/v1",
            collection="sentinel-2-l2a",
            id_prefix="cdse-l2a",
            asset_keys=_CDSE_KEYS,
            description="Copernicus Data Space Ecosystem, sentinel-2-l2a (JPEG 2000 on s3://eodata)",
            crs_on="asset",
            s3=S3Access(default_endpoint=CDSE_S3_ENDPOINT, https=True, virtual_hosting=False),
            # CDSE answers 429 at a few requests per second (issue #15).
            rate_limit=4.0,
            max_concurrent=4,
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


def epsg_of(
    item: Mapping[str, Any], asset_keys: list[str] | None = None, *, assets_first: bool = False
) -> int:
    """Return the EPSG code of an item's grid, wherever the provider put it.

    Looks at item ``proj:epsg``, item ``proj:code`` and ``proj:epsg``/``proj:code`` of the
    given assets (CDSE puts it on each asset), the assets first when ``assets_first``.

    Args:
        item: The STAC item as a dict.
        asset_keys: Assets to look at (default: all).
        assets_first: Look at the assets before the item properties.

    Raises:
        ItemError: If no CRS is found.
    """
    props = item.get("properties", {})
    assets = item.get("assets", {})
    on_assets = [assets[k] for k in (asset_keys or list(assets)) if k in assets]
    candidates = [*on_assets, props] if assets_first else [props, *on_assets]
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


_BASELINE_TEXT_RE = re.compile(r"^N?(\d{1,2})\.?(\d{2})$")
_BASELINE_IN_NAME_RE = re.compile(r"_N(\d{2})(\d{2})_")
_PRODUCT_TIME_RE = re.compile(r"_(\d{8}T\d{6})(?:\.SAFE)?$")


def parse_baseline(value: Any) -> tuple[int, int] | None:
    """Return a processing baseline as ``(major, minor)`` from ``"05.11"``, ``"N0511"``,
    ``"5.11"`` or ``5.11``; None when the value is not a baseline."""
    if value is None or isinstance(value, bool):
        return None
    text = f"{value:.2f}" if isinstance(value, float) else str(value).strip().upper()
    m = _BASELINE_TEXT_RE.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def processing_baseline(item: Mapping[str, Any]) -> tuple[int, int] | None:
    """Return an item's processing baseline, wherever its provider put it.

    ``s2:processing_baseline`` (Earth Search, Planetary Computer), ``processing:version``
    (CDSE), ``sentinel:processing_baseline`` (Earth Search v0), else the ``_Nxxyy_`` field of
    the item id or ``s2:product_uri`` (Planetary Computer ids lack it; CDSE ids carry it).
    """
    props = item.get("properties", {})
    for key in ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline"):
        parsed = parse_baseline(props.get(key))
        if parsed is not None:
            return parsed
    for name in (props.get("s2:product_uri"), item.get("id")):
        m = _BASELINE_IN_NAME_RE.search(str(name or ""))
        if m:
            return (int(m.group(1)), int(m.group(2)))
    return None


def parse_time(value: Any) -> datetime | None:
    """Return an ISO 8601 or ``YYYYMMDDTHHMMSS`` time as an aware UTC datetime, else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        if re.fullmatch(r"\d{8}T\d{6}", text):
            return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def generation_time(item: Mapping[str, Any]) -> datetime | None:
    """Return when the item's product was generated (not when its metadata changed).

    ``s2:generation_time`` (Earth Search, Planetary Computer), ``processing:datetime`` (CDSE),
    else the product discriminator at the end of the id or ``s2:product_uri``
    (``..._20230612T214223``), and only as a last resort ``updated``: metadata of an old
    product is often updated after a newer product was generated.
    """
    props = item.get("properties", {})
    for key in ("s2:generation_time", "processing:datetime"):
        parsed = parse_time(props.get(key))
        if parsed is not None:
            return parsed
    for name in (item.get("id"), props.get("s2:product_uri")):
        m = _PRODUCT_TIME_RE.search(str(name or ""))
        if m:
            return parse_time(m.group(1))
    return parse_time(props.get("updated"))


__all__ = [
    "ALL_BANDS",
    "CDSE_S3_ENDPOINT",
    "PROFILES",
    "Profile",
    "epsg_of",
    "generation_time",
    "get_profile",
    "normalize_tile",
    "parse_baseline",
    "parse_time",
    "processing_baseline",
    "require_utm",
    "tile_of",
]
