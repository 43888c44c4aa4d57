"""Band writes: what zarr writes for each chunk, and the empty-chunk test it runs first."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from zarr.core.buffer.cpu import NDBuffer
from zarr.storage import LocalStore

from scenestore.store.arrays import _IntegerNDBuffer, write_band_array

DTYPES = st.sampled_from(["uint8", "uint16", "int16", "int32", "bool", "float32", "float64"])


@st.composite
def chunk_and_fill(draw):
    dtype = np.dtype(draw(DTYPES))
    fill = draw(hnp.from_dtype(dtype, allow_infinity=False))
    # Mostly-fill chunks are the interesting ones: all fill, or fill but for a pixel or two.
    chunk = np.full(draw(hnp.array_shapes(min_dims=2, max_dims=2, max_side=6)), fill, dtype)
    for _ in range(draw(st.integers(0, 2))):
        index = tuple(draw(st.integers(0, n - 1)) for n in chunk.shape)
        chunk[index] = draw(hnp.from_dtype(dtype, allow_infinity=False))
    return chunk, fill


@given(chunk_and_fill())
def test_empty_chunk_test_answers_as_zarrs_own(case):
    chunk, fill = case
    assert _IntegerNDBuffer(chunk).all_equal(fill) == NDBuffer(chunk).all_equal(fill)


def test_strip_writes_skip_chunks_of_fill_and_read_back_exactly(tmp_path):
    data = np.arange(1, 8 * 12 + 1, dtype="uint16").reshape(8, 12)
    data[4:, 4:8] = 0  # one whole chunk of nodata in the second strip
    band = xr.DataArray(da.from_array(data, chunks=(4, 12)), dims=("y", "x"))

    write_band_array(LocalStore(tmp_path), "B04", band, {"chunks": (4, 4), "dtype": "uint16"})

    stored = zarr.open_array(tmp_path / "B04", mode="r")
    np.testing.assert_array_equal(stored[...], data)
    assert stored.dtype == np.uint16
    chunk_files = sorted(str(p.relative_to(tmp_path / "B04")) for p in tmp_path.rglob("c/*/*"))
    assert chunk_files == ["c/0/0", "c/0/1", "c/0/2", "c/1/0", "c/1/2"]
