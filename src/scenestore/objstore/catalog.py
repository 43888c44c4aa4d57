"""What an object-storage store holds, and whether its committed bands are whole.

The same answers as :mod:`scenestore.inventory` and :mod:`scenestore.verify` give for a local
store, from listings and small metadata objects (verification reads every chunk once).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from scenestore.errors import SceneNotFoundError
from scenestore.inventory import SceneInfo
from scenestore.objstore.location import band_key, identifier_of_key, scene_key
from scenestore.objstore.scenes import TREE_SCHEME, ObjectScenes, chunk_digest, tree_checksum
from scenestore.verify import Damage

logger = logging.getLogger(__name__)


def list_scenes(scenes: ObjectScenes) -> list[SceneInfo]:
    """Every scene of the store, sorted by identifier (one listing per scene, plus one)."""
    infos = []
    for prefix in scenes.client.children():
        identifier = identifier_of_key(prefix)
        if identifier:
            infos.append(_info(scenes, identifier))
    return infos


def scene_info(scenes: ObjectScenes, identifier: str) -> SceneInfo:
    """One stored scene's inventory entry.

    Raises:
        SceneNotFoundError: If the scene is not in the store.
    """
    if not scenes.exists(identifier):
        raise SceneNotFoundError(
            f"Scene {identifier!r} is not in the store {str(scenes)!r}; expected one of the "
            "identifiers `scenestore ls` lists."
        )
    return _info(scenes, identifier)


def band_details(scenes: ObjectScenes, identifier: str) -> dict[str, dict[str, Any]]:
    """Each committed band's stored codec metadata and commit time."""
    details = {}
    for band in sorted(scenes.committed_bands(identifier)):
        record = scenes.read_commit(identifier, band)
        found = scenes.client.get(f"{band_key(identifier, band)}/zarr.json")
        meta = json.loads(found[0]) if found else {}
        details[band] = {
            "shape": tuple(meta.get("shape", ())),
            "dtype": meta.get("data_type"),
            "chunks": tuple(
                meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", ())
            ),
            "fill_value": meta.get("fill_value"),
            "codecs": [c["name"] for c in meta.get("codecs", [])],
            "attributes": meta.get("attributes", {}),
            "written_at": record.written_at if record else None,
        }
    return details


def verify_scene(scenes: ObjectScenes, identifier: str) -> list[Damage]:
    """Check every committed band of one scene against its record (empty: all good)."""
    damage = []
    for band in sorted(scenes.committed_bands(identifier)):
        problem = _check_band(scenes, identifier, band)
        if problem:
            damage.append(Damage(identifier, band, problem))
    return damage


def verify_store(
    scenes: ObjectScenes, identifiers: list[str] | None = None
) -> tuple[int, list[Damage]]:
    """Check the given scenes (all by default); return bands checked and damage found.

    Raises:
        SceneNotFoundError: If a named scene is not stored.
    """
    infos = (
        [scene_info(scenes, i) for i in identifiers] if identifiers else list_scenes(scenes)
    )
    checked, damage = 0, []
    for info in infos:
        checked += len(info.bands)
        damage += verify_scene(scenes, info.identifier)
    return checked, damage


def repair(scenes: ObjectScenes, damage: list[Damage]) -> None:
    """Withdraw damaged bands' commits and delete their arrays, under each scene's lock."""
    for item in damage:
        with scenes.lock(item.identifier):
            scenes.drop_commit(item.identifier, item.band)
            scenes.client.delete_prefix(band_key(item.identifier, item.band))
        logger.warning(
            "Dropped damaged band %s of %s: %s", item.band, item.identifier, item.problem
        )


def _info(scenes: ObjectScenes, identifier: str) -> SceneInfo:
    key = scene_key(identifier)
    found = scenes.client.get(f"{key}/zarr.json")
    try:
        attrs = json.loads(found[0]).get("attributes", {}) if found else {}
    except ValueError:
        attrs = {}
    from scenestore.profiles import tile_of

    return SceneInfo(
        identifier=identifier,
        bands=tuple(sorted(scenes.committed_bands(identifier))),
        size_bytes=sum(size for _, size in scenes.client.list(key)),
        datetime=attrs.get("datetime"),
        tile=tile_of({"id": attrs.get("stac_id", identifier), "properties": attrs}),
        cloud_cover=attrs.get("eo:cloud_cover"),
        attrs=attrs,
    )


def _check_band(scenes: ObjectScenes, identifier: str, band: str) -> str | None:
    record = scenes.read_commit(identifier, band)
    if record is None:  # withdrawn while we looked
        return None
    root = band_key(identifier, band)
    found = scenes.client.get(f"{root}/zarr.json")
    try:
        meta = json.loads(found[0]) if found else None
    except ValueError:
        meta = None
    if meta is None:
        return "array metadata missing or unreadable"
    shape = tuple(meta.get("shape", ()))
    chunks = tuple(meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", ()))
    if shape != tuple(record.shape):
        return f"shape {shape} differs from the committed {tuple(record.shape)}"
    if chunks != tuple(record.chunks):
        return f"chunks {chunks} differ from the committed {tuple(record.chunks)}"
    if record.checksum is None:
        return None
    # Both schemes in one pass over the chunks, in name order: a store copied from a local
    # one keeps the local records (blake2b over the bytes themselves).
    digests: dict[str, tuple[int, bytes]] = {}
    flat = hashlib.blake2b(digest_size=16)
    for key, _ in scenes.client.list(f"{root}/c"):
        got = scenes.client.get(key)
        if got is None:
            return f"chunk {key!r} vanished while verifying"
        data, name = got[0], key[len(root) + 1 :]
        digests[name] = (len(data), chunk_digest(data))
        flat.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    if len(digests) != record.chunk_count:
        return f"{len(digests)} chunk files where {record.chunk_count} were committed"
    if record.checksum.startswith(f"{TREE_SCHEME}:"):
        found_sum = tree_checksum(digests)
    else:
        found_sum = f"blake2b:{flat.hexdigest()}"
    if found_sum != record.checksum:
        return "chunk bytes differ from the committed checksum"
    return None
