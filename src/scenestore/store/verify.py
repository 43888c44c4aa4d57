"""Check committed bands against their commit records, and drop the damaged ones.

A commit record promises a band's shape, chunking and the exact set and bytes of its chunks
(:class:`~scenestore.store.records.CommitRecord`). Verification re-reads the array metadata
and re-hashes every chunk in the scheme the record names; repair withdraws the commit of a
damaged band and deletes its array, under the scene's lock, so the next ingest fetches it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from scenestore.errors import DamagedSceneError
from scenestore.store import index
from scenestore.store.inventory import group_attrs, list_scenes, scene_info
from scenestore.store.layout import band_key, scene_key, staging_key
from scenestore.store.records import TREE_SCHEME, ChecksumBuilder, layout_mismatch
from scenestore.store.scenes import SceneStore

logger = logging.getLogger(__name__)

#: What a :class:`Damage` is about, and so what ``--repair`` does with it.
BAND, RECORD, GROUP, STAGING = "band", "record", "group", "staging"


@dataclass(frozen=True)
class Damage:
    """One problem of a stored scene, reported as one line.

    Attributes:
        identifier: Scene identifier.
        band: Band name ("-" for the scene group or its staging area).
        problem: What does not match, in words.
        kind: ``band`` (array metadata or chunks disagree with the record; repair drops the
            band), ``record`` (the commit record is garbage; repair drops it and the band),
            ``group`` (the scene's ``zarr.json`` is missing or garbage; repair drops every
            band, so the next ingest re-creates the scene) or ``staging`` (an interrupted
            write's ``_staging`` left behind; repair removes it).
    """

    identifier: str
    band: str
    problem: str
    kind: str = BAND


def verify_scene(scenes: SceneStore, identifier: str) -> list[Damage]:
    """Check the scene group, every committed band and leftover staging of one scene."""
    damage = []
    bands = sorted(scenes.recorded_bands(identifier))
    if bands:
        _attrs, problem = group_attrs(scenes.client.get(f"{scene_key(identifier)}/zarr.json"))
        if problem:
            damage.append(
                Damage(identifier, "-", f"scene group metadata zarr.json is {problem}", GROUP)
            )
    for band in bands:
        try:
            problem = _check_band(scenes, identifier, band)
        except DamagedSceneError as err:  # a garbage record: say why in one line
            cause = str(err.__cause__ or "") or "malformed"
            problem = f"commit record is not a valid record ({cause.splitlines()[0][:80]})"
            damage.append(Damage(identifier, band, problem, RECORD))
            continue
        if problem:
            damage.append(Damage(identifier, band, problem))
    if scenes.client.list(staging_key(identifier)) and not scenes.writer_active(identifier):
        damage.append(Damage(identifier, "-", "leftover _staging of an interrupted write", STAGING))
    return damage


def verify_store(
    scenes: SceneStore, identifiers: list[str] | None = None
) -> tuple[int, list[Damage]]:
    """Check the given scenes (all scenes by default).

    Returns:
        The number of bands checked and the damage found.

    Raises:
        StoreError: If the store is missing or cannot be read.
        SceneNotFoundError: If a named scene is not stored.
    """
    infos = (
        [scene_info(scenes, i) for i in identifiers]
        if identifiers
        else list_scenes(scenes, scan=True)
    )
    checked, damage = 0, []
    for info in infos:
        checked += len(info.bands)
        damage += verify_scene(scenes, info.identifier)
    return checked, damage


def repair(scenes: SceneStore, damage: list[Damage]) -> None:
    """Withdraw the commits of damaged bands and delete their arrays (under the scene lock)."""
    for item in damage:
        with scenes.lock(item.identifier):
            if item.kind == STAGING:
                scenes.client.delete_prefix(staging_key(item.identifier))
            else:
                # No group metadata: drop every band, so the next ingest re-creates the scene.
                bands = (
                    sorted(scenes.recorded_bands(item.identifier))
                    if item.kind == GROUP
                    else [item.band]
                )
                index.withdraw(scenes.client, item.identifier, bands)
                for band in bands:
                    scenes.drop_commit(item.identifier, band)
                    scenes.client.delete_prefix(band_key(item.identifier, band))
        logger.warning(
            "Dropped damaged band %s of %s: %s", item.band, item.identifier, item.problem
        )


def _check_band(scenes: SceneStore, identifier: str, band: str) -> str | None:
    record = scenes.read_commit(identifier, band)
    if record is None:  # withdrawn while we looked
        return None
    try:
        meta = scenes.array_meta(identifier, band)
    except DamagedSceneError:
        return "array metadata missing or unreadable"
    mismatch = layout_mismatch(meta, record)
    if mismatch is not None:
        return mismatch
    if record.checksum is None:
        return None  # a record from before checksums: nothing more to compare
    root = band_key(identifier, band)
    builder = ChecksumBuilder(record.checksum.split(":", 1)[0] or TREE_SCHEME)
    for key, _ in scenes.client.list(f"{root}/c"):  # key order is name order
        data = scenes.client.get(key)
        if data is None:
            return f"chunk {key[len(root) + 1 :]!r} vanished while verifying"
        builder.add(key[len(root) + 1 :], data)
    if len(builder.digests) != record.chunk_count:
        return f"{len(builder.digests)} chunk files where {record.chunk_count} were committed"
    if builder.checksum() != record.checksum:
        return "chunk bytes differ from the committed checksum"
    return None


__all__ = [
    "BAND",
    "GROUP",
    "RECORD",
    "STAGING",
    "Damage",
    "repair",
    "verify_scene",
    "verify_store",
]
