"""A second, in-process StoreManager implementation for testing the base-class contract.

It is not a mock of anything: it is a real subclass of :class:`StoreManager` whose "source"
computes deterministic pixels (optionally slowly, chunk by chunk), so base-class behaviour can
be tested, and a writer killed mid-band, without a network.
"""

from __future__ import annotations

import time
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from scenestore import StoreManager
from scenestore.ids import validate_identifier


def _band_seed(band: str) -> int:
    return sum(ord(c) for c in band)


class ArrayStoreManager(StoreManager[str]):
    """Scenes are named by their id; pixels are a function of (band, y, x).

    Args:
        bands: Band names.
        store: Store directory or None.
        size: Grid edge in pixels.
        chunk: Stored and computed chunk edge.
        x0: West edge of the grid in metres (change it to provoke a coordinate mismatch).
        delay: Seconds each chunk takes to compute (to catch a writer mid-band).
    """

    def __init__(self, bands, store=None, *, size=60, chunk=20, x0=500000.0, delay=0.0):
        super().__init__(bands, store)
        self.size, self.chunk, self.x0, self.delay = size, chunk, x0, delay
        self.downloads: list[list[str]] = []

    def identifier(self, item: str) -> str:
        return validate_identifier(item)

    def encodings(self, bands: list[str]) -> dict[str, dict]:
        return {
            b: {
                "dtype": "uint16",
                "fill_value": 0,
                "chunks": (self.chunk, self.chunk),
                "compressors": [BloscCodec(cname="zstd", clevel=3)],
            }
            for b in bands
        }

    def download_scene_from_source(self, item: str, bands: list[str]) -> xr.Dataset:
        self.downloads.append(list(bands))
        n, c = self.size, self.chunk
        delay = self.delay

        def block(band: str, block_info=None):
            (y0, y1), (x0, x1) = block_info[None]["array-location"]
            if delay:
                time.sleep(delay)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            return ((yy * 7 + xx * 3 + _band_seed(band)) % 4000 + 1).astype("uint16")

        data = {
            b: (
                ("y", "x"),
                da.map_blocks(
                    block,
                    b,
                    chunks=((c,) * (n // c), (c,) * (n // c)),
                    dtype="uint16",
                    meta=np.array((), "uint16"),
                ),
            )
            for b in bands
        }
        coords = {
            "x": self.x0 + 5 + 10 * np.arange(n, dtype="float64"),
            "y": 7000000 - 5 - 10 * np.arange(n, dtype="float64"),
            "spatial_ref": xr.DataArray(
                0, attrs={"crs_wkt": _UTM33N_WKT, "spatial_ref": _UTM33N_WKT}
            ),
        }
        return xr.Dataset(data, coords=coords, attrs={"scene": item})


def expected_band(band: str, size: int = 60) -> np.ndarray:
    """The pixels ArrayStoreManager produces for a band."""
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy * 7 + xx * 3 + _band_seed(band)) % 4000 + 1).astype("uint16")


def _utm33n() -> str:
    from pyproj import CRS

    return CRS.from_epsg(32633).to_wkt()


_UTM33N_WKT = _utm33n()


if __name__ == "__main__":
    # Writer process for the kill test: python tests/synthetic.py STORE ID BANDS DELAY
    import sys

    store, ident, bands, delay = (
        sys.argv[1],
        sys.argv[2],
        sys.argv[3].split(","),
        float(sys.argv[4]),
    )
    mgr = ArrayStoreManager(bands, Path(store), size=120, chunk=20, delay=delay)
    mgr.download_and_store(ident)
