"""One entry point per store question for local directories and object-storage URLs alike.

A store location is a :class:`~pathlib.Path` (local directory) or an object-store URL string
(``s3://bucket/prefix``, see :mod:`scenestore.objstore`). The functions here answer with the
local modules (:mod:`scenestore.inventory`, :mod:`scenestore.verify`,
:mod:`scenestore.removal`, :mod:`scenestore.quicklook`, :mod:`scenestore.catalog`) or the
object-store ones (:mod:`scenestore.objstore.catalog`, :mod:`~scenestore.objstore.removal`,
:mod:`~scenestore.objstore.quicklook`), so callers such as the CLI and the flows need not tell
them apart.
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
    """A local store must be an existing directory; an object store must be readable.

    An object store is read once (one delimited listing), so a missing bucket is said as such.

    Raises:
        StoreError: If a local store is missing or a file, or an object store's bucket is
            missing or unreachable.
    """
    if is_object_url(store):
        from scenestore.objstore.catalog import check_store as check_objects

        check_objects(_objects(store))
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


def remove_scenes(
    store: StoreLocation, identifiers: list[str], *, wait_seconds: float = 0.0
) -> list[Any]:
    """Remove scenes under their writer locks (:class:`scenestore.removal.Removal` each).

    Every identifier is checked before anything is removed; a scene whose lock is held
    longer than ``wait_seconds`` is skipped and reported.
    """
    if is_object_url(store):
        from scenestore.objstore.removal import remove_scenes as remove_objects

        return remove_objects(_objects(store), identifiers, wait_seconds=wait_seconds)
    from scenestore.removal import remove_scenes as remove_local

    return remove_local(Path(store), identifiers, wait_seconds=wait_seconds)


def render_quicklook(store: StoreLocation, identifier: str, *, max_size: int) -> Any:
    """A scene's true-colour :class:`scenestore.quicklook.Quicklook`, from a decimated read."""
    if is_object_url(store):
        from scenestore.objstore.quicklook import render_quicklook as render_objects

        return render_objects(_objects(store), identifier, max_size=max_size)
    from scenestore.quicklook import render_quicklook as render_local

    return render_local(Path(store), identifier, max_size=max_size)


def write_quicklook(store: StoreLocation, identifier: str, out: Path, *, max_size: int) -> Any:
    """Render a scene's quicklook and write it to the local PNG file ``out``; return it."""
    from scenestore.quicklook import png_bytes, write_png

    look = render_quicklook(store, identifier, max_size=max_size)
    write_png(out, png_bytes(look.rgba))
    return look


def save_quicklook(store: StoreLocation, identifier: str, *, max_size: int) -> tuple[str, bytes]:
    """Render a scene's quicklook and keep it in the store, at ``<store>/.quicklooks/<id>.png``.

    A local store gets a file, an object store an object (``s3://.../.quicklooks/<id>.png``);
    either is the scene's ``thumbnail`` in ``scenestore catalog`` and goes with ``rm``.

    Returns:
        Where the PNG is (a path or URL) and its bytes.
    """
    from scenestore.quicklook import png_bytes, quicklook_path, write_png

    png = png_bytes(render_quicklook(store, identifier, max_size=max_size).rgba)
    if is_object_url(store):
        from scenestore.objstore.quicklook import put_quicklook

        return put_quicklook(_objects(store), identifier, png), png
    return str(write_png(quicklook_path(Path(store), identifier), png, store=Path(store))), png


def write_catalog(store: StoreLocation, out: Path, *, title: str | None = None) -> Any:
    """Write a static STAC catalog of the store to the local directory ``out``.

    Asset hrefs are relative for a local store and absolute ``s3://...`` URLs for an object
    store. Returns the written ``pystac.Catalog``.
    """
    if is_object_url(store):
        from scenestore.objstore.catalog import write_catalog as write_objects

        return write_objects(_objects(store), out, title=title)
    from scenestore.catalog import write_catalog as write_local

    return write_local(Path(store), out, title=title)


__all__ = [
    "StoreLocation",
    "band_details",
    "check_store",
    "list_scenes",
    "open_scene_group",
    "remove_scenes",
    "render_quicklook",
    "repair",
    "save_quicklook",
    "scene_info",
    "store_location",
    "verify_store",
    "write_catalog",
    "write_quicklook",
]
