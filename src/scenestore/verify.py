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

from filelock import FileLock, Timeout

from scenestore.commit import committed_bands, drop_commit, layout_mismatch, read_commit
from scenestore.errors import DamagedSceneError
from scenestore.fsafety import checked_scene, inside_store
from scenestore.inventory import SceneInfo, check_store, list_scenes
from scenestore.layout import STAGING_DIR, lock_path
from scenestore.storage import clear_staging, fingerprint, remove_arrays

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


def verify_scene(store: Path, identifier: str) -> list[Damage]:
    """Check the scene group and every committed band of one scene (empty: all good)."""
    from scenestore.inventory import read_group_attrs

    scene = checked_scene(store, identifier, committed=True)  # links refused, never followed
    damage = []
    bands = sorted(committed_bands(scene))
    _attrs, group_problem = read_group_attrs(scene / "zarr.json")
    if group_problem and bands:
        damage.append(
            Damage(identifier, "-", f"scene group metadata zarr.json is {group_problem}", GROUP)
        )
    for band in bands:
        try:
            problem = _check_band(scene, band)
        except DamagedSceneError as err:
            damage.append(Damage(identifier, band, record_problem(err), RECORD))
            continue
        if problem:
            damage.append(Damage(identifier, band, problem))
    return damage


def record_problem(err: DamagedSceneError) -> str:
    cause = err.__cause__
    detail = str(cause).splitlines()[0][:80] if cause is not None and str(cause) else "malformed"
    return f"commit record is not a valid record ({detail})"


def leftover_staging(store: Path, identifier: str) -> list[Damage]:
    """A ``_staging`` area no writer holds the lock of: an interrupted write's leftovers."""
    scene = checked_scene(store, identifier, entries=[STAGING_DIR])
    if not (scene / STAGING_DIR).exists() or _writer_active(store, identifier):
        return []
    return [Damage(identifier, "-", "leftover _staging of an interrupted write", STAGING)]


def _writer_active(store: Path, identifier: str) -> bool:
    """Whether a writer holds the scene's lock now (never creates a lock file)."""
    path = inside_store(store, lock_path(store, identifier))  # FileLock truncates: no links
    if not path.exists():
        return False
    try:
        with FileLock(path, timeout=0):
            return False
    except Timeout:
        return True
    except OSError:  # a read-only store: no writer can be running in it either
        return False


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
    return verify_each(
        infos, lambda ident: verify_scene(store, ident) + leftover_staging(store, ident)
    )


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
        # Nothing is deleted through a link: the scene, _commits, bands, _staging, .locks.
        scene = checked_scene(store, item.identifier, entries=[STAGING_DIR], committed=True)
        with FileLock(inside_store(store, lock_path(store, item.identifier))):
            if item.kind == STAGING:
                clear_staging(scene)
            else:
                # No group metadata: drop every band, so the next ingest re-creates the scene.
                bands = sorted(committed_bands(scene)) if item.kind == GROUP else [item.band]
                for band in bands:
                    drop_commit(scene, band)
                remove_arrays(scene, bands)
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
