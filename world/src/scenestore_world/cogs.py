"""Pixel synthesis for the offline world and Cloud-Optimized GeoTIFF writing.

A scene's pixels come from smooth random fields (terrain, vegetation, cloud) defined in ground
metres, so the 10, 20 and 60 m bands show the same landscape and the SCL classes agree with the
reflectance. Pixels are produced in strips of :data:`STRIP_ROWS` rows and written to a tiled
scratch GeoTIFF, then copied with GDAL's COG driver; memory stays bounded even for a full
10980 px tile.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from scenestore.bands import ALL_BANDS, BAND_SPECS
from scenestore_world.scenes import RESOLUTIONS, SceneSpec


class _SmallBlocksizeFilter(logging.Filter):
    """Drops GDAL's "unexpected value for BLOCKSIZE" warning of the small test grids.

    GDAL's COG driver warns for every band of every scene whose tiles are below 128 px (the
    tiny and small worlds use smaller tiles on purpose, see :func:`cog_blocksize`), and writes
    them as asked. Once logging is configured (Prefect, pytest) that was ~1,600 lines per world.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "for BLOCKSIZE creation option" not in record.getMessage()


# rasterio reports GDAL's CPLE warnings through this logger.
logging.getLogger("rasterio._env").addFilter(_SmallBlocksizeFilter())

#: Rows synthesised at once. Noise is seeded per strip, so changing it changes the pixels.
STRIP_ROWS = 256

#: Extent the random lattices cover (a full tile plus a margin for the cloud-shadow offset).
_LATTICE_EXTENT_M = 109_800.0 + 4_000.0

#: (lattice spacing in metres, amplitude) of each octave of each smooth field.
_OCTAVES: dict[str, tuple[tuple[float, float], ...]] = {
    "terrain": ((12_000.0, 1.0), (3_000.0, 0.6), (700.0, 0.35), (150.0, 0.2)),
    "vegetation": ((8_000.0, 1.0), (2_000.0, 0.6), (400.0, 0.35), (100.0, 0.15)),
    "cloud": ((15_000.0, 1.0), (4_000.0, 0.6), (1_000.0, 0.35), (250.0, 0.15)),
    # rivers run along the zero line of this field
    "river": ((20_000.0, 1.0), (5_000.0, 0.5), (1_200.0, 0.25)),
}

#: Octaves of the fine texture fields (soil brightness, canopy vigour): the within-field
#: variation of real imagery, spatially correlated over a few pixels, unlike sensor noise.
_TEXTURE_OCTAVES: tuple[tuple[float, float], ...] = ((20.0, 1.0), (45.0, 0.8), (110.0, 0.6))

#: Cells per side of the periodic texture lattices (20 km period for the finest octave): a full
#: tile's worth of 20 m cells would cost 130 MB and a second of random numbers per field.
_TEXTURE_PERIOD = 1024

#: Relative amplitude of the texture in soil brightness and in vegetation cover.
_BRIGHTNESS_TEXTURE = 0.09
_VIGOUR_TEXTURE = 0.12

#: Edge of the agricultural parcels before merging neighbours, in metres.
_PARCEL_M = 220.0

#: Metres the parcel grid is bent by per unit of the terrain / vegetation field.
_PARCEL_WARP_M = 90.0

#: Half width of the rivers in river-field units, and the width of their banks.
_RIVER_HALF_WIDTH = 0.010
_RIVER_BANK = 0.004

#: Reflectance x 10000 of (bare soil, vegetation, water, snow, cloud) per band, before the
#: +1000 offset.
_SIGNATURES: dict[str, tuple[float, float, float, float, float]] = {
    "B01": (1100, 350, 600, 7500, 5200),
    "B02": (1300, 400, 550, 7800, 5400),
    "B03": (1700, 700, 450, 7700, 5500),
    "B04": (2100, 350, 300, 7500, 5600),
    "B05": (2300, 1100, 250, 7300, 5600),
    "B06": (2450, 2600, 200, 7000, 5600),
    "B07": (2550, 3100, 180, 6800, 5500),
    "B08": (2650, 3400, 150, 6500, 5400),
    "B8A": (2750, 3500, 140, 6200, 5300),
    "B09": (900, 1100, 60, 2500, 1800),
    "B11": (3300, 1800, 40, 900, 3800),
    "B12": (2700, 900, 30, 700, 2800),
}

