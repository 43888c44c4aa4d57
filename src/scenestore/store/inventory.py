"""What a store holds: scenes, their committed bands and sizes, from small metadata only."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scenestore.errors import DamagedSceneError, SceneNotFoundError
from scenestore.store.client import StoreClient
from scenestore.store.entries import SceneInfo, group_attrs
from scenestore.store.index import StoreIndex, derive, derive_many
from scenestore.store.layout import identifier_of_key

if TYPE_CHECKING:  # pragma: no cover
    from scenestore.store.scenes import SceneStore

logger = logging.getLogger(__name__)


def check_store(scenes: SceneStore) -> SceneStore:
    """Read the store once, so a missing directory or bucket is said as such.

    Raises:
        StoreError: If the store does not exist, is a file, or cannot be reached.
    """
    scenes.client.check_readable()
    return scenes


def list_scenes(scenes: SceneStore | StoreClient, *, scan: bool = False) -> list[SceneInfo]:
    """Every scene of a store, sorted by identifier, from its index (checked against the store).

    Args:
        scenes: The store (or its client: listing from the index needs no zarr).
        scan: Read every scene's commit records instead of the index (what ``ls --scan``
            does; the index is neither read nor changed).

    A scene reached through a link (or whose ``_commits`` is one) is skipped with a warning,
    never followed, so nothing that acts on the listing (``prune``) can reach it.

    Raises:
        StoreError: If the store is missing or cannot be read.
    """
    client: StoreClient = scenes if isinstance(scenes, StoreClient) else scenes.client
    client.check_readable()
    if not scan:
        return StoreIndex.read(client).scenes()
    names = [i for n in client.children() if (i := identifier_of_key(n))]
    found = derive_many(client, names)
    return [info for _, info in sorted(found.items()) if info is not None]


def scene_info(scenes: SceneStore, identifier: str) -> SceneInfo:
    """One stored scene's inventory entry.

    Raises:
        StoreError: If the store is missing or cannot be read.
        InvalidIdentifierError: If the identifier is not safe.
        SceneNotFoundError: If the scene is not in the store.
    """
    check_store(scenes)
    # None also when the scene was removed between the two looks.
    info = _info(scenes, identifier) if scenes.exists(identifier) else None
    if info is None:
        raise SceneNotFoundError(
            f"Scene {identifier!r} is not in the store {str(scenes)!r}; expected one of the "
            "identifiers `scenestore ls` lists."
        )
    return info


def band_details(scenes: SceneStore, identifier: str) -> dict[str, dict[str, Any]]:
    """Each committed band's commit time and stored codec metadata (damage named, not raised)."""
    details = {}
    for band in sorted(scenes.recorded_bands(identifier)):
        try:
            record = scenes.read_commit(identifier, band)
        except DamagedSceneError:
            details[band] = array_details(None, None, problem="commit record damaged")
            continue
        try:
            meta: dict[str, Any] | None = scenes.array_meta(identifier, band)
        except DamagedSceneError as err:
            what = "missing" if "missing" in str(err) else "unreadable"
            details[band] = array_details(None, record, problem=f"array zarr.json {what}")
            continue
        details[band] = array_details(meta, record)
    return details


def array_details(
    meta: dict[str, Any] | None, record: Any, *, problem: str | None = None
) -> dict[str, Any]:
    """One band's row of ``scenestore info`` from its ``zarr.json`` and commit record.

    Metadata that is missing or malformed gives empty fields and ``problem`` (never a crash),
    so ``info`` shows the damage beside the whole bands.
    """
    meta = meta if isinstance(meta, dict) else {}
    try:
        chunks = tuple(meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", ()))
        codecs = [str(c.get("name")) for c in meta.get("codecs", [])]
        shape = tuple(meta.get("shape", ()))
    except (AttributeError, TypeError):
        chunks, codecs, shape = (), [], ()
        problem = problem or "array zarr.json malformed"
    return {
        "shape": shape,
        "dtype": meta.get("data_type"),
        "chunks": chunks,
        "fill_value": meta.get("fill_value"),
        "codecs": codecs,
        "attributes": meta.get("attributes", {}),
        "written_at": record.written_at if record else None,
        "problem": problem,
    }


def _info(scenes: SceneStore, identifier: str) -> SceneInfo | None:
    return derive(scenes.client, identifier)


__all__ = [
    "SceneInfo",
    "array_details",
    "band_details",
    "check_store",
    "group_attrs",
    "list_scenes",
    "scene_info",
]
