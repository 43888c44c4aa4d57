"""The commit protocol: a band is present only once its commit record exists.

Writers write all of a band's chunks first and its commit record last. On a local filesystem
the record is written to a temporary file and renamed into place; rename is atomic on POSIX,
so a reader sees either no record or a whole one, and a writer killed mid-band leaves no record.
Overwriting a band removes its record *before* touching any chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scenestore.errors import DamagedSceneError
from scenestore.fsafety import atomic_write
from scenestore.layout import COMMITS_DIR, commits_path

RECORD_SUFFIX = ".json"
_GROUP_METADATA = {"zarr_format": 3, "node_type": "group", "attributes": {"scenestore": "commits"}}


@dataclass(frozen=True)
class CommitRecord:
    """What a writer promises about a fully written band.

    Attributes:
        band: Canonical band name.
        shape: Array shape (y, x).
        chunks: Chunk shape (y, x).
        dtype: Stored dtype name.
        written_at: ISO 8601 UTC time the band was committed.
        source: Where the band came from (an href with any query string removed), if known.
        chunk_count: Chunk files written (zarr writes none for all-fill chunks).
        nbytes: Bytes of those chunk files.
        checksum: ``blake2b:<hex>`` over the chunk files' names and bytes, in name order.
    """

    band: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    written_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    source: str | None = None
    chunk_count: int | None = None
    nbytes: int | None = None
    checksum: str | None = None


_FIELDS = {f.name for f in fields(CommitRecord)}


def layout_mismatch(meta: dict[str, Any], record: CommitRecord) -> str | None:
    """What in a band array's ``zarr.json`` disagrees with its commit record, if anything.

    Args:
        meta: The array's zarr v3 metadata document.
        record: The band's commit record.

    Returns:
        A sentence naming the differing shape or chunk shape, or None when both agree.
    """
    shape = tuple(meta.get("shape", ()))
    chunks = tuple(meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", ()))
    if shape != tuple(record.shape):
        return f"shape {shape} differs from the committed {tuple(record.shape)}"
    if chunks != tuple(record.chunks):
        return f"chunks {chunks} differ from the committed {tuple(record.chunks)}"
    return None


def ensure_commits_group(scene: Path) -> Path:
    """Create the ``_commits`` directory as a zarr group so zarr readers do not warn about it."""
    path = commits_path(scene)
    path.mkdir(parents=True, exist_ok=True)
    meta = path / "zarr.json"
    if not meta.exists():
        atomic_write(meta, json.dumps(_GROUP_METADATA).encode())
    return path


def write_commit(scene: Path, record: CommitRecord) -> None:
    """Commit a band: atomically write its record. Call only after all its chunks are written."""
    path = ensure_commits_group(scene) / f"{record.band}{RECORD_SUFFIX}"
    atomic_write(path, json.dumps(asdict(record), indent=1).encode())


def drop_commit(scene: Path, band: str) -> None:
    """Withdraw a band's commit record (before overwriting or deleting the band)."""
    with contextlib.suppress(FileNotFoundError):
        (commits_path(scene) / f"{band}{RECORD_SUFFIX}").unlink()


def committed_bands(scene: Path) -> set[str]:
    """Return the bands whose commit record exists; reads one directory listing, nothing else."""
    try:
        names = os.listdir(commits_path(scene))
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {
        n[: -len(RECORD_SUFFIX)]
        for n in names
        if n.endswith(RECORD_SUFFIX) and not n.startswith(".") and n != "zarr.json"
    }


def read_commit(scene: Path, band: str) -> CommitRecord | None:
    """Return a band's commit record, or None if the band is not committed.

    Raises:
        DamagedSceneError: If the record exists but is not a commit record (garbage JSON,
            missing or wrong fields).
    """
    path = commits_path(scene) / f"{band}{RECORD_SUFFIX}"
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_record(payload, band=band, where=str(path))


def parse_record(payload: bytes, *, band: str, where: str) -> CommitRecord:
    """Turn a commit record's bytes into a :class:`CommitRecord` (local and object stores).

    Args:
        payload: The record file's or object's bytes.
        band: The band the record's name says it commits.
        where: The record's path or key, for the error message.

    Raises:
        DamagedSceneError: If the bytes are not JSON or lack a field, or a field is malformed.
    """
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        missing = [n for n in ("band", "shape", "chunks", "dtype") if n not in data]
        if missing:
            raise TypeError(f"no field {missing[0]!r}")
        data["shape"] = tuple(int(n) for n in data["shape"])
        data["chunks"] = tuple(int(n) for n in data["chunks"])
        # Fields a later release may add are ignored, not called damage.
        record = CommitRecord(**{k: v for k, v in data.items() if k in _FIELDS})
        if record.band != band:
            raise TypeError(f"it names band {record.band!r}")
    except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError too
        detail = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
        raise DamagedSceneError(
            f"Commit record {where!r} of band {band} is damaged ({detail}); run "
            "`scenestore verify --repair` to drop it, then ingest again to re-fetch the band."
        ) from err
    return record


def valid_committed_bands(scene: Path) -> tuple[set[str], dict[str, str]]:
    """The bands whose commit record exists and parses, and the damaged records' problems.

    A garbage record does not commit its band: :meth:`StoreManager.missing_bands` counts it
    as missing (so a rerun re-fetches it) and ``verify`` reports it. Reads every record (a few
    hundred bytes each), where :func:`committed_bands` reads one listing.

    Returns:
        The committed bands, and for each damaged record its band and a one-line problem.
    """
    root = os.fspath(commits_path(scene))
    good, damaged = set(), {}
    for band in committed_bands(scene):
        # Plain os paths: pathlib's object overhead was most of this check's cost.
        where = os.path.join(root, f"{band}{RECORD_SUFFIX}")
        try:
            with open(where, "rb") as fh:
                payload = fh.read()
        except FileNotFoundError:  # withdrawn since the listing
            continue
        try:
            parse_record(payload, band=band, where=where)
        except DamagedSceneError as err:
            damaged[band] = str(err)
        else:
            good.add(band)
    return good, damaged


__all__ = [
    "COMMITS_DIR",
    "CommitRecord",
    "committed_bands",
    "drop_commit",
    "ensure_commits_group",
    "parse_record",
    "read_commit",
    "valid_committed_bands",
    "write_commit",
]
