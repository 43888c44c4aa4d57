"""Removing scenes safely, also while an ingest writes to the same store.

A scene is removed under its writer lock (the one :class:`~scenestore.manager.StoreManager`
takes), in the order the commit protocol needs:

1. every commit record is withdrawn, so the scene stops counting as present (and complete) at
   once for every reader: from here on no listing shows a committed band of it, so none can
   show a committed band whose data is gone;
2. on a store that can rename (a directory), the scene is moved into ``.trash/`` in one atomic
   step, so it vanishes from every listing at once, and deleted from there; on one that cannot
   (an object store), every object but the group's ``zarr.json`` is deleted, then that last;
3. the scene's quicklook goes with it.

A remover killed mid-way leaves a scene without committed bands (which the next ingest
replaces, as it does a killed writer's leftovers, and ``rm`` still finds and finishes) or a
directory in ``.trash`` (which the next removal deletes). A scene whose lock is held is not
touched: it is reported busy. On a directory nothing is ever followed out of the store
(:mod:`scenestore.store._local`): a linked scene, ``_commits``, ``.trash`` or ``.quicklooks``
makes the removal refuse with :class:`~scenestore.errors.UnsafePathError`.

What to remove is picked by pure selectors over the inventory (:func:`select_before`,
:func:`select_not_in`); the ``--not-in`` file is an id list (:mod:`scenestore.idlist`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from scenestore.aoi import sensing_day
from scenestore.errors import (
    InvalidRequestError,
    LeaseHeldError,
    SceneBusyError,
    SceneNotFoundError,
)
from scenestore.store import index
from scenestore.store.inventory import SceneInfo, check_store, scene_info
from scenestore.store.layout import TRASH_DIR, lock_key, quicklook_key, scene_key
from scenestore.store.scenes import SceneStore


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


def remove_scene(scenes: SceneStore, identifier: str, *, wait_seconds: float = 0.0) -> int:
    """Remove one scene under its writer lock; return the bytes it occupied.

    Args:
        scenes: The store.
        identifier: The scene to remove.
        wait_seconds: How long to wait for another writer's lock (0: try once).

    Raises:
        SceneNotFoundError: If the scene is not in the store.
        SceneBusyError: If another writer holds the scene's lock for longer than
            ``wait_seconds``; the scene is left untouched.
        StoreError: If the store cannot be read or written.
    """
    size = scene_info(scenes, identifier).size_bytes
    client, key = scenes.client, scene_key(identifier)
    trash = None
    try:
        with scenes.lock(identifier, timeout_s=max(wait_seconds, 0.0)):
            if not scenes.exists(identifier):  # removed by another remover while we waited
                return 0
            # 1. withdraw every commit (the index first): from here on no reader counts the
            # scene as present.
            index.forget(client, identifier)
            for band in sorted(scenes.recorded_bands(identifier)):
                scenes.drop_commit(identifier, band)
            if client.supports_rename:
                # 2. one atomic rename takes the scene out of every listing.
                trash = f"{TRASH_DIR}/{key}.{uuid.uuid4().hex[:8]}"
                client.move(key, trash)
            else:
                # 2. the data, all but the group metadata (which keeps the scene findable).
                group_meta = f"{key}/zarr.json"
                client.delete([k for k, _ in client.list(key) if k != group_meta])
                client.delete([group_meta])
    except LeaseHeldError:
        raise SceneBusyError(
            f"Scene {identifier!r} is being written by another process (its lock "
            f"{client.href(lock_key(identifier))!r} is held); expected no ingest of it running: "
            "run again when the ingest is done."
        ) from None
    # 3. nothing can find it any more: delete it (and its quicklook) outside the lock.
    if trash is not None:
        client.delete_prefix(trash)
    client.delete([quicklook_key(identifier)])
    return size


def remove_scenes(
    scenes: SceneStore, identifiers: Sequence[str], *, wait_seconds: float = 0.0
) -> list[Removal]:
    """Remove several scenes; a busy scene is skipped and reported, the others go on.

    Every identifier is checked before anything is removed, so a typo removes nothing.

    Raises:
        StoreError: If the store is missing or cannot be read.
        InvalidIdentifierError: If an identifier is not safe.
        SceneNotFoundError: If any scene is not in the store (nothing is removed then).
    """
    check_store(scenes)
    infos = [scene_info(scenes, i) for i in dict.fromkeys(identifiers)]
    for name in scenes.client.children(TRASH_DIR):  # what a remover killed mid-way left
        scenes.client.delete_prefix(f"{TRASH_DIR}/{name}")
    results = []
    for info in infos:
        try:
            size = remove_scene(scenes, info.identifier, wait_seconds=wait_seconds)
        except SceneBusyError as err:
            results.append(Removal(info.identifier, info.size_bytes, False, str(err)))
        except SceneNotFoundError:  # another remover was faster: it is gone all the same
            results.append(Removal(info.identifier, 0, True))
        else:
            results.append(Removal(info.identifier, size, True))
    return results


def select_before(infos: Iterable[SceneInfo], before: date) -> list[SceneInfo]:
    """Return the scenes sensed before ``before`` (UTC day); scenes without a date are kept."""
    return [i for i in infos if (day := sensing_day(i.datetime)) is not None and day < before]


def select_not_in(infos: Iterable[SceneInfo], keep: set[str]) -> list[SceneInfo]:
    """Return the scenes whose identifier and source item id are both absent from ``keep``."""
    return [i for i in infos if i.identifier not in keep and i.item_id not in keep]


def select_ingested_before(infos: Iterable[SceneInfo], cutoff: datetime) -> list[SceneInfo]:
    """Return the scenes whose newest band was committed before ``cutoff`` (aware, UTC)."""
    return [i for i in infos if (when := _ingested(i)) is not None and when < cutoff]


def select_to_fit(
    infos: Iterable[SceneInfo], max_bytes: int, *, already: Iterable[SceneInfo] = ()
) -> list[SceneInfo]:
    """Return the least recently ingested scenes to remove so the rest fits in ``max_bytes``.

    Args:
        infos: Every scene of the store.
        max_bytes: The size the store must fit in.
        already: Scenes chosen for removal anyway (``--older-than``); they are freed first.
    """
    chosen = {i.identifier: i for i in already}
    rest = sorted(
        (i for i in infos if i.identifier not in chosen),
        key=lambda i: (i.ingested_at or "", i.identifier),
    )
    total = sum(i.size_bytes for i in rest)
    picked = list(chosen.values())
    for info in rest:
        if total <= max_bytes:
            break
        picked.append(info)
        total -= info.size_bytes
    return picked


_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50,
}  # fmt: skip
_AGE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str, *, name: str = "--max-size") -> int:
    """Bytes of a size such as ``500GB``, ``1.5 TiB`` or ``1000000``.

    Raises:
        InvalidRequestError: If it is not a non-negative number with a known unit.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise InvalidRequestError(
            f"{name} {text!r} is not a size; expected a number and a unit such as 500GB, "
            "750MB or 2TiB."
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_age(text: str, *, now: datetime, name: str = "--older-than") -> datetime:
    """The cutoff time of an age such as ``30d``, ``12h``, ``2w`` or a day ``2024-06-01``.

    Raises:
        InvalidRequestError: If it is neither.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([mhdw])\s*", text.lower())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _AGE_UNITS[match.group(2)])
    try:
        return datetime.combine(date.fromisoformat(text.strip()), time(), tzinfo=UTC)
    except ValueError:
        raise InvalidRequestError(
            f"{name} {text!r} is not an age; expected a number of minutes, hours, days or "
            "weeks (30m, 12h, 30d, 2w) or a day YYYY-MM-DD."
        ) from None


def _ingested(info: SceneInfo) -> datetime | None:
    if not info.ingested_at:
        return None
    try:
        when = datetime.fromisoformat(info.ingested_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


__all__ = [
    "TRASH_DIR",
    "Removal",
    "remove_scene",
    "remove_scenes",
    "parse_age",
    "parse_size",
    "select_before",
    "select_ingested_before",
    "select_not_in",
    "select_to_fit",
]
