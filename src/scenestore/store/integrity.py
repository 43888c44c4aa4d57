"""Reads that cannot be silently wrong: chunk checksums written with every band, checked on read.

Every band array scenestore writes ends its codec chain with zarr v3's ``crc32c`` codec (after
Blosc), so each stored chunk carries a CRC32C of its compressed bytes. Scenes are opened
through :class:`CheckedStore`, a zarr store wrapper that checks each chunk's bytes before
zarr decodes them and raises :class:`~scenestore.errors.DamagedSceneError` naming the scene,
band and chunk, for a flipped byte or a truncated chunk. Checking before Blosc matters: Blosc
trusts the sizes in its header, and decompressing a truncated buffer can read past its end
(a crash of the interpreter, not an exception). Bands written before checksums (no
``crc32c`` codec) are still opened; for them the wrapper checks that the chunk is as long as
its Blosc header says, which catches truncation but not a flipped byte (``scenestore verify``
does).
"""

from __future__ import annotations

import json
from typing import Any

import google_crc32c
from zarr.codecs import Crc32cCodec
from zarr.storage import WrapperStore

from scenestore.errors import DamagedSceneError

#: The name of the checksum codec in a band's ``zarr.json``.
CHECKSUM_CODEC = "crc32c"
_BLOSC_HEADER = 16


def with_checksum(compressors: Any) -> list[Any]:
    """Return ``compressors`` (a codec, a list of them or None) with crc32c appended last."""
    if compressors is None:
        codecs: list[Any] = []
    elif isinstance(compressors, list | tuple):
        codecs = list(compressors)
    else:
        codecs = [compressors]
    if not any(isinstance(c, Crc32cCodec) or _name(c) == CHECKSUM_CODEC for c in codecs):
        codecs.append(Crc32cCodec())
    return codecs


def _name(codec: Any) -> str | None:
    return codec.get("name") if isinstance(codec, dict) else None


def damaged(identifier: str, band: str, problem: str) -> DamagedSceneError:
    """The one-line error for a damaged band of a scene."""
    return DamagedSceneError(
        f"Scene {identifier!r} band {band}: {problem}; run `scenestore verify --repair`, "
        "then ingest again to re-fetch the band."
    )


class CheckedStore(WrapperStore[Any]):
    """A read-side zarr store wrapper that checks each chunk of a scene's bands before decoding.

    Args:
        store: The zarr store holding the scene (local directory or object store).
        identifier: The scene, for error messages.
        root: The scene group's path inside ``store`` (empty when the store is the scene).
        codecs: Shared map band -> codec names, filled from each band's ``zarr.json`` as zarr
            reads it (callers leave it out).
    """

    def __init__(
        self,
        store: Any,
        identifier: str,
        root: str = "",
        codecs: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        super().__init__(store)
        self.identifier = identifier
        self.root = f"{root.strip('/')}/" if root.strip("/") else ""
        self.codecs: dict[str, tuple[str, ...]] = {} if codecs is None else codecs

    def _with_store(self, store: Any) -> CheckedStore:
        return type(self)(store, self.identifier, self.root, self.codecs)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        value = await self._store.get(key, prototype, byte_range)
        if value is None or byte_range is not None or not key.startswith(self.root):
            return value
        parts = key[len(self.root) :].split("/")
        if len(parts) == 2 and parts[1] == "zarr.json":
            self._learn(parts[0], value)
        elif len(parts) >= 3 and parts[1] == "c":
            chunk = "/".join(parts[1:])
            codecs = self.codecs.get(parts[0])
            if codecs is None:
                meta = await self._store.get(f"{self.root}{parts[0]}/zarr.json", prototype)
                codecs = self._learn(parts[0], meta) if meta is not None else ()
            self._check(parts[0], chunk, value.to_bytes(), codecs)
        return value

    def _learn(self, band: str, meta: Any) -> tuple[str, ...]:
        try:
            doc = json.loads(meta.to_bytes())
            names = tuple(str(c.get("name")) for c in doc.get("codecs", []))
        except (ValueError, AttributeError, TypeError):
            names = ()  # zarr itself reports unreadable metadata
        self.codecs[band] = names
        return names

    def _check(self, band: str, chunk: str, data: bytes, codecs: tuple[str, ...]) -> None:
        if codecs and codecs[-1] == CHECKSUM_CODEC:
            if len(data) < 4:
                raise damaged(self.identifier, band, f"chunk {chunk} is truncated ({len(data)} B)")
            if google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
                raise damaged(
                    self.identifier, band, f"chunk {chunk} fails its crc32c checksum (damaged)"
                )
        elif codecs and codecs[-1] == "blosc":
            # No checksum (stored by an older release): Blosc would trust its header's size.
            cbytes = int.from_bytes(data[12:16], "little") if len(data) >= _BLOSC_HEADER else -1
            if cbytes != len(data):
                raise damaged(
                    self.identifier,
                    band,
                    f"chunk {chunk} is {len(data)} B where its Blosc header says {cbytes} B",
                )


__all__ = ["CHECKSUM_CODEC", "CheckedStore", "damaged", "with_checksum"]
