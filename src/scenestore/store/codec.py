"""The codec stored band chunks are compressed with (README, "The codec, measured")."""

from __future__ import annotations

import numpy as np
from zarr.codecs import BloscCodec, BloscShuffle

#: zstd level of stored chunks.
CLEVEL = 2

#: Bytes Blosc compresses as one block. Its own choice for zstd at levels 1-3 is 64-256 KB,
#: and zstd finds fewer matches in small blocks and spends longer per byte on them: 1 MiB
#: blocks store less in less CPU time (a stored chunk smaller than that is one block).
BLOCK_BYTES = 1 << 20


def band_codec(dtype: str | np.dtype, clevel: int = CLEVEL) -> BloscCodec:
    """Return the Blosc zstd codec of a band's chunks.

    Args:
        dtype: The band's stored data type (uint16 reflectance, uint8 SCL).
        clevel: zstd level.

    Returns:
        Byte shuffle for multi-byte types; no shuffle for one-byte ones, where bit shuffle
        stored 22 % more of SCL.
    """
    one_byte = np.dtype(dtype).itemsize == 1
    return BloscCodec(
        cname="zstd",
        clevel=clevel,
        shuffle=BloscShuffle.noshuffle if one_byte else BloscShuffle.shuffle,
        blocksize=BLOCK_BYTES,
    )


__all__ = ["BLOCK_BYTES", "CLEVEL", "band_codec"]
