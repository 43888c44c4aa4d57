"""Removing scenes from a store safely, also while an ingest writes to the same store.

A scene is removed under its writer lock (``<store>/.locks/<id>.lock``, the one
:class:`~scenestore.manager.StoreManager` takes), in the order the commit protocol needs:

1. every commit record is withdrawn, so the scene stops counting as present (and complete) at
   once for every reader (:func:`scenestore.commit.committed_bands`);
2. the scene directory is renamed into ``<store>/.trash/`` (atomic on POSIX), so it vanishes
   from every listing in one step;
3. the renamed directory (arrays, then the group) is deleted.

A remover killed between steps leaves either a scene without committed bands (which the next
ingest replaces, as it does a killed writer's leftovers) or a directory in ``.trash`` (which the
next removal deletes). A scene whose lock is held is not touched: it is reported busy.

Nothing is ever followed out of the store (:mod:`scenestore.fsafety`): a scene directory,
``_commits``, ``.trash``, ``.locks`` or ``.quicklooks`` that is a symlink makes the removal
refuse with :class:`~scenestore.errors.UnsafePathError` before anything is changed, and only
real directories inside the store are deleted.

What to remove is picked by pure selectors over the inventory (:func:`select_before`,
:func:`select_not_in`); :func:`read_keep_list` reads the ``--not-in`` file. The selectors serve
object stores too; their removal is :mod:`scenestore.objstore.removal` (one entry point for
both: :func:`scenestore.stores.remove_scenes`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from scenestore.commit import committed_bands, drop_commit
from scenestore.errors import (
    InvalidRequestError,
    SceneBusyError,
    SceneNotFoundError,
    StoreError,
    UnsafePathError,
)
from scenestore.fsafety import inside_store, mkdir_inside, remove_tree_inside, unlink_inside
from scenestore.ids import validate_identifier
from scenestore.inventory import SceneInfo, check_store, scene_info
from scenestore.layout import COMMITS_DIR, lock_path, scene_path
from scenestore.quicklook import quicklook_path

#: Where scenes being deleted are moved first (hidden: never listed as a scene).
TRASH_DIR = ".trash"


@dataclass(frozen=True)
class Removal:
    """What happened to one scene a removal was asked for.

    Attributes:
        identifier: Scene identifier.
        size_bytes: Bytes on disk the scene occupied (freed when ``removed``).
        removed: True once the scene is gone.
        reason: Why it was not removed (another process holds its lock), else None.
    """

    identifier: str
    size_bytes: int
    removed: bool
    reason: str | None = None


def remove_scene(store: Path, identifier: str, *, wait_seconds: float = 0.0) -> int:
    """Remove one scene under its writer lock; return the bytes it occupied.

    Args:
        store: The store directory.
        identifier: The scene to remove.
        wait_seconds: How long to wait for another process's lock (0: try once).

    Raises:
        SceneNotFoundError: If the scene is not in the store.
        SceneBusyError: If another process holds the scene's lock for longer than
            ``wait_seconds``; the scene is left untouched.
        StoreError: If the store is not writable.
    """
    size = scene_info(store, identifier).size_bytes
    # filelock opens the lock file with O_TRUNC: a linked .locks or lock file is refused first.
    lock_file = inside_store(store, lock_path(store, identifier))
    lock = FileLock(lock_file, timeout=max(wait_seconds, 0.0))
    try:
        lock.acquire()
    except Timeout:
        raise SceneBusyError(
            f"Scene {identifier!r} is being written by another process (its lock "
            f"{str(lock_path(store, identifier))!r} is held); expected no ingest of it running: "
            "run again when the ingest is done."
        ) from None
    except OSError as err:  # after Timeout, which is an OSError too
        raise _not_writable(store, err) from err
    try:
        scene = scene_path(store, identifier)
        if not scene.is_dir():  # removed by another remover while we waited
            return 0
        # Re-checked under the lock, before anything changes: a link planted since scene_info
        # (the scene, _commits, .trash, .quicklooks) must not be followed.
        inside_store(store, scene / COMMITS_DIR)
        inside_store(store, quicklook_path(store, identifier).parent)
        trash = mkdir_inside(store, store / TRASH_DIR)
        # 1. withdraw every commit: from here on no reader counts the scene as present.
        for band in sorted(committed_bands(scene)):
            drop_commit(scene, band)
        # 2. one atomic rename takes the scene out of every listing.
        target = trash / f"{scene.name}.{uuid.uuid4().hex[:8]}"
        os.replace(scene, target)
    except UnsafePathError:
        raise
    except OSError as err:
        raise _not_writable(store, err) from err
    finally:
        lock.release()
    # 3. nothing can find it any more: delete it (and its quicklook) outside the lock.
    _delete(store, target)
    unlink_inside(store, quicklook_path(store, identifier))
    return size


def remove_scenes(
    store: Path, identifiers: Sequence[str], *, wait_seconds: float = 0.0
) -> list[Removal]:
    """Remove several scenes; a busy scene is skipped and reported, the others go on.

    Every identifier is checked before anything is removed, so a typo removes nothing.

    Raises:
        StoreError: If the store is missing or not a directory.
        InvalidIdentifierError: If an identifier is not safe.
        SceneNotFoundError: If any scene is not in the store (nothing is removed then).
    """
    check_store(store)
    infos = [scene_info(store, i) for i in dict.fromkeys(identifiers)]
    empty_trash(store)
    return remove_each(
        infos, lambda identifier: remove_scene(store, identifier, wait_seconds=wait_seconds)
    )


def remove_each(infos: Sequence[SceneInfo], remove: Callable[[str], int]) -> list[Removal]:
    """Remove each scene with ``remove``; a busy scene is skipped and reported, the others go on.

    Args:
        infos: The scenes, as the inventory lists them.
        remove: Removes one scene by identifier and returns the bytes it freed.

    Returns:
        One :class:`Removal` per scene, in order.
    """
    results = []
    for info in infos:
        try:
            size = remove(info.identifier)
        except SceneBusyError as err:
            results.append(Removal(info.identifier, info.size_bytes, False, str(err)))
        except SceneNotFoundError:  # another remover was faster: it is gone all the same
            results.append(Removal(info.identifier, 0, True))
        else:
            results.append(Removal(info.identifier, size, True))
    return results


def empty_trash(store: Path) -> None:
    """Delete what a remover killed mid-way left in ``<store>/.trash``."""
    trash = inside_store(store, store / TRASH_DIR)
    if trash.is_dir():
        for entry in trash.iterdir():
            if entry.is_symlink():  # left by an older remover: drop the link, never its target
                entry.unlink(missing_ok=True)
            else:
                _delete(store, entry)


def select_before(infos: Iterable[SceneInfo], before: date) -> list[SceneInfo]:
    """Return the scenes sensed before ``before`` (UTC day); scenes without a date are kept."""
    return [i for i in infos if (day := sensing_day(i)) is not None and day < before]


def select_not_in(infos: Iterable[SceneInfo], keep: set[str]) -> list[SceneInfo]:
    """Return the scenes whose identifier and source item id are both absent from ``keep``."""
    return [
        i for i in infos if i.identifier not in keep and i.attrs.get("stac_id") not in keep
    ]


def sensing_day(info: SceneInfo) -> date | None:
    """The UTC sensing day of a scene, or None when its attributes record no datetime."""
    if not info.datetime:
        return None
    try:
        return datetime.fromisoformat(str(info.datetime).replace("Z", "+00:00")).date()
    except ValueError:
        return None


def read_keep_list(path: Path) -> set[str]:
    """Read the scenes to keep from a ``--not-in`` file.

    Accepted forms:

    * a text file with one scene identifier (or STAC item id) per line; blank lines and lines
      starting with ``#`` are ignored;
    * a GeoJSON FeatureCollection of STAC items (a STAC ItemCollection, e.g. a saved search) or
      a single STAC item: their ``id`` values.

    Returns:
        The identifiers and item ids to keep.

    Raises:
        InvalidRequestError: If the file cannot be read, is broken JSON, an entry is not a safe
            identifier, or it names nothing at all.
    """
    expected = (
        "expected a text file of scene identifiers, one per line, or a STAC ItemCollection "
        "(GeoJSON FeatureCollection) JSON file"
    )
    try:
        text = path.read_text()
    except OSError as err:
        raise InvalidRequestError(
            f"Cannot read keep list {str(path)!r}: {err.strerror}; {expected}."
        ) from err
    if text.lstrip().startswith("{"):
        names = _item_ids(text, path, expected)
    else:
        names = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    if not names:
        raise InvalidRequestError(
            f"Keep list {str(path)!r} names no scene, so every scene would be pruned; {expected}."
        )
    for name in names:
        validate_identifier(name)
    return set(names)


def _item_ids(text: str, path: Path, expected: str) -> list[str]:
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise InvalidRequestError(
            f"Keep list {str(path)!r} is not valid JSON ({err}); {expected}."
        ) from err
    features = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    if doc.get("type") not in ("FeatureCollection", "Feature") or not isinstance(features, list):
        raise InvalidRequestError(
            f"Keep list {str(path)!r} is JSON of type {doc.get('type')!r}; {expected}."
        )
    ids = [f.get("id") for f in features if isinstance(f, dict)]
    if any(not isinstance(i, str) for i in ids):
        raise InvalidRequestError(
            f"Keep list {str(path)!r} has a feature without a string 'id'; {expected}."
        )
    return ids


def _not_writable(store: Path, err: OSError) -> StoreError:
    return StoreError(
        f"Store {str(store)!r} is not writable ({err.strerror}); expected a directory this user "
        "can write to."
    )


def _delete(store: Path, path: Path) -> None:
    try:
        remove_tree_inside(store, path)
    except UnsafePathError:
        raise
    except OSError as err:
        raise StoreError(
            f"Cannot delete {str(path)!r}: {err.strerror}; expected a store this user can write."
        ) from err


__all__ = [
    "TRASH_DIR",
    "Removal",
    "empty_trash",
    "read_keep_list",
    "remove_each",
    "remove_scene",
    "remove_scenes",
    "select_before",
    "select_not_in",
    "sensing_day",
]
