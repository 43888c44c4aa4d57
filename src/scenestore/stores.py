"""One entry point per store question for local directories and object-storage URLs alike.

A store location is a :class:`~pathlib.Path` (local directory) or an object-store URL string
(``s3://bucket/prefix``, see :mod:`scenestore.objstore`). The functions here answer with the
local modules (:mod:`scenestore.inventory`, :mod:`scenestore.verify`) or the object-store ones
(:mod:`scenestore.objstore.catalog`), so callers such as the CLI need not tell them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scenestore.objstore.location import is_object_url

#: A store location: a local directory or an object-store URL.
StoreLocation = Path | str


def store_location(text: str | Path) -> StoreLocation:
    """``s3://...`` (and other object-store URLs) stay strings; anything else is a Path.

    Raises:
        InvalidRequestError: If an object-store URL is malformed.
    """
    if is_object_url(text):
        from scenestore.objstore.location import parse_store_url

        return str(parse_store_url(str(text)))
    return Path(text)


def _objects(store: StoreLocation) -> Any:
    from scenestore.objstore.scenes import ObjectScenes

    return ObjectScenes(str(store))


def check_store(store: StoreLocation) -> StoreLocation:
    """A local store must be an existing directory; an object store is checked when used.

    Raises:
        StoreError: If a local store is missing or a file.
    """
    if is_object_url(store):
        return store
    from scenestore.inventory import check_store as check_local

    return check_local(Path(store))


def list_scenes(store: StoreLocation) -> list[Any]:
    """Every scene of a store (:class:`scenestore.inventory.SceneInfo`), by identifier."""
    if is_object_url(store):
        from scenestore.objstore.catalog import list_scenes as list_objects

        return list_objects(_objects(store))
    from scenestore.inventory import list_scenes as list_local

    return list_local(Path(store))


def scene_info(store: StoreLocation, identifier: str) -> Any:
    """One stored scene's inventory entry (raises SceneNotFoundError if not stored)."""
    if is_object_url(store):
        from scenestore.objstore.catalog import scene_info as info_objects

        return info_objects(_objects(store), identifier)
    from scenestore.inventory import scene_info as info_local

    return info_local(Path(store), identifier)


def band_details(store: StoreLocation, identifier: str) -> dict[str, dict[str, Any]]:
    """Each committed band's codec metadata and commit time."""
    if is_object_url(store):
        from scenestore.objstore.catalog import band_details as details_objects

        return details_objects(_objects(store), identifier)
    from scenestore.inventory import band_details as details_local

    return details_local(Path(store), identifier)


def open_scene_group(store: StoreLocation, identifier: str) -> Any:
    """The scene's zarr group, read-only."""
    import zarr

    if is_object_url(store):
        from scenestore.objstore.location import scene_key

        return zarr.open_group(_objects(store).zarr_store, path=scene_key(identifier), mode="r")
    from scenestore.layout import scene_path

    return zarr.open_group(scene_path(Path(store), identifier), mode="r")


def verify_store(store: StoreLocation, identifiers: list[str] | None = None) -> tuple[int, list]:
    """Check committed bands against their records; return bands checked and damage."""
    if is_object_url(store):
        from scenestore.objstore.catalog import verify_store as verify_objects

        return verify_objects(_objects(store), identifiers)
    from scenestore.verify import verify_store as verify_local

    return verify_local(Path(store), identifiers)


def repair(store: StoreLocation, damage: list) -> None:
    """Withdraw damaged bands so the next ingest fetches them again."""
    if is_object_url(store):
        from scenestore.objstore.catalog import repair as repair_objects

        repair_objects(_objects(store), damage)
        return
    from scenestore.verify import repair as repair_local

    repair_local(Path(store), damage)


__all__ = [
    "StoreLocation",
    "band_details",
    "check_store",
    "list_scenes",
    "open_scene_group",
    "repair",
    "scene_info",
    "store_location",
    "verify_store",
]
