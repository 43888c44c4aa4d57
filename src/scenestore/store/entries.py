"""What the store index holds about one scene, and how it is read from the scene's metadata.

:class:`SceneInfo` is one scene as every inventory sees it (``ls``, ``info``, ``prune``, the
index); :class:`IndexQuery` an offline search. The footprint is the scene grid's outline in
lon/lat, recorded at creation in the group attribute :data:`FOOTPRINT_ATTR` (read from the grid
for scenes stored before it was).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

from scenestore.errors import ScenestoreError
from scenestore.store.client import StoreClient
from scenestore.store.layout import FOOTPRINT_ATTR
from scenestore.store.wkb import geojson_of_gpkg

logger = logging.getLogger(__name__)


class _StoredAs:
    """A field held as the index stores it (``raw``: text or bytes) until first read.

    Installed on :class:`SceneInfo` after ``@dataclass`` has made it, so the generated
    ``__init__`` (which sets fields with ``object.__setattr__``) stores values through it, decoded
    ones as they are. The value lives in the instance ``__dict__`` under the field's own name:
    a data descriptor is looked up first.
    """

    def __init__(
        self, name: str, raw: type, decode: Callable[[Any], Any], empty: Callable[[], Any]
    ) -> None:
        self.name, self.raw, self.decode, self.empty = name, raw, decode, empty

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default: ``empty()`` on read
        value = obj.__dict__.get(self.name)
        if type(value) is self.raw and value:
            value = self.decode(value)
        elif value is None or type(value) is self.raw:  # NULL, or empty text another tool wrote
            value = self.empty()
        else:
            return value
        obj.__dict__[self.name] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


class _StoredBounds:
    """``bbox``, held as the index's four bound columns (``_west`` ...) until first read."""

    _SIDES = ("_west", "_south", "_east", "_north")

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return None
        values = obj.__dict__
        if "bbox" not in values:
            # The sides stay: a thread reading at the same time finds them too.
            sides = tuple(values.get(side) for side in self._SIDES)
            values["bbox"] = None if sides[0] is None else sides
        return values["bbox"]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["bbox"] = value


@dataclass(frozen=True)
class SceneInfo:
    """One stored scene as the index (and every inventory) sees it.

    Attributes:
        identifier: Scene identifier.
        bands: Committed bands, sorted.
        size_bytes: Bytes the whole scene occupies in the store.
        datetime: Sensing time (ISO 8601, UTC), if recorded.
        tile: MGRS tile, if recorded.
        cloud_cover: ``eo:cloud_cover`` in percent, if recorded.
        attrs: The scene's attributes when read from the scene itself ({} from the index).
        damaged: One line per problem found in the scene's small metadata (group or band
            ``zarr.json``, commit records); empty for a sound scene. Chunks are not read:
            ``scenestore verify`` checks them.
        item_id: The source STAC item's id.
        collection: The source STAC collection.
        provider: The provider profile it was ingested with.
        processing_baseline: ``s2:processing_baseline``, if recorded.
        band_bytes: Bytes of each committed band's array.
        ingested_at: When its newest band was committed (ISO 8601 UTC).
        bbox: Footprint bounds in lon/lat (W, S, E, N), if known.
        geometry: Footprint as a GeoJSON geometry in lon/lat, if known.
        stamp: The ``_commits`` change time when indexed (local stores), for staleness checks.

    Entries read from the index (:func:`stored_scene_info`) hold ``bands``, ``damaged``,
    ``band_bytes``, ``geometry`` and ``bbox`` as the index stores them and decode each on first
    read, so a search returning thousands of scenes decodes only what its caller looks at.
    """

    identifier: str
    bands: tuple[str, ...]
    size_bytes: int
    datetime: str | None = None
    tile: str | None = None
    cloud_cover: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    damaged: tuple[str, ...] = ()
    item_id: str | None = None
    collection: str | None = None
    provider: str | None = None
    processing_baseline: str | None = None
    band_bytes: dict[str, int] = field(default=None, repr=False)  # type: ignore[arg-type]
    ingested_at: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    geometry: dict[str, Any] | None = field(default=None, repr=False)
    stamp: str | None = field(default=None, repr=False)

    def as_record(self) -> dict[str, Any]:
        """The inventory entry as JSON-ready values (what ``scenestore ls --json`` prints)."""
        return {
            "identifier": self.identifier,
            "datetime": self.datetime,
            "tile": self.tile,
            "cloud_cover": self.cloud_cover,
            "bands": list(self.bands),
            "size_bytes": self.size_bytes,
            "source_item": self.item_id,
            "collection": self.collection,
            "provider": self.provider,
            "processing_baseline": self.processing_baseline,
            "band_bytes": dict(self.band_bytes),
            "ingested_at": self.ingested_at,
            "bbox": list(self.bbox) if self.bbox else None,
            "damaged": list(self.damaged),
        }


def _bands_of_text(text: str) -> tuple[str, ...]:
    return tuple(text.strip(",").split(",")) if text.strip(",") else ()


# An index search returns thousands of entries and most callers read a few fields of each:
# entries read from the index decode the rest when first read (see stored_scene_info).
SceneInfo.bands = _StoredAs("bands", str, _bands_of_text, tuple)  # type: ignore[assignment]
SceneInfo.damaged = _StoredAs(  # type: ignore[assignment]
    "damaged", str, lambda text: tuple(json.loads(text)), tuple
)
SceneInfo.band_bytes = _StoredAs("band_bytes", str, json.loads, dict)  # type: ignore[assignment]
SceneInfo.geometry = _StoredAs(  # type: ignore[assignment]
    "geometry", bytes, geojson_of_gpkg, lambda: None
)
SceneInfo.bbox = _StoredBounds()  # type: ignore[assignment]
SCENE_INFO_FIELDS = tuple(f.name for f in fields(SceneInfo))
_new = object.__new__


