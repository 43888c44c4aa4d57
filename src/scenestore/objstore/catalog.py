"""What an object-storage store holds, whether its committed bands are whole, and its STAC.

The same answers as :mod:`scenestore.inventory`, :mod:`scenestore.verify` and
:mod:`scenestore.catalog` give for a local store, from listings and small metadata objects
(verification reads every chunk once).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from scenestore.commit import layout_mismatch
from scenestore.errors import DamagedSceneError, SceneNotFoundError
from scenestore.inventory import SceneInfo, array_details, group_attrs
from scenestore.objstore.location import band_key, identifier_of_key, scene_key, url_of
from scenestore.objstore.scenes import TREE_SCHEME, ObjectScenes, chunk_digest, tree_checksum
from scenestore.verify import GROUP, RECORD, STAGING, Damage, record_problem, verify_each

logger = logging.getLogger(__name__)


def list_scenes(scenes: ObjectScenes) -> list[SceneInfo]:
    """Every scene of the store, sorted by identifier (one listing per scene, plus one)."""
    infos = []
    for prefix in scenes.client.children():
        identifier = identifier_of_key(prefix)
        if identifier:
            infos.append(_info(scenes, identifier))
    return infos


def check_store(scenes: ObjectScenes) -> ObjectScenes:
    """Read the store once (a delimited listing), so a missing bucket is said as such.

    Raises:
        StoreError: If the bucket does not exist or the store cannot be reached.
    """
    scenes.client.children()
    return scenes


def require_scene(scenes: ObjectScenes, identifier: str) -> str:
    """Return ``identifier`` if the scene is stored (one HEAD request).

    Raises:
        InvalidIdentifierError: If the identifier is not safe.
        SceneNotFoundError: If the scene is not in the store.
    """
    if not scenes.exists(identifier):
        raise SceneNotFoundError(
            f"Scene {identifier!r} is not in the store {str(scenes)!r}; expected one of the "
            "identifiers `scenestore ls` lists."
        )
    return identifier


def scene_info(scenes: ObjectScenes, identifier: str) -> SceneInfo:
    """One stored scene's inventory entry.

    Raises:
        SceneNotFoundError: If the scene is not in the store.
    """
    return _info(scenes, require_scene(scenes, identifier))


def band_details(scenes: ObjectScenes, identifier: str) -> dict[str, dict[str, Any]]:
    """Each committed band's stored codec metadata and commit time."""
    details = {}
    for band in sorted(scenes.committed_bands(identifier)):
        try:
            record = scenes.read_commit(identifier, band)
        except DamagedSceneError:
            details[band] = array_details(None, None, problem="commit record damaged")
            continue
        found = scenes.client.get(f"{band_key(identifier, band)}/zarr.json")
        try:
            meta = json.loads(found[0]) if found else None
        except ValueError:
            meta = None
        problem = None if meta is not None else (
            "array zarr.json missing" if found is None else "array zarr.json unreadable"
        )
        details[band] = array_details(meta, record, problem=problem)
    return details


def verify_scene(scenes: ObjectScenes, identifier: str) -> list[Damage]:
    """Check every committed band of one scene against its record (empty: all good)."""
    damage = []
    bands = sorted(scenes.committed_bands(identifier))
    found = scenes.client.get(f"{scene_key(identifier)}/zarr.json") if bands else None
    if bands:
        group_problem = "missing" if found is None else _group_problem(found[0])
        if group_problem:
            damage.append(
                Damage(identifier, "-", f"scene group metadata zarr.json is {group_problem}", GROUP)
            )
    for band in bands:
        try:
            problem = _check_band(scenes, identifier, band)
        except DamagedSceneError as err:
            damage.append(Damage(identifier, band, record_problem(err), RECORD))
            continue
        if problem:
            damage.append(Damage(identifier, band, problem))
    return damage


def _group_problem(payload: bytes) -> str | None:
    try:
        return group_attrs(json.loads(payload))[1]
    except ValueError:
        return "unreadable"


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
    return verify_each(infos, lambda identifier: verify_scene(scenes, identifier))


def repair(scenes: ObjectScenes, damage: list[Damage]) -> None:
    """Withdraw damaged bands' commits and delete their arrays, under each scene's lock."""
    for item in damage:
        with scenes.lock(item.identifier):
            if item.kind == STAGING:
                scenes.client.delete_prefix(f"{scene_key(item.identifier)}/_staging")
                continue
            # No group metadata: drop every band, so the next ingest re-creates the scene.
            bands = (
                sorted(scenes.committed_bands(item.identifier))
                if item.kind == GROUP
                else [item.band]
            )
            for band in bands:
                scenes.drop_commit(item.identifier, band)
                scenes.client.delete_prefix(band_key(item.identifier, band))
        logger.warning(
            "Dropped damaged band %s of %s: %s", item.band, item.identifier, item.problem
        )


def write_catalog(scenes: ObjectScenes, out: Path, *, title: str | None = None) -> Any:
    """Write a static STAC catalog of every stored scene to the local directory ``out``.

    As :func:`scenestore.catalog.write_catalog`, but asset hrefs are the absolute URLs of the
    objects (``s3://bucket/prefix/<id>.zarr/<BAND>`` for a band's zarr array, the group, the
    quicklook), since no path relative to a local catalog reaches an object store.

    Returns:
        The written ``pystac.Catalog``, read back.

    Raises:
        StoreError: If the store cannot be read.
        InvalidRequestError: If ``out`` is inside a local scene, a file, or holds other files.
    """
    import zarr

    from scenestore.catalog import build_item, check_catalog_dir, save_catalog
    from scenestore.objstore.quicklook import quicklook_url

    infos = [i for i in list_scenes(scenes) if i.bands]
    out = check_catalog_dir(out, None)
    items = []
    for info in infos:
        try:
            group = zarr.open_group(
                scenes.zarr_store, path=scene_key(info.identifier), mode="r"
            )
            items.append(
                build_item(
                    info,
                    group,
                    scenes.committed_bands(info.identifier),
                    scene_href=url_of(scenes.url, scene_key(info.identifier)),
                    thumbnail_href=quicklook_url(scenes, info.identifier),
                )
            )
        except (FileNotFoundError, KeyError):  # removed (rm/prune) since it was listed
            logger.info("Scene %s was removed while the catalog was written", info.identifier)
    return save_catalog(
        items,
        out,
        title=title or f"Scenes in {scenes.url}",
        description=f"Sentinel-2 L2A scenes stored by scenestore in the store {str(scenes)!r}",
        relative_assets=False,
    )


def _info(scenes: ObjectScenes, identifier: str) -> SceneInfo:
    key = scene_key(identifier)
    found = scenes.client.get(f"{key}/zarr.json")
    try:
        attrs, group_problem = group_attrs(json.loads(found[0])) if found else ({}, "missing")
    except ValueError:
        attrs, group_problem = {}, "unreadable"
    from scenestore.profiles import tile_of

    bands = tuple(sorted(scenes.committed_bands(identifier)))
    return SceneInfo(
        identifier=identifier,
        bands=bands,
        damaged=(f"group zarr.json {group_problem}",) if group_problem and bands else (),
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
    mismatch = layout_mismatch(meta, record)
    if mismatch is not None:
        return mismatch
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