#: Terrain above this (in standard deviations) is snow covered.
_SNOW_LINE = 2.8

#: Standard deviation (DN) of the sensor noise at each resolution: a few DN, as for MSI's SNR
#: at typical radiances. The bulk of the pixel-to-pixel variation comes from the texture and
#: the parcels, tuned so DEFLATE sizes of a full tile stay near the real Earth Search COGs
#: (10 m ~150-240 MB, 20 m ~50-60 MB).
NOISE_SIGMA: dict[int, float] = {10: 5.0, 20: 4.0, 60: 3.0}

#: Processing baselines >= 04.00 add this offset to L2A reflectance digital numbers.
BOA_OFFSET = 1000

#: Width (in cloud-field units) of the ramp from clear to opaque cloud.
_CLOUD_RAMP = 0.6

#: Scene classification (SCL) values.
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_defective",
    2: "dark_features",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "medium_proba_clouds",
    9: "high_proba_clouds",
    10: "thin_cirrus",
    11: "snow_ice",
}


def cog_blocksize(width: int) -> int:
    """COG tile size for a band ``width`` pixels wide: 512, smaller for small test grids.

    Small grids get tiles of at most half their width so that they still have several tiles and
    at least one overview level, like a real tile.
    """
    if width > 512:
        return 512
    return max(16, 2 ** math.floor(math.log2(max(width - 1, 1))))


def _smoothstep_variance() -> float:
    s = np.linspace(0.0, 1.0, 10_001)
    s = s * s * (3 - 2 * s)
    return float(np.mean((1 - s) ** 2 + s**2)) ** 2  # two independent axes


_SMOOTHSTEP_VARIANCE = _smoothstep_variance()


class _Field:
    """A smooth random field: octaves of smoothstep-interpolated Gaussian lattices in metres.

    Args:
        rng: Source of the lattices.
        octaves: ``(spacing in metres, amplitude)`` of each octave.
        period: Cells per side of a periodic lattice, or None for one covering the whole tile.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        octaves: Sequence[tuple[float, float]],
        period: int | None = None,
    ) -> None:
        self._layers = []
        # scale to unit variance: smoothstep interpolation of a unit lattice has variance
        # _SMOOTHSTEP_VARIANCE, and the octaves add up
        norm = 1.0 / math.sqrt(_SMOOTHSTEP_VARIANCE * sum(a * a for _, a in octaves))
        self._period = period
        for spacing, amplitude in octaves:
            n = period or int(math.ceil(_LATTICE_EXTENT_M / spacing)) + 2
            grid = rng.standard_normal((n, n), dtype=np.float32)
            self._layers.append((spacing, np.float32(amplitude * norm), grid))

    def sample(self, ys: np.ndarray, xs: np.ndarray, pixel_m: float = 0.0) -> np.ndarray:
        """Field values at the outer product of northing offsets ``ys`` and easting ``xs``.

        Octaves finer than ``pixel_m`` are damped by ``spacing / pixel_m``, as averaging them
        over a pixel's footprint would.
        """
        out = np.zeros((ys.size, xs.size), dtype=np.float32)
        for spacing, amplitude, grid in self._layers:
            weight = amplitude * np.float32(min(1.0, spacing / pixel_m) if pixel_m else 1.0)
            iy, wy = _lattice_weights(ys, spacing)
            ix, wx = _lattice_weights(xs, spacing)
            iy1, ix1 = iy + 1, ix + 1
            if self._period:
                iy, iy1, ix, ix1 = (i % self._period for i in (iy, iy1, ix, ix1))
            rows = grid[iy] * (1 - wy)[:, None] + grid[iy1] * wy[:, None]
            out += weight * (rows[:, ix] * (1 - wx) + rows[:, ix1] * wx)
        return out


def _lattice_weights(coords: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    pos = coords / spacing
    index = np.floor(pos).astype(np.intp)
    t = (pos - index).astype(np.float32)
    return index, t * t * (3 - 2 * t)  # smoothstep: no creases along lattice lines


class _Parcels:
    """Agricultural parcels: a grid of cells, bent and merged into fields of irregular size.

    Each parcel holds a crop state in [0, 1] (bare soil to full canopy), drawn U-shaped so
    that bare and green fields dominate, as in a summer scene.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        n = int(math.ceil((_LATTICE_EXTENT_M + 4 * _PARCEL_WARP_M) / _PARCEL_M)) + 2
        state = rng.beta(0.5, 0.5, size=(n, n)).astype(np.float32)
        # merging a cell into its left or upper neighbour makes 1-4 cell long fields
        left = rng.random((n, n)) < 0.45
        up = rng.random((n, n)) < 0.3
        for col in range(1, n):
            state[:, col] = np.where(left[:, col], state[:, col - 1], state[:, col])
        for row in range(1, n):
            state[row] = np.where(up[row] & ~left[row], state[row - 1], state[row])
        self._state = state.ravel()
        self._n = n

    def sample(
        self, ys: np.ndarray, xs: np.ndarray, warp_y: np.ndarray, warp_x: np.ndarray
    ) -> np.ndarray:
        """Crop state at the outer product of ``ys`` and ``xs``, bent by the warp fields."""
        offset = 2 * _PARCEL_WARP_M
        iy = ((ys[:, None] + offset + _PARCEL_WARP_M * warp_y) * (1 / _PARCEL_M)).astype(np.intp)
        ix = ((xs[None, :] + offset + _PARCEL_WARP_M * warp_x) * (1 / _PARCEL_M)).astype(np.intp)
        np.clip(iy, 0, self._n - 1, out=iy)
        np.clip(ix, 0, self._n - 1, out=ix)
        iy *= self._n
        iy += ix
        return self._state[iy]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


