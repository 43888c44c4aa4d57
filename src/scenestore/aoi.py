"""Areas of interest and date ranges: accepted forms and their normalised forms (pure)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import shapely.affinity
import shapely.geometry
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from scenestore.errors import InvalidRequestError

BBox = tuple[float, float, float, float]
BBoxLike = str | Sequence[float]


def parse_bbox(value: BBoxLike) -> BBox:
    """Normalise ``"W,S,E,N"`` or a 4-sequence into a validated lon/lat bbox.

    Raises:
        InvalidRequestError: If it is not four numbers with S < N and W != E, within
            -180..180 and -90..90 (W > E crosses the antimeridian, as STAC allows).
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"Invalid bbox {value!r}; expected four numbers W,S,E,N in degrees."
        ) from None
    if len(numbers) != 4:
        raise InvalidRequestError(
            f"Invalid bbox {value!r}: {len(numbers)} numbers; expected four, W,S,E,N."
        )
    for part, number in zip(parts, numbers, strict=False):
        if math.isnan(number):  # NaN compares false with everything: not "out of range"
            raise InvalidRequestError(
                f"bbox value {str(part).strip()!r} is not a number; expected W,S,E,N in degrees."
            )
    w, s, e, n = numbers
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise InvalidRequestError(
            f"Invalid bbox {value!r}: outside lon -180..180 / lat -90..90; expected degrees."
        )
    # W > E is a bbox crossing the antimeridian (STAC / RFC 7946 section 5.2); W == E is empty.
    if w == e or s >= n:
        raise InvalidRequestError(
            f"Invalid bbox {value!r}: empty (W = E, or S not below N); expected W,S,E,N with "
            "S < N (W > E crosses the antimeridian)."
        )
    return (w, s, e, n)


def bbox_geometry(bbox: BBox) -> BaseGeometry:
    """The lon/lat geometry of a bbox: a box, or two boxes if it crosses the antimeridian."""
    w, s, e, n = bbox
    if w < e:
        return shapely.geometry.box(w, s, e, n)
    return shapely.geometry.MultiPolygon(
        [shapely.geometry.box(w, s, 180, n), shapely.geometry.box(-180, s, e, n)]
    )


def split_antimeridian(geom: BaseGeometry) -> BaseGeometry:
    """Split polygons drawn across the antimeridian into their parts on either side.

    A ring whose longitude jumps by more than 180 degrees between consecutive vertices is
    read as crossing the antimeridian (RFC 7946 section 3.1.9 asks writers to split such
    polygons; readers meet both forms). Read naively it would be the band the other way round
    the Earth. Already-split polygons (and MultiPolygons) are returned as they are.
    """
    if geom.geom_type == "MultiPolygon":
        return unary_union([split_antimeridian(p) for p in geom.geoms])
    if geom.geom_type != "Polygon" or not _crosses_antimeridian(geom.exterior.coords):
        return geom
    shifted = shapely.geometry.Polygon(
        [_east(c) for c in geom.exterior.coords],
        [[_east(c) for c in ring.coords] for ring in geom.interiors],
    )
    east = shifted.intersection(shapely.geometry.box(-180, -90, 180, 90))
    west = shapely.affinity.translate(
        shifted.intersection(shapely.geometry.box(180, -90, 540, 90)), xoff=-360
    )
    return unary_union([g for g in (east, west) if not g.is_empty])


def _crosses_antimeridian(coords: Sequence[Sequence[float]]) -> bool:
    pts = list(coords)
    # An edge that ends on +-180 is drawn to the antimeridian, not across it (a whole-world
    # box, a polygon already split there). Any other edge longer than 180 degrees is read the
    # short way round: to mean the long way, add a vertex in between.
    return any(
        abs(b[0] - a[0]) > 180 and abs(a[0]) != 180 and abs(b[0]) != 180
        for a, b in zip(pts, pts[1:], strict=False)
    )


def _east(coord: Sequence[float]) -> tuple[float, float]:
    # Negative longitudes continue east of 180 so the polygon is drawn the short way round.
    x, y = coord[0], coord[1]
    return (x + 360 if x < 0 else x, y)


def parse_geojson(value: Mapping[str, Any] | str | Path) -> BaseGeometry:
    """Normalise a GeoJSON geometry, Feature, FeatureCollection, JSON text or file to a geometry.

    Raises:
        InvalidRequestError: If the file is missing or the JSON is not valid GeoJSON.
    """
    source = value
    if isinstance(value, Path) or (isinstance(value, str) and not value.lstrip().startswith("{")):
        path = Path(value)
        try:
            value = path.read_text()
        except OSError as err:
            raise InvalidRequestError(
                f"Cannot read AOI file {str(path)!r}: {err.strerror}; expected a GeoJSON file."
            ) from err
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise InvalidRequestError(
                f"AOI {_short(source)} is not valid JSON ({err.msg} at line {err.lineno}); "
                "expected a GeoJSON geometry, Feature or FeatureCollection."
            ) from err
    doc: Any = value  # parsed JSON of any shape: shapely says what is wrong with it
    try:
        kind = doc.get("type") if isinstance(doc, Mapping) else None
        if kind == "FeatureCollection":
            geoms = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
            if not geoms:
                raise ValueError("no features")
            geom = unary_union(geoms)
        elif kind == "Feature":
            geom = shapely.geometry.shape(doc["geometry"])
        else:
            geom = shapely.geometry.shape(doc)
    except Exception as err:  # shapely raises many types for malformed input
        raise InvalidRequestError(
            f"AOI {_short(source)} is not valid GeoJSON ({err}); expected a geometry, Feature or "
            "FeatureCollection with Polygon or MultiPolygon coordinates in lon/lat."
        ) from err
    if not geom.is_empty and geom.is_valid:
        geom = split_antimeridian(geom)
    if geom.is_empty or not geom.is_valid:
        raise InvalidRequestError(
            f"AOI {_short(source)} is empty or self-intersecting; expected a valid polygon."
        )
    parse_bbox(geom.bounds if geom.area > 0 else _pad(geom.bounds))
    return geom


def parse_date(value: str | date, *, name: str = "date") -> date:
    """Normalise ``YYYY-MM-DD`` text or a date.

    Raises:
        InvalidRequestError: If the text is not a calendar date.
    """
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidRequestError(f"Invalid {name} {value!r}; expected YYYY-MM-DD.") from None


def sensing_day(text: object) -> date | None:
    """The UTC day of an ISO 8601 sensing time (``2024-06-01T10:20:30Z``), or None if unreadable.

    A time without an offset is taken as UTC, as STAC's ``datetime`` always is.
    """
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).date()


def check_date_range(start: date, end: date) -> None:
    """Raise InvalidRequestError unless ``start <= end``."""
    if end < start:
        raise InvalidRequestError(
            f"End date {end.isoformat()!r} is before start date {start.isoformat()!r}; expected "
            "end on or after start."
        )


def _pad(bounds: tuple[float, ...]) -> tuple[float, ...]:
    w, s, e, n = bounds
    return (w - 1e-6, s - 1e-6, e + 1e-6, n + 1e-6)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, Path) else repr(str(value))
    return text if len(text) <= 60 else text[:57] + "...'"
