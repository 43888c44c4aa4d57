"""What a store holds: scenes, their committed bands and sizes, from small metadata only."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from scenestore.errors import DamagedSceneError, SceneNotFoundError, UnsafePathError
from scenestore.store.layout import identifier_of_key, scene_key
from scenestore.store.scenes import SceneStore
from scenestore.tiles import tile_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneInfo:
    """One stored scene as an inventory sees it.

    Attributes:
        identifier: Scene identifier.
        bands: Committed bands, sorted.
        size_bytes: Bytes the whole scene occupies in the store.
        datetime: Sensing time from the scene attributes, if recorded.
        tile: MGRS tile, if recorded.
        cloud_cover: ``eo:cloud_cover`` in percent, if recorded.
        attrs: All scene attributes.
        damaged: One line per problem found in the scene's small metadata (group or band
            ``zarr.json``, commit records); empty for a sound scene. Chunks are not read:
            ``scenestore verify`` checks them.
    """

    identifier: str
    bands: tuple[str, ...]
    size_bytes: int
    datetime: str | None = None
    tile: str | None = None
    cloud_cover: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    damaged: tuple[str, ...] = ()

    def as_record(self) -> dict[str, Any]:
        """The inventory entry as JSON-ready values (what ``scenestore ls --json`` prints)."""
        return {
            "identifier": self.identifier,
            "datetime": self.datetime,
            "tile": self.tile,
            "cloud_cover": self.cloud_cover,
            "bands": list(self.bands),
            "size_bytes": self.size_bytes,
            "source_item": self.attrs.get("stac_id"),
            "damaged": list(self.damaged),
        }


def check_store(scenes: SceneStore) -> SceneStore:
    """Read the store once, so a missing directory or bucket is said as such.

    Raises:
        StoreError: If the store does not exist, is a file, or cannot be reached.
    """
    scenes.client.check_readable()
    return scenes


def list_scenes(scenes: SceneStore) -> list[SceneInfo]:
    """Every scene of a store, sorted by identifier (a listing per scene, plus one).

    A scene reached through a link (or whose ``_commits`` is one) is skipped with a warning,
    never followed, so nothing that acts on the listing (``prune``) can reach it.

    Raises:
        StoreError: If the store is missing or cannot be read.
    """
    check_store(scenes)
    infos = []
    for name in scenes.client.children():
        identifier = identifier_of_key(name)
        if not identifier:
            continue
        try:
            info = _info(scenes, identifier)
        except UnsafePathError as err:
            logger.warning(
                "Skipping scene %r, never following a link out of the store: %s", identifier, err
            )
            continue
        if info is not None:
            infos.append(info)
    return infos


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


def group_attrs(payload: bytes | None) -> tuple[dict[str, Any], str | None]:
    """A scene group's attributes from its ``zarr.json`` bytes, and what is wrong with it.

    Returns:
        The attributes ({} when unusable) and None, "missing" or "unreadable".
    """
    if payload is None:
        return {}, "missing"
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}, "unreadable"
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return {}, "unreadable"
    attrs = doc.get("attributes", {})
    return (attrs, None) if isinstance(attrs, dict) else ({}, "unreadable")


def _info(scenes: SceneStore, identifier: str) -> SceneInfo | None:
    """The scene's entry, or None when it is no scene (yet): neither group metadata nor a
    record, as :meth:`SceneStore.exists` says; a scene being created, or a writer's leftover
    from before it wrote anything. One listing answers that, the sizes and the band metadata."""
    key = scene_key(identifier)
    objects = scenes.client.list(key)
    bands, bad_records = scenes.committed(identifier)
    metas = {k for k, _ in objects}
    if f"{key}/zarr.json" not in metas and not bands and not bad_records:
        return None
    attrs, group_problem = group_attrs(scenes.client.get(f"{key}/zarr.json"))
    # A group problem matters once something is committed; before that it is a killed
    # writer's leftover, which the next ingest replaces.
    damaged = (
        [f"group zarr.json {group_problem}"] if group_problem and (bands or bad_records) else []
    )
    damaged += [f"{band}: commit record damaged" for band in sorted(bad_records)]
    damaged += [
        f"{b}: array zarr.json missing"
        for b in sorted(bands)
        if f"{key}/{b}/zarr.json" not in metas
    ]
    return SceneInfo(
        identifier=identifier,
        bands=tuple(sorted(bands)),
        damaged=tuple(damaged),
        size_bytes=sum(size for _, size in objects),
        datetime=attrs.get("datetime"),
        tile=tile_of({"id": attrs.get("stac_id", identifier), "properties": attrs}),
        cloud_cover=attrs.get("eo:cloud_cover"),
        attrs=attrs,
    )


__all__ = [
    "SceneInfo",
    "array_details",
    "band_details",
    "check_store",
    "group_attrs",
    "list_scenes",
    "scene_info",
]
