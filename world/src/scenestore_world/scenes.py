"""Pure planning of the offline world's scenes: tiles, identifiers, dates and grids (no I/O).

Every scene sits on a real Sentinel-2 MGRS tile whose origin was recorded from a real Earth
Search item, so the synthetic grids line up with the real ones. A size smaller than the full
10980 px tile is the top-left sub-window of that tile (same origin, fewer pixels).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from scenestore.errors import InvalidRequestError

#: Pixels per side of a 10 m grid for the named sizes; "full" is a real MGRS tile.
SIZES: dict[str, int] = {"tiny": 120, "small": 1098, "full": 10980}

#: Native resolutions in metres; a size must be divisible by every ratio to 10 m.
RESOLUTIONS: tuple[int, ...] = (10, 20, 60)

#: First acquisition date of the world.
START_DATE = date(2024, 6, 1)

#: Days between two consecutive scenes of the world.
DAYS_BETWEEN_SCENES = 3

#: ESA switched L2A processing from baseline 05.10 to 05.11 on this date.
BASELINE_0511_FROM = date(2024, 7, 23)

NODATA_CORNERS: tuple[str, ...] = ("upper-left", "upper-right", "lower-left", "lower-right")


@dataclass(frozen=True)
class TileSpec:
    """A real Sentinel-2 MGRS tile the world places scenes on.

    Attributes:
        name: MGRS tile name, e.g. ``"39QTA"``.
        epsg: EPSG code of the tile's UTM zone.
        ulx: Easting of the tile's upper-left corner in metres (real ``proj:transform[2]``).
        uly: Northing of the tile's upper-left corner in metres (real ``proj:transform[5]``).
        sensing_time: Typical UTC time of the item ``datetime`` over this tile.
        datatake_time: Typical UTC start of the datatake (the time in ``s2:product_uri``).
        relative_orbit: Relative orbit number written into product names.
        sun_azimuth: Typical sun azimuth in degrees for a June acquisition.
        sun_elevation: Typical sun elevation in degrees for a June acquisition.
        source: Which recorded fixture the origin comes from.
    """

    name: str
    epsg: int
    ulx: float
    uly: float
    sensing_time: time
    datatake_time: time
    relative_orbit: int
    sun_azimuth: float
    sun_elevation: float
    source: str

    @property
    def utm_zone(self) -> int:
        """UTM zone number, e.g. 39."""
        return int(self.name[:-3])

    @property
    def latitude_band(self) -> str:
        """MGRS latitude band letter, e.g. ``"Q"``."""
        return self.name[-3]

    @property
    def grid_square(self) -> str:
        """MGRS 100 km grid square letters, e.g. ``"TA"``."""
        return self.name[-2:]


_ES_L2A = "shared/fixtures/earth-search/eodm__es-v1-sentinel-2-l2a__3items.json"
_ES_C1 = "shared/fixtures/earth-search/rustac__es-v1-sentinel-2-c1-l2a__13TDE__10items.json"

#: The tiles scenes cycle over; origins copied from recorded Earth Search items.
TILES: tuple[TileSpec, ...] = (
    TileSpec(
        "39QTA",
        32639,
        199980.0,
        2100000.0,
        time(7, 24, 41),
        time(7, 6, 31),
        106,
        72.6,
        69.9,
        f"{_ES_L2A} (S2A_39QTA_20230628_0_L2A)",
    ),
    TileSpec(
        "39QUA",
        32639,
        300000.0,
        2100000.0,
        time(7, 24, 38),
        time(7, 6, 31),
        106,
        72.2,
        70.7,
        f"{_ES_L2A} (S2A_39QUA_20230628_0_L2A)",
    ),
    TileSpec(
        "13TDE",
        32613,
        399960.0,
        4500000.0,
        time(17, 53, 2),
        time(17, 39, 11),
        98,
        147.0,
        58.7,
        f"{_ES_C1} (S2A_T13TDE_20240422T174753_L2A)",
    ),
)
TILES_BY_NAME: dict[str, TileSpec] = {tile.name: tile for tile in TILES}


@dataclass(frozen=True)
class SceneSpec:
    """Everything decided about one synthetic scene before any pixel exists.

    Attributes:
        id: Earth Search v1 identifier, e.g. ``"S2A_39QTA_20240601_0_L2A"``.
        index: Position of the scene in the world (drives seeds and dates).
        tile: MGRS tile name, a key of :data:`TILES_BY_NAME`.
        epsg: EPSG code of the scene's UTM CRS.
        platform: ``"sentinel-2a"`` or ``"sentinel-2b"``.
        datetime: Acquisition time (UTC).
        size: Pixels per side of the 10 m grid.
        ulx: Easting of the upper-left corner in metres.
        uly: Northing of the upper-left corner in metres.
        cloud_cover: ``eo:cloud_cover`` in percent of the valid pixels; SCL is drawn to match.
        processing_baseline: ``s2:processing_baseline``, ``"05.10"`` or ``"05.11"``.
        nodata_corner: Corner cut off by the swath edge (one of :data:`NODATA_CORNERS`) or None.
        nodata_extent: Leg of the nodata triangle as a fraction of the scene side (0 if none).
        seed: The world seed the scene's pixels derive from.
    """

    id: str
    index: int
    tile: str
    epsg: int
    platform: str
    datetime: datetime
    size: int
    ulx: float
    uly: float
    cloud_cover: float
    processing_baseline: str
    nodata_corner: str | None
    nodata_extent: float
    seed: int

    @property
    def tile_spec(self) -> TileSpec:
        """The MGRS tile the scene lies on."""
        return TILES_BY_NAME[self.tile]

    @property
    def extent_m(self) -> float:
        """Side length of the scene footprint in metres."""
        return self.size * 10.0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Footprint as ``(minx, miny, maxx, maxy)`` in the scene's UTM CRS."""
        return (self.ulx, self.uly - self.extent_m, self.ulx + self.extent_m, self.uly)

    @property
    def nodata_pixel_percentage(self) -> float:
        """Share of the footprint cut off by the swath edge, in percent."""
        return round(100.0 * self.nodata_extent**2 / 2.0, 6)

    def shape(self, resolution: int) -> tuple[int, int]:
        """Grid shape ``(rows, cols)`` at a native resolution (10, 20 or 60 m)."""
        n = self.size * 10 // _check_resolution(resolution)
        return (n, n)

    def transform(self, resolution: int) -> tuple[float, float, float, float, float, float]:
        """STAC ``proj:transform`` (first six affine coefficients) at a native resolution."""
        res = float(_check_resolution(resolution))
        return (res, 0.0, self.ulx, 0.0, -res, self.uly)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, inverse of :meth:`from_dict`."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["datetime"] = self.datetime.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Rebuild a scene from :meth:`to_dict` output."""
        return cls(**{**data, "datetime": datetime.fromisoformat(data["datetime"])})