def stored_scene_info(values: Iterable[tuple[str, Any]]) -> SceneInfo:
    """An entry from the values the index stores, without running the dataclass ``__init__``.

    Args:
        values: (name, value) for every field but ``attrs`` and ``bbox``, as stored: ``bands``
            as ``",B02,B03,"`` text, ``damaged`` and ``band_bytes`` as JSON text, ``geometry``
            as GeoPackage bytes; the bounds as ``_west``, ``_south``, ``_east``, ``_north``.

    Returns:
        The entry; each stored field is decoded on first read (a search of the index returns
        thousands, and the frozen dataclass's ``__init__`` cost more than the query).
    """
    info = _new(SceneInfo)
    fields_ = info.__dict__
    fields_.update(values)
    fields_["attrs"] = {}
    return info


@dataclass(frozen=True)
class IndexQuery:
    """An offline search of the index: the options of the online search, plus bands present.

    Attributes:
        bbox: Area of interest bounds in lon/lat (W, S, E, N), or None.
        geometry: Area of interest as a GeoJSON geometry in lon/lat (exact test), or None.
        start: First sensing day (inclusive, UTC), or None.
        end: Last sensing day (inclusive, UTC), or None.
        max_cloud: Highest cloud cover accepted, in percent, or None.
        tiles: MGRS tiles to keep; empty for all.
        bands: Bands every scene found must have committed; empty for any.
    """

    bbox: tuple[float, float, float, float] | None = None
    geometry: dict[str, Any] | None = None
    start: date | None = None
    end: date | None = None
    max_cloud: float | None = None
    tiles: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()


def group_attrs(payload: bytes | None) -> tuple[dict[str, Any], str | None]:
    """A scene group's attributes from its ``zarr.json`` bytes, and what is wrong with it.

    Returns:
        The attributes ({} when unusable) and None, "missing" or "unreadable".
    """
    if payload is None:
        return {}, "missing"
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}, "unreadable"
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return {}, "unreadable"
    attrs = doc.get("attributes", {})
    return (attrs, None) if isinstance(attrs, dict) else ({}, "unreadable")


def grid_footprint(crs: Any, transform: Sequence[float], shape: tuple[int, int]) -> dict[str, Any]:
    """A grid's outline in lon/lat (densified, so UTM edges stay true) and its bbox.

    Returns:
        ``{"bbox": [W, S, E, N], "geometry": <GeoJSON>}``, what :data:`FOOTPRINT_ATTR` holds.
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox

    geobox = GeoBox(shape, Affine(*transform), crs)
    edge = max(abs(transform[0]) * shape[1], abs(transform[4]) * shape[0])
    # Four segments per edge keep the outline true to the UTM grid without thousands of points.
    extent = geobox.extent.to_crs("EPSG:4326", resolution=edge / 4)
    left, bottom, right, top = extent.boundingbox
    return {"bbox": [left, bottom, right, top], "geometry": extent.json}


def scene_footprint(grid: Any) -> dict[str, Any] | None:
    """The footprint of a scene grid: a Dataset or zarr group with ``x``, ``y``, ``spatial_ref``.

    Returns:
        What :func:`grid_footprint` returns, or None for a grid without a CRS or coordinates.
    """
    from scenestore.store.arrays import crs_of

    try:
        x, y = grid["x"][...], grid["y"][...]
        x, y = getattr(x, "values", x), getattr(y, "values", y)
        res_x = float(x[1] - x[0]) if x.size > 1 else 10.0
        res_y = float(y[1] - y[0]) if y.size > 1 else -10.0
        transform = [res_x, 0.0, float(x[0]) - res_x / 2, 0.0, res_y, float(y[0]) - res_y / 2]
        crs = crs_of(dict(grid["spatial_ref"].attrs))
        return grid_footprint(crs, transform, (int(y.size), int(x.size)))
    except (OSError, ValueError, KeyError, TypeError, IndexError, ScenestoreError) as err:
        logger.debug("No footprint for the grid: %s", err)
        return None


def stored_footprint(client: StoreClient, key: str) -> dict[str, Any] | None:
    """The footprint of a scene stored without :data:`FOOTPRINT_ATTR` (read from its grid)."""
    import zarr

    try:
        group: Any = zarr.open_group(client.zarr_store(read_only=True), path=key, mode="r")
    except (OSError, ValueError, KeyError, ScenestoreError) as err:
        logger.debug("No footprint for %s: %s", key, err)
        return None
    return scene_footprint(group)


def checked_footprint(
    footprint: object,
) -> tuple[tuple[float, float, float, float] | None, dict[str, Any] | None]:
    if not isinstance(footprint, dict):
        return None, None
    try:
        west, south, east, north = (float(v) for v in footprint["bbox"])
        geometry = footprint["geometry"]
        if not isinstance(geometry, dict) or geometry.get("type") not in {
            "Polygon",
            "MultiPolygon",
        }:
            geometry = None
    except (KeyError, TypeError, ValueError):
        return None, None
    return (west, south, east, north), geometry


def utc_text(value: object) -> str | None:
    """Sensing time as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``, so text order is time order."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat() + "Z"


def text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


__all__ = [
    "FOOTPRINT_ATTR",
    "SCENE_INFO_FIELDS",
    "IndexQuery",
    "SceneInfo",
    "checked_footprint",
    "grid_footprint",
    "group_attrs",
    "scene_footprint",
    "stored_scene_info",
    "stored_footprint",
    "text_or_none",
    "utc_text",
]
