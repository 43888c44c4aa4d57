"""Removing scenes from an object store safely, also while an ingest writes to the same store.

The guarantees of :mod:`scenestore.removal`, without rename. A scene is removed under its
lease lock (``.locks/<id>.lock``, the one writers take, :mod:`scenestore.objstore.lease`), in
this order:

1. every commit record is deleted, so the scene stops counting as present (and complete) at
   once for every reader: from here on no listing shows a committed band of it, so none can
   show a committed band whose data is gone;
2. every other object of the scene (band arrays, grid, ``_commits/zarr.json``, staging) is
   deleted, except the group's own ``zarr.json``;
3. the group's ``zarr.json`` is deleted last, and with it the scene's quicklook object.

There is no atomic rename on an object store, so between steps 1 and 3 ``ls`` lists the
scene with no committed band. A remover killed there leaves exactly that: a scene the next
ingest replaces (as it does a killed writer's leftovers) and that ``rm`` still finds, since
its group metadata goes last, and finishes removing once the dead remover's lease ran out.
A scene whose lease is held (and not expired) is not touched: it is reported busy.
"""

from __future__ import annotations

from collections.abc import Sequence

from scenestore.errors import LeaseHeldError, SceneBusyError
from scenestore.objstore.catalog import check_store, scene_info
from scenestore.objstore.lease import LeaseLock
from scenestore.objstore.location import (
    commit_key,
    lock_key,
    quicklook_key,
    scene_key,
    url_of,
)
from scenestore.objstore.scenes import ObjectScenes
from scenestore.removal import Removal, remove_each


def remove_scene(scenes: ObjectScenes, identifier: str, *, wait_seconds: float = 0.0) -> int:
    """Remove one scene under its lease lock; return the bytes it occupied.

    Args:
        scenes: The object store's scenes.
        identifier: The scene to remove.
        wait_seconds: How long to wait for another writer's lease (0: try once).

    Raises:
        SceneNotFoundError: If the scene is not in the store.
        SceneBusyError: If another writer holds the scene's lease for longer than
            ``wait_seconds``; the scene is left untouched.
        StoreError: If the store cannot be read or written.
    """
    size = scene_info(scenes, identifier).size_bytes
    lease = LeaseLock(scenes.client, lock_key(identifier), timeout_s=max(wait_seconds, 0.0))
    try:
        lease.acquire()
    except LeaseHeldError:
        raise SceneBusyError(
            f"Scene {identifier!r} is being written by another process (its lease lock "
            f"{url_of(scenes.url, lock_key(identifier))!r} is held); expected no ingest of it "
            "running: run again when the ingest is done."
        ) from None
    try:
        if not scenes.exists(identifier):  # removed by another remover while we waited
            return 0
        # 1. withdraw every commit: from here on no reader counts the scene as present.
        bands = sorted(scenes.committed_bands(identifier))
        scenes.client.delete([commit_key(identifier, band) for band in bands])
        # 2. the data, all but the group metadata (which keeps the scene findable by `rm`).
        group_meta = f"{scene_key(identifier)}/zarr.json"
        scenes.client.delete(
            [key for key, _ in scenes.client.list(scene_key(identifier)) if key != group_meta]
        )
        # 3. the group metadata last: the scene is gone from every listing.
        scenes.client.delete([group_meta, quicklook_key(identifier)])
    finally:
        lease.release()
    return size


def remove_scenes(
    scenes: ObjectScenes, identifiers: Sequence[str], *, wait_seconds: float = 0.0
) -> list[Removal]:
    """Remove several scenes; a busy scene is skipped and reported, the others go on.

    Every identifier is checked before anything is removed, so a typo removes nothing.

    Raises:
        StoreError: If the bucket is missing or the store cannot be reached.
        InvalidIdentifierError: If an identifier is not safe.
        SceneNotFoundError: If any scene is not in the store (nothing is removed then).
    """
    check_store(scenes)
    infos = [scene_info(scenes, i) for i in dict.fromkeys(identifiers)]
    return remove_each(
        infos, lambda identifier: remove_scene(scenes, identifier, wait_seconds=wait_seconds)
    )


__all__ = ["remove_scene", "remove_scenes"]
