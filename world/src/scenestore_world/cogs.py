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
}

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

#: Standard deviation (DN) of the per-pixel noise at each resolution. Tuned so DEFLATE sizes of a
#: full tile land near the real Earth Search COGs (10 m ~150-240 MB, 20 m ~50-60 MB).
NOISE_SIGMA: dict[int, float] = {10: 40.0, 20: 100.0, 60: 120.0}

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
    """A smooth random field: octaves of smoothstep-interpolated Gaussian lattices in metres."""

    def __init__(self, rng: np.random.Generator, octaves: Sequence[tuple[float, float]]) -> None:
        self._layers = []
        # scale to unit variance: smoothstep interpolation of a unit lattice has variance
        # _SMOOTHSTEP_VARIANCE, and the octaves add up
        norm = 1.0 / math.sqrt(_SMOOTHSTEP_VARIANCE * sum(a * a for _, a in octaves))
        for spacing, amplitude in octaves:
            n = int(math.ceil(_LATTICE_EXTENT_M / spacing)) + 2
            grid = rng.standard_normal((n, n), dtype=np.float32)
            self._layers.append((spacing, np.float32(amplitude * norm), grid))

    def sample(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Field values at the outer product of northing offsets ``ys`` and easting ``xs``."""
        out = np.zeros((ys.size, xs.size), dtype=np.float32)
        for spacing, amplitude, grid in self._layers:
            iy, wy = _lattice_weights(ys, spacing)
            ix, wx = _lattice_weights(xs, spacing)
            rows = grid[iy] * (1 - wy)[:, None] + grid[iy + 1] * wy[:, None]
            out += amplitude * (rows[:, ix] * (1 - wx) + rows[:, ix + 1] * wx)
        return out


def _lattice_weights(coords: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    pos = coords / spacing
    index = np.floor(pos).astype(np.intp)
    t = (pos - index).astype(np.float32)
    return index, t * t * (3 - 2 * t)  # smoothstep: no creases along lattice lines


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

    def _coords_sample(
        self, field: str, res: int, row0: int, nrows: int, shift: tuple[float, float] = (0.0, 0.0)
    ) -> np.ndarray:
        cols = self.scene.shape(res)[1]
        ys = (row0 + np.arange(nrows) + 0.5) * res + shift[1]
        xs = (np.arange(cols) + 0.5) * res + shift[0]
        return self._fields[field].sample(ys, xs)

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

    def strip(self, res: int, row0: int, nrows: int, bands: Sequence[str]) -> dict[str, np.ndarray]:
        """Pixels of ``bands`` (all of native resolution ``res``) for rows ``row0..row0+nrows``.

        Returns:
            Band name to array of shape ``(nrows, cols)`` in the band's dtype, 0 where nodata.
        """
        terrain = self._coords_sample("terrain", res, row0, nrows)
        vegetation = self._coords_sample("vegetation", res, row0, nrows)
        cloud = self._coords_sample("cloud", res, row0, nrows) - np.float32(self.cloud_threshold)
        shadowing = self._coords_sample("cloud", res, row0, nrows, self._shadow_shift)
        shadowing -= np.float32(self.cloud_threshold)
        nodata = self.nodata_mask(res, row0, nrows)
        out: dict[str, np.ndarray] = {}
        for band in bands:
            if band == "SCL":
                out[band] = _classify(terrain, vegetation, cloud, shadowing, nodata)
                continue
            out[band] = self._reflectance(
                band, res, row0, terrain, vegetation, cloud, shadowing, nodata
            )
        return out

    def _reflectance(
        self,
        band: str,
        res: int,
        row0: int,
        terrain: np.ndarray,
        vegetation: np.ndarray,
        cloud: np.ndarray,
        shadowing: np.ndarray,
        nodata: np.ndarray,
    ) -> np.ndarray:
        soil, veg, water, snow, bright = (np.float32(v) for v in _SIGNATURES[band])
        veg_share = 1 / (1 + np.exp(-4 * (vegetation - 0.3)))
        water_share = 1 / (1 + np.exp(-6 * (-1.1 - terrain)))
        snow_share = 1 / (1 + np.exp(-8 * (terrain - _SNOW_LINE)))
        surface = soil * (1 + 0.25 * terrain) * (1 - veg_share) + veg * veg_share
        surface = surface * (1 - water_share) + water * water_share
        surface = surface * (1 - snow_share) + snow * snow_share
        opacity = np.clip(cloud / _CLOUD_RAMP, 0, 1)
        shadow = np.clip(shadowing / _CLOUD_RAMP, 0, 1) * (1 - opacity)
        value = surface * (1 - 0.6 * shadow) * (1 - opacity) + bright * opacity
        key = (self.scene.index, ALL_BANDS.index(band), row0 // STRIP_ROWS)
        rng = np.random.default_rng(np.random.SeedSequence(self.scene.seed, spawn_key=key))
        noise = rng.standard_normal(value.shape, dtype=np.float32)
        value += BOA_OFFSET + np.float32(NOISE_SIGMA[res]) * noise
        dn = np.clip(np.rint(value), 1, 65535).astype(np.uint16)
        dn[nodata] = 0
        return dn


def _classify(
    terrain: np.ndarray,
    vegetation: np.ndarray,
    cloud: np.ndarray,
    shadowing: np.ndarray,
    nodata: np.ndarray,
) -> np.ndarray:
    scl = np.full(terrain.shape, 5, dtype=np.uint8)
    scl[vegetation > 0.3] = 4
    scl[np.abs(vegetation + 0.9) < 0.015] = 7
    scl[(terrain > -1.0) & (terrain < -0.9)] = 2
    scl[terrain < -1.1] = 6
    scl[terrain > _SNOW_LINE] = 11
    scl[(shadowing > 0) & (cloud <= 0)] = 3
    scl[cloud > 0] = 10
    scl[cloud > _CLOUD_RAMP / 3] = 8
    scl[cloud > _CLOUD_RAMP] = 9
    scl[nodata] = 0
    return scl


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
