"""Where things live inside a store, and how bands are chunked (pure, no I/O).

A store is a directory holding one zarr v3 group per scene::

    <store>/<identifier>.zarr/            zarr group: x, y, spatial_ref and one array per band
    <store>/<identifier>.zarr/_commits/   zarr group; <BAND>.json is the commit record of a band
    <store>/<identifier>.zarr/_staging/   zarr group where band arrays are written before promotion
    <store>/.locks/<identifier>.lock      per-scene writer lock
    <store>/.quicklooks/<identifier>.png  true-colour quicklook (the ingest flow, optional)
"""

from __future__ import annotations

from pathlib import Path

from scenestore.ids import validate_identifier

SCENE_SUFFIX = ".zarr"
COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"
LOCKS_DIR = ".locks"
#: Where quicklooks are kept inside a store (hidden: never listed as a scene).
QUICKLOOKS_DIR = ".quicklooks"

#: Target edge length of a stored chunk in pixels: a full 10980 px tile is 6 x 6 chunks.
DEFAULT_CHUNK_TARGET = 1830


def scene_path(store: Path, identifier: str) -> Path:
    """Return ``<store>/<identifier>.zarr`` after validating the identifier.

    Raises:
        InvalidIdentifierError: If the identifier is not safe as a path name.
    """
    return store / f"{validate_identifier(identifier)}{SCENE_SUFFIX}"


def commits_path(scene: Path) -> Path:
    """Return the directory holding a scene's commit records."""
    return scene / COMMITS_DIR


def lock_path(store: Path, identifier: str) -> Path:
    """Return the lock file guarding writes to one scene."""
    return store / LOCKS_DIR / f"{validate_identifier(identifier)}.lock"


def identifier_of(scene: Path) -> str | None:
    """Return the identifier of a scene directory, or None if the path is not one."""
    name = scene.name
    if not name.endswith(SCENE_SUFFIX) or name.startswith("."):
        return None
    return name[: -len(SCENE_SUFFIX)]


def choose_chunk(size: int, target: int = DEFAULT_CHUNK_TARGET) -> int:
    """Pick a chunk edge that divides ``size`` evenly and is as close to ``target`` as possible.

    zarr v3 stores edge chunks at full size, so a chunk that does not divide the array wastes
    work and space (a 1098 px band in 4096 px chunks is one padded 4096 px chunk). Arrays no
    larger than ``target`` are one chunk.

    Args:
        size: Array edge length in pixels (> 0).
        target: Preferred chunk edge length in pixels.

    Returns:
        A divisor of ``size``; ``size`` itself when ``size <= target``.
    """
    if size <= target:
        return size
    divisors = {d for i in range(1, int(size**0.5) + 1) if size % i == 0 for d in (i, size // i)}
    # Too small a chunk means too many files; among near-equal ones prefer the larger.
    useful = [d for d in divisors if d >= target // 4] or [size]
    return min(useful, key=lambda d: (abs(d - target), -d))


def covers_whole_chunks(
    blocks: tuple[tuple[int, ...], ...], chunks: tuple[int, ...], shape: tuple[int, ...]
) -> bool:
    """Whether every dask block boundary falls on a zarr chunk boundary (or the array's end).

    Args:
        blocks: Dask chunks, one tuple of block lengths per dimension.
        chunks: Zarr chunk shape.
        shape: Array shape.
    """
    for lengths, edge, size in zip(blocks, chunks, shape, strict=True):
        end = 0
        for length in lengths:
            end += int(length)
            if end % int(edge) and end != int(size):
                return False
    return True
