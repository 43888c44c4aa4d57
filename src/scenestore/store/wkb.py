"""GeoPackage binary geometries of scene footprints: the ``GP`` header, an envelope, ISO WKB.

Footprints are lon/lat (EPSG:4326) polygons or multipolygons (a scene across the antimeridian).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

#: Bytes before the WKB of a geometry this module writes (header and xy envelope).
WKB_OFFSET = 8 + 32


def gpkg_geometry(geometry: dict[str, Any] | None, bbox: Sequence[float] | None) -> bytes | None:
    """A GeoJSON polygon or multipolygon as a GeoPackage geometry, or None without one."""
    if geometry is None or bbox is None:
        return None
    polygons = (
        [geometry["coordinates"]]
        if geometry["type"] == "Polygon"
        else list(geometry["coordinates"])
    )
    west, south, east, north = bbox
    # Version 0, flags: little endian (bit 0), envelope [minx, maxx, miny, maxy] (bits 1-3 = 1).
    header = b"GP" + bytes([0, 0b0000_0011]) + struct.pack("<i4d", 4326, west, east, south, north)
    return header + _wkb(polygons, multi=geometry["type"] == "MultiPolygon")


def _wkb(polygons: list[Any], *, multi: bool) -> bytes:
    def polygon(rings: list[Any]) -> bytes:
        out = [struct.pack("<BII", 1, 3, len(rings))]
        for ring in rings:
            out.append(struct.pack("<I", len(ring)))
            out.extend(struct.pack("<2d", float(p[0]), float(p[1])) for p in ring)
        return b"".join(out)

    if not multi:
        return polygon(polygons[0])
    return struct.pack("<BII", 1, 6, len(polygons)) + b"".join(polygon(p) for p in polygons)


def geojson_of_gpkg(blob: bytes) -> dict[str, Any] | None:
    """A GeoPackage (multi)polygon as GeoJSON; None for any other geometry type."""
    flags = blob[3]
    envelope = (0, 32, 48, 48, 64)[(flags >> 1) & 0b111]
    data, pos = blob[8 + envelope :], 0

    def read(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def polygon() -> list[Any]:
        read("B")
        (_, rings) = read("II")
        out = []
        for _ in range(rings):
            (count,) = read("I")
            flat = read(f"{2 * count}d")  # one unpack a ring: searches decode thousands
            out.append([[flat[i], flat[i + 1]] for i in range(0, 2 * count, 2)])
        return out

    _, kind = struct.unpack_from("<BI", data, 0)
    if kind == 3:
        return {"type": "Polygon", "coordinates": polygon()}
    if kind == 6:
        read("B")
        (_, count) = read("II")
        return {"type": "MultiPolygon", "coordinates": [polygon() for _ in range(count)]}
    return None


def wkb_of(blob: bytes) -> bytes:
    """The ISO WKB inside a GeoPackage geometry this module wrote."""
    return bytes(blob[WKB_OFFSET:])


__all__ = ["WKB_OFFSET", "geojson_of_gpkg", "gpkg_geometry", "wkb_of"]