def _check_resolution(resolution: int) -> int:
    if resolution not in RESOLUTIONS:
        raise InvalidRequestError(
            f"Unsupported resolution {resolution!r}; expected one of {RESOLUTIONS} metres."
        )
    return resolution


def resolve_size(size: str | int) -> int:
    """Turn a size name or pixel count into pixels per side at 10 m.

    Args:
        size: ``"tiny"`` (120), ``"small"`` (1098), ``"full"`` (10980) or a positive multiple of
            6 up to 10980, so the 20 m and 60 m grids cover exactly the 10 m footprint.

    Returns:
        Pixels per side of the 10 m grid.

    Raises:
        InvalidRequestError: For an unknown name or an unusable pixel count.
    """
    if isinstance(size, str):
        key = size.strip().lower()
        if key in SIZES:
            return SIZES[key]
        if not key.isdigit():
            raise InvalidRequestError(
                f"Unknown world size {size!r}; expected one of {', '.join(SIZES)} "
                "or a multiple of 6 pixels."
            )
        size = int(key)
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidRequestError(
            f"World size must be a name or an int, got {size!r}; expected one of "
            f"{', '.join(SIZES)} or a multiple of 6 pixels."
        )
    if size <= 0 or size % 6 or size > SIZES["full"]:
        raise InvalidRequestError(
            f"World size {size!r} px is unusable; expected a positive multiple of 6 up to "
            f"{SIZES['full']} so the 20 m and 60 m grids cover the 10 m footprint exactly."
        )
    return size


def scene_id(platform: str, tile: str, day: date, sequence: int = 0) -> str:
    """Earth Search v1 ``sentinel-2-l2a`` identifier, e.g. ``S2A_39QTA_20240601_0_L2A``."""
    return f"S2{platform[-1].upper()}_{tile}_{day:%Y%m%d}_{sequence}_L2A"


def plan_scenes(count: int, *, size: str | int = "tiny", seed: int = 0) -> list[SceneSpec]:
    """Decide the scenes of a world, deterministically from ``seed``.

    Scenes cycle over :data:`TILES` and the two platforms, one every
    :data:`DAYS_BETWEEN_SCENES` days from :data:`START_DATE`. Identifiers, tiles and dates do not
    depend on the seed; cloud cover, acquisition seconds and the swath-edge corner do. Even
    scenes are fairly clear (cloud cover below 40 %), odd ones anything up to 100 % and cut by a
    nodata corner.

    Args:
        count: Number of scenes, at least 1.
        size: See :func:`resolve_size`.
        seed: World seed.

    Returns:
        The scenes in acquisition order.

    Raises:
        InvalidRequestError: If ``count`` or ``size`` is unusable.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidRequestError(f"Scene count {count!r} is unusable; expected an int >= 1.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidRequestError(f"World seed {seed!r} is unusable; expected an int.")
    pixels = resolve_size(size)
    return [_plan_scene(index, pixels, seed) for index in range(count)]


def _plan_scene(index: int, pixels: int, seed: int) -> SceneSpec:
    # string seeds are hashed with SHA-512 by `random`, stable across runs and platforms
    rng = random.Random(f"scenestore-world:{seed}:{index}")
    tile = TILES[index % len(TILES)]
    platform = "sentinel-2a" if index % 2 == 0 else "sentinel-2b"
    day = START_DATE + timedelta(days=DAYS_BETWEEN_SCENES * index)
    when = datetime.combine(day, tile.sensing_time, tzinfo=UTC)
    when += timedelta(milliseconds=rng.randrange(-20_000, 20_000))
    cloud_cover = rng.uniform(0.0, 40.0) if index % 2 == 0 else rng.uniform(0.0, 100.0)
    corner, extent = None, 0.0
    if index % 2 == 1:
        corner = rng.choice(NODATA_CORNERS)
        extent = rng.uniform(0.3, 0.8)
    return SceneSpec(
        id=scene_id(platform, tile.name, day),
        index=index,
        tile=tile.name,
        epsg=tile.epsg,
        platform=platform,
        datetime=when,
        size=pixels,
        ulx=tile.ulx,
        uly=tile.uly,
        cloud_cover=round(cloud_cover, 6),
        processing_baseline="05.11" if day >= BASELINE_0511_FROM else "05.10",
        nodata_corner=corner,
        nodata_extent=round(extent, 6),
        seed=seed,
    )


__all__ = [
    "NODATA_CORNERS",
    "SIZES",
    "TILES",
    "TILES_BY_NAME",
    "SceneSpec",
    "TileSpec",
    "plan_scenes",
    "resolve_size",
    "scene_id",
]