class _Landscape:
    """What covers each pixel of one strip, shared by all bands of a resolution."""

    def __init__(
        self,
        terrain: np.ndarray,
        vegetation: np.ndarray,
        cloud: np.ndarray,
        shadowing: np.ndarray,
        river: np.ndarray,
        parcels: np.ndarray,
        brightness_texture: np.ndarray,
        vigour_texture: np.ndarray,
        nodata: np.ndarray,
    ) -> None:
        self.terrain, self.vegetation, self.cloud = terrain, vegetation, cloud
        self.shadowing, self.nodata = shadowing, nodata
        # cropland on moderate vegetation and terrain, natural cover elsewhere
        crop = np.clip((0.9 - np.abs(vegetation + 0.2)) / 0.3, 0, 1)
        crop *= np.clip((1.5 - terrain) / 0.3, 0, 1)
        natural = _sigmoid(4 * (vegetation - 0.3))
        veg = crop * parcels + (1 - crop) * natural
        veg += np.float32(_VIGOUR_TEXTURE) * vigour_texture
        self.veg = np.clip(veg, 0, 1, out=veg)
        lake = _sigmoid(6 * (-1.1 - terrain))
        stream = np.clip((_RIVER_HALF_WIDTH - np.abs(river)) / _RIVER_BANK, 0, 1)
        stream *= terrain < _SNOW_LINE - 0.8
        self.water = np.maximum(lake, stream)
        self.snow = _sigmoid(8 * (terrain - _SNOW_LINE))
        self.brightness = 1 + 0.25 * terrain + np.float32(_BRIGHTNESS_TEXTURE) * brightness_texture
        self.opacity = np.clip(cloud / _CLOUD_RAMP, 0, 1)
        self.shadow = np.clip(shadowing / _CLOUD_RAMP, 0, 1) * (1 - self.opacity)

    def reflectance(self, band: str) -> np.ndarray:
        """Noise-free DN x 1 (before offset) of ``band`` over the strip, float32."""
        soil, veg, water, snow, bright = (np.float32(v) for v in _SIGNATURES[band])
        surface = soil * self.brightness * (1 - self.veg) + veg * self.veg
        surface += (water - surface) * self.water
        surface += (snow - surface) * self.snow
        surface *= 1 - 0.6 * self.shadow
        surface += (bright - surface) * self.opacity
        return surface

    def classify(self) -> np.ndarray:
        """SCL classes of the strip, consistent with :meth:`reflectance`."""
        scl = np.full(self.terrain.shape, 5, dtype=np.uint8)
        scl[self.veg > 0.5] = 4
        scl[np.abs(self.vegetation + 0.9) < 0.015] = 7
        scl[(self.terrain > -1.0) & (self.terrain < -0.9)] = 2
        scl[self.water > 0.5] = 6
        scl[self.terrain > _SNOW_LINE] = 11
        scl[(self.shadowing > 0) & (self.cloud <= 0)] = 3
        scl[self.cloud > 0] = 10
        scl[self.cloud > _CLOUD_RAMP / 3] = 8
        scl[self.cloud > _CLOUD_RAMP] = 9
        scl[self.nodata] = 0
        return scl


