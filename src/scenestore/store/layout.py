"""Where things live inside a store, and how bands are chunked (pure, no I/O).

A store, local directory or object-store prefix alike, holds one zarr v3 group per scene; its
keys, relative to the store's root, are::

    <identifier>.zarr/zarr.json            the scene group: x, y, spatial_ref, scene attributes
    <identifier>.zarr/<BAND>/...           one zarr v3 array per band
    <identifier>.zarr/_commits/<BAND>.json the commit record of a band (present only once it exists)
    <identifier>.zarr/_staging/<BAND>/...  a replacement of a committed band, before promotion
    .locks/<identifier>.lock               per-scene writer lock (file lock or lease object)
    .quicklooks/<identifier>.png           true-colour quicklook (optional)
    .trash/<identifier>.zarr.<tag>/...     a scene being removed (stores that can rename)
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
#: Where scenes being removed are moved first, on stores that can rename (hidden).
TRASH_DIR = ".trash"
RECORD_SUFFIX = ".json"

#: Group attribute with the scene grid's footprint (lon/lat GeoJSON and bbox), written at creation.
FOOTPRINT_ATTR = "scenestore_footprint"

#: Target edge length of a stored chunk in pixels: a full 10980 px tile is 6 x 6 chunks.
DEFAULT_CHUNK_TARGET = 1830


def scene_key(identifier: str) -> str:
    """``<identifier>.zarr`` after validating the identifier.

    Raises:
        InvalidIdentifierError: If the identifier is not safe as a key or path name.
    """
    return f"{validate_identifier(identifier)}{SCENE_SUFFIX}"


def band_key(identifier: str, band: str) -> str:
    """The prefix of a committed band's array."""
    return f"{scene_key(identifier)}/{band}"


def staging_key(identifier: str, band: str = "") -> str:
    """The prefix a replacement of a committed band is written to (the staging group if no band)."""
    root = f"{scene_key(identifier)}/{STAGING_DIR}"
    return f"{root}/{band}" if band else root


def commits_key(identifier: str) -> str:
    """The prefix of a scene's commit records."""
    return f"{scene_key(identifier)}/{COMMITS_DIR}"


def commit_key(identifier: str, band: str) -> str:
    """The commit record of one band."""
    return f"{commits_key(identifier)}/{band}{RECORD_SUFFIX}"


def lock_key(identifier: str) -> str:
    """The writer lock of one scene."""
    return f"{LOCKS_DIR}/{validate_identifier(identifier)}.lock"


def quicklook_key(identifier: str) -> str:
    """The quicklook PNG of one scene."""
    return f"{QUICKLOOKS_DIR}/{validate_identifier(identifier)}.png"


def identifier_of_key(key: str) -> str | None:
    """The identifier of a top-level ``<identifier>.zarr`` entry, or None if it is none."""
    name = key.rstrip("/").rsplit("/", 1)[-1]
    if not name.endswith(SCENE_SUFFIX) or name.startswith(".") or name == SCENE_SUFFIX:
        return None
    return name[: -len(SCENE_SUFFIX)]


def scene_path(store: Path, identifier: str) -> Path:
    """``<store>/<identifier>.zarr`` for a local store (after validating the identifier)."""
    return Path(store) / scene_key(identifier)


def lock_path(store: Path, identifier: str) -> Path:
    """The lock file guarding writes to one scene of a local store."""
    return Path(store) / lock_key(identifier)


def identifier_of(scene: Path) -> str | None:
    """The identifier of a local scene directory, or None if the path is not one."""
    return identifier_of_key(Path(scene).name)


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
