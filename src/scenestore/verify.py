"""Check committed bands against their commit records, and drop the damaged ones.

A commit record promises a band's shape, chunking and the exact set and bytes of its chunk
files (:class:`scenestore.commit.CommitRecord`). Verification re-reads the array metadata and
re-hashes every chunk file; repair withdraws the commit of a damaged band and removes its
array, so the next ingest fetches it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from scenestore.commit import committed_bands, drop_commit, layout_mismatch, read_commit
from scenestore.inventory import SceneInfo, check_store, list_scenes
from scenestore.layout import lock_path, scene_path
from scenestore.storage import fingerprint, remove_arrays

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Damage:
    """One committed band that does not match its commit record.

    Attributes:
        identifier: Scene identifier.
        band: Band name.
        problem: What does not match, in words.
    """

    identifier: str
    band: str
    problem: str


def verify_scene(store: Path, identifier: str) -> list[Damage]:
    """Check every committed band of one scene; return what is damaged (empty: all good)."""
    scene = scene_path(store, identifier)
    damage = []
    for band in sorted(committed_bands(scene)):
        problem = _check_band(scene, band)
        if problem:
            damage.append(Damage(identifier, band, problem))
    return damage


def verify_store(store: Path, identifiers: list[str] | None = None) -> tuple[int, list[Damage]]:
    """Check the given scenes (all scenes by default).

    Returns:
        The number of bands checked and the damage found.

    Raises:
        StoreError: If the store is missing or not a directory.
        SceneNotFoundError: If a named scene is not stored.
    """
    from scenestore.inventory import scene_info

    check_store(store)
    infos = [scene_info(store, i) for i in identifiers] if identifiers else list_scenes(store)
    return verify_each(infos, lambda identifier: verify_scene(store, identifier))


def verify_each(
    infos: Iterable[SceneInfo], verify: Callable[[str], list[Damage]]
) -> tuple[int, list[Damage]]:
    """Verify each listed scene with ``verify``; return bands checked and the damage found.

    Args:
        infos: The scenes, as the inventory lists them.
        verify: Checks one scene's committed bands by identifier (local or object store).
    """
    checked, damage = 0, []
    for info in infos:
        checked += len(info.bands)
        damage += verify(info.identifier)
    return checked, damage


def repair(store: Path, damage: list[Damage]) -> None:
    """Withdraw the commits of damaged bands and delete their arrays (under the scene lock)."""
    for item in damage:
        scene = scene_path(store, item.identifier)
        with FileLock(lock_path(store, item.identifier)):
            drop_commit(scene, item.band)
            remove_arrays(scene, [item.band])
        logger.warning("Dropped damaged band %s of %s: %s", item.band, item.identifier,
                       item.problem)


def _check_band(scene: Path, band: str) -> str | None:
    record = read_commit(scene, band)
    if record is None:  # withdrawn while we looked
        return None
    try:
        meta = json.loads((scene / band / "zarr.json").read_text())
    except (OSError, ValueError) as err:
        return f"array metadata unreadable ({type(err).__name__})"
    mismatch = layout_mismatch(meta, record)
    if mismatch is not None:
        return mismatch
    if record.checksum is None:
        return None  # a record from before checksums: nothing more to compare
    found = fingerprint(scene / band)
    if found.chunk_count != record.chunk_count:
        return f"{found.chunk_count} chunk files where {record.chunk_count} were committed"
    if found.checksum != record.checksum:
        return "chunk bytes differ from the committed checksum"
    return None