class SceneSynthesizer:
    """Deterministic pixels of one scene, strip by strip, at any native resolution.

    Args:
        scene: The planned scene; its ``seed`` and ``index`` fix every pixel.
    """

    def __init__(self, scene: SceneSpec) -> None:
        self.scene = scene
        rng = np.random.default_rng(np.random.SeedSequence(scene.seed, spawn_key=(scene.index,)))
        self._fields = {name: _Field(rng, octaves) for name, octaves in _OCTAVES.items()}
        self._shadow_shift = (float(rng.uniform(200, 800)), float(rng.uniform(200, 800)))
        for name in ("brightness", "vigour"):
            self._fields[name] = _Field(rng, _TEXTURE_OCTAVES, period=_TEXTURE_PERIOD)
        self._parcels = _Parcels(rng)
        self.cloud_threshold = self._cloud_threshold()

    def _cloud_threshold(self) -> float:
        # the quantile over the valid 60 m pixels makes the SCL cloud share match eo:cloud_cover
        if self.scene.cloud_cover <= 0:
            return math.inf
        rows, cols = self.scene.shape(60)
        cloud = self._coords_sample("cloud", 60, 0, rows)
        valid = ~self.nodata_mask(60, 0, rows)
        if not valid.any():
            return math.inf
        return float(np.quantile(cloud[valid], 1.0 - self.scene.cloud_cover / 100.0))

    def _coords(
        self, res: int, row0: int, nrows: int, shift: tuple[float, float] = (0.0, 0.0)
    ) -> tuple[np.ndarray, np.ndarray]:
        cols = self.scene.shape(res)[1]
        ys = (row0 + np.arange(nrows) + 0.5) * res + shift[1]
        xs = (np.arange(cols) + 0.5) * res + shift[0]
        return ys, xs

    def _coords_sample(
        self, field: str, res: int, row0: int, nrows: int, shift: tuple[float, float] = (0.0, 0.0)
    ) -> np.ndarray:
        return self._fields[field].sample(*self._coords(res, row0, nrows, shift), pixel_m=res)

    def nodata_mask(self, res: int, row0: int, nrows: int) -> np.ndarray:
        """True where the swath edge leaves no data (same footprint at every resolution)."""
        n = self.scene.shape(res)[1]
        mask = np.zeros((nrows, n), dtype=bool)
        corner = self.scene.nodata_corner
        if corner is None:
            return mask
        u = (np.arange(n) + 0.5) / n
        v = (row0 + np.arange(nrows) + 0.5) / n
        if corner.endswith("right"):
            u = 1.0 - u
        if corner.startswith("lower"):
            v = 1.0 - v
        return (v[:, None] + u[None, :]) < self.scene.nodata_extent

    def landscape(self, res: int, row0: int, nrows: int) -> _Landscape:
        """The land cover of rows ``row0..row0+nrows`` at native resolution ``res``."""
        ys, xs = self._coords(res, row0, nrows)
        terrain = self._coords_sample("terrain", res, row0, nrows)
        vegetation = self._coords_sample("vegetation", res, row0, nrows)
        cloud = self._coords_sample("cloud", res, row0, nrows) - np.float32(self.cloud_threshold)
        shadowing = self._coords_sample("cloud", res, row0, nrows, self._shadow_shift)
        shadowing -= np.float32(self.cloud_threshold)
        return _Landscape(
            terrain=terrain,
            vegetation=vegetation,
            cloud=cloud,
            shadowing=shadowing,
            river=self._coords_sample("river", res, row0, nrows),
            # the smooth fields bend the parcel grid, so field edges are not straight lines
            parcels=self._parcels.sample(ys, xs, terrain, vegetation),
            brightness_texture=self._coords_sample("brightness", res, row0, nrows),
            vigour_texture=self._coords_sample("vigour", res, row0, nrows),
            nodata=self.nodata_mask(res, row0, nrows),
        )

    def strip(self, res: int, row0: int, nrows: int, bands: Sequence[str]) -> dict[str, np.ndarray]:
        """Pixels of ``bands`` (all of native resolution ``res``) for rows ``row0..row0+nrows``.

        Returns:
            Band name to array of shape ``(nrows, cols)`` in the band's dtype, 0 where nodata.
        """
        land = self.landscape(res, row0, nrows)
        out: dict[str, np.ndarray] = {}
        for band in bands:
            if band == "SCL":
                out[band] = land.classify()
                continue
            value = land.reflectance(band)
            key = (self.scene.index, ALL_BANDS.index(band), row0 // STRIP_ROWS)
            rng = np.random.default_rng(np.random.SeedSequence(self.scene.seed, spawn_key=key))
            noise = rng.standard_normal(value.shape, dtype=np.float32)
            value += BOA_OFFSET + np.float32(NOISE_SIGMA[res]) * noise
            dn = np.clip(np.rint(value), 1, 65535).astype(np.uint16)
            dn[land.nodata] = 0
            out[band] = dn
        return out


def write_scene(scene: SceneSpec, directory: Path) -> dict[int, int]:
    """Write the 13 band COGs of ``scene`` to ``directory/<scene.id>/<BAND>.tif``.

    Each file is first written to a hidden partial name and renamed when complete, so an
    interrupted run never leaves a truncated ``<BAND>.tif``.

    Args:
        scene: The planned scene.
        directory: The world's ``data`` directory.

    Returns:
        Pixel counts of the SCL classes (index = class value), for the item's percentages.
    """
    out_dir = directory / scene.id
    out_dir.mkdir(parents=True, exist_ok=True)
    synth = SceneSynthesizer(scene)
    scl_counts = np.zeros(len(SCL_CLASSES), dtype=np.int64)
    # a bounded GDAL block cache keeps a full tile's COG copy from growing with the image
    with rasterio.Env(GDAL_CACHEMAX=256, GDAL_NUM_THREADS="ALL_CPUS"):
        for res in RESOLUTIONS:
            bands = [b for b in ALL_BANDS if BAND_SPECS[b].resolution == res]
            _write_resolution(synth, res, bands, out_dir, scl_counts)
    return {int(k): int(v) for k, v in enumerate(scl_counts)}


def _write_resolution(
    synth: SceneSynthesizer, res: int, bands: list[str], out_dir: Path, scl_counts: np.ndarray
) -> None:
    scene = synth.scene
    rows, cols = scene.shape(res)
    base = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "nodata": 0,
        "crs": f"EPSG:{scene.epsg}",
        "transform": Affine(*scene.transform(res)),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "BIGTIFF": "IF_NEEDED",
    }
    scratch = {band: out_dir / f".{band}.scratch.tif" for band in bands}
    with contextlib.ExitStack() as stack:
        sinks = {
            band: stack.enter_context(
                rasterio.open(path, "w", **base, dtype=BAND_SPECS[band].dtype)
            )
            for band, path in scratch.items()
        }
        for row0 in range(0, rows, STRIP_ROWS):
            nrows = min(STRIP_ROWS, rows - row0)
            for band, data in synth.strip(res, row0, nrows, bands).items():
                sinks[band].write(data, 1, window=Window(0, row0, cols, nrows))
                if band == "SCL":
                    scl_counts += np.bincount(data.ravel(), minlength=len(SCL_CLASSES))
    for band, path in scratch.items():
        partial = out_dir / f".{band}.partial.tif"
        rasterio.shutil.copy(
            path,
            partial,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="2",
            BLOCKSIZE=str(cog_blocksize(cols)),
            OVERVIEWS="AUTO",
            BIGTIFF="IF_NEEDED",
            RESAMPLING="NEAREST" if band == "SCL" else "AVERAGE",
        )
        os.replace(partial, out_dir / f"{band}.tif")  # atomic: readers never see half a COG
        path.unlink()


__all__ = [
    "NOISE_SIGMA",
    "SCL_CLASSES",
    "STRIP_ROWS",
    "SceneSynthesizer",
    "cog_blocksize",
    "write_scene",
]
