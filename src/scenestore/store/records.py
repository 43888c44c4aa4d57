"""Commit records and chunk checksums: what a writer promises about a band (pure, no I/O).

A band is present only once its commit record exists. Writers write all of a band's chunks
first and the record last, as one whole object (a rename on a directory, a single PUT on an
object store), with put-if-absent, so a reader sees no record or a whole one, a writer killed
mid-band leaves no record, and a writer that lost its lock cannot commit over another's record.

**One checksum scheme.** Chunk bytes are hashed as zarr writes them
(:class:`~scenestore.store.arrays.RecordingStore`), so committing costs no second read of the
band. A record's checksum is ``blake2b-tree:<hex>``: a BLAKE2b over each chunk's name (relative
to its array, e.g. ``c/0/1``), length and own BLAKE2b, in name order. Records written by the
previous release on a local store carry ``blake2b:<hex>``, a BLAKE2b over each chunk's name,
length and bytes, in name order; :func:`checksum_of` computes either, so both still verify.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from scenestore.errors import DamagedSceneError

#: The checksum scheme of every record this release writes.
TREE_SCHEME = "blake2b-tree"
#: The scheme of local records written by the previous release (verified, never written).
FLAT_SCHEME = "blake2b"
#: The ``_commits`` group's own metadata, so zarr readers see a group, not a stray directory.
COMMITS_GROUP = {"zarr_format": 3, "node_type": "group", "attributes": {"scenestore": "commits"}}


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
        chunk_count: Chunks written (zarr writes none for all-fill chunks).
        nbytes: Bytes of those chunks.
        checksum: ``blake2b-tree:<hex>`` (or ``blake2b:<hex>`` from the previous release), see
            the module docstring.
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


def parse_record(payload: bytes, *, band: str, where: str) -> CommitRecord:
    """Turn a commit record's bytes into a :class:`CommitRecord`.

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


def record_bytes(record: CommitRecord) -> bytes:
    """The JSON a record is stored as (the previous release's format, unchanged)."""
    return json.dumps(asdict(record), indent=1).encode()


def chunk_digest(data: bytes) -> bytes:
    """The per-chunk digest that :func:`tree_checksum` combines."""
    return hashlib.blake2b(data, digest_size=16).digest()


def tree_checksum(digests: dict[str, tuple[int, bytes]]) -> str:
    """``blake2b-tree:<hex>`` over chunk names (relative to the array), lengths and digests."""
    total = hashlib.blake2b(digest_size=16)
    for name in sorted(digests):
        size, digest = digests[name]
        total.update(name.encode() + b"\0" + size.to_bytes(8, "little") + digest)
    return f"{TREE_SCHEME}:{total.hexdigest()}"


class ChecksumBuilder:
    """Re-computes a band's checksum chunk by chunk, in the scheme its record names.

    Args:
        scheme: ``blake2b-tree`` or ``blake2b`` (the record's checksum before the colon).
    """

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.digests: dict[str, tuple[int, bytes]] = {}
        self._flat = hashlib.blake2b(digest_size=16)

    def add(self, name: str, data: bytes) -> None:
        """Add one chunk; call in name order (the flat scheme hashes in call order)."""
        self.digests[name] = (len(data), chunk_digest(data) if self.scheme == TREE_SCHEME else b"")
        if self.scheme == FLAT_SCHEME:
            self._flat.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    def checksum(self) -> str:
        """The checksum of the chunks added so far."""
        if self.scheme == FLAT_SCHEME:
            return f"{FLAT_SCHEME}:{self._flat.hexdigest()}"
        return tree_checksum(self.digests)
