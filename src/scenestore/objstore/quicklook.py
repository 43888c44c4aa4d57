"""Quicklooks of scenes on an object store: rendered from decimated reads, kept as objects.

The read is the local one (:func:`scenestore.quicklook.render_bands`): every ``step``-th pixel,
one stored chunk at a time, through zarr's ``ObjectStore``, so only the chunks being decoded
and the small image are in memory, never a band at full resolution. A quicklook kept in the
store (the ingest flow's) is the object ``<prefix>/.quicklooks/<identifier>.png``, beside the
scenes as on a local store; :mod:`scenestore.objstore.removal` deletes it with its scene.
"""

from __future__ import annotations

import zarr

from scenestore.objstore.catalog import require_scene
from scenestore.objstore.location import quicklook_key, scene_key, url_of
from scenestore.objstore.scenes import ObjectScenes
from scenestore.quicklook import DEFAULT_MAX_SIZE, Quicklook, check_size, render_bands


def render_quicklook(
    scenes: ObjectScenes, identifier: str, *, max_size: int = DEFAULT_MAX_SIZE
) -> Quicklook:
    """Render a stored scene's true-colour quicklook from a decimated read.

    Raises:
        SceneNotFoundError: If the scene is not stored.
        IncompleteSceneError: If B04, B03 or B02 is not committed.
        InvalidRequestError: If ``max_size`` is below 1.
        StoreError: If the store cannot be read.
    """
    check_size(max_size)
    require_scene(scenes, identifier)
    group = zarr.open_group(scenes.zarr_store, path=scene_key(identifier), mode="r")
    return render_bands(
        identifier,
        lambda band: group[band],
        scenes.committed_bands(identifier),
        max_size=max_size,
    )


def put_quicklook(scenes: ObjectScenes, identifier: str, png: bytes) -> str:
    """Keep a scene's quicklook PNG in the store (one PUT); return its ``s3://`` URL."""
    key = quicklook_key(identifier)
    scenes.client.put(key, png)
    return url_of(scenes.url, key)


def quicklook_url(scenes: ObjectScenes, identifier: str) -> str | None:
    """The URL of the scene's quicklook kept in the store, or None if it has none (a HEAD)."""
    key = quicklook_key(identifier)
    return url_of(scenes.url, key) if scenes.client.exists(key) else None


__all__ = ["put_quicklook", "quicklook_url", "render_quicklook"]
