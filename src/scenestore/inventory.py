"""What a store holds: scenes, their committed bands and sizes, from small metadata only."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenestore.commit import committed_bands, read_commit, valid_committed_bands
from scenestore.errors import DamagedSceneError, SceneNotFoundError, StoreError
from scenestore.fsafety import checked_scene, inside_store, unsafe_reason
from scenestore.layout import COMMITS_DIR, identifier_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneInfo:
    """One stored scene as an inventory sees it.

    Attributes:
        identifier: Scene identifier.
        bands: Committed bands, sorted.
        size_bytes: Bytes on disk of the whole scene directory.
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


def check_store(store: Path) -> Path:
    """Return ``store`` if it is an existing directory.

    Raises:
        StoreError: If the path does not exist or is not a directory.
    """
    if not store.exists():
        raise StoreError(f"Store {str(store)!r} does not exist; expected a store directory.")
    if not store.is_dir():
        raise StoreError(f"Store path {str(store)!r} is a file; expected a directory.")
    return store


def list_scenes(store: Path) -> list[SceneInfo]:
    """Return every scene of a store, sorted by identifier.

    Raises:
        StoreError: If the store is missing or not a directory.
    """
    check_store(store)
    infos = []
    for entry in sorted(os.scandir(store), key=lambda e: e.name):
        identifier = identifier_of(Path(entry.path))
        if not identifier or not entry.is_dir():
            continue
        # A linked scene (or _commits) is skipped, never followed: so prune never reaches it.
        reason = unsafe_reason(store, Path(entry.path) / COMMITS_DIR)
        if reason is not None:
            logger.warning(
                "Skipping scene %r, never following a link out of the store: %s.",
                identifier, reason,
            )
            continue
        infos.append(_info(Path(entry.path), identifier))
    return infos


def scene_info(store: Path, identifier: str) -> SceneInfo:
    """Return one stored scene's inventory entry.

    Raises:
        SceneNotFoundError: If the scene is not in the store.
    """
    check_store(store)
    path = checked_scene(store, identifier)  # a linked scene or _commits is refused, not followed
    if not path.is_dir():
        raise SceneNotFoundError(
            f"Scene {identifier!r} is not in the store {str(store)!r}; expected one of the "
            "identifiers `scenestore ls` lists."
        )
    return _info(path, identifier)


def band_details(store: Path, identifier: str) -> dict[str, dict[str, Any]]:
    """Return each committed band's commit record and stored codec metadata."""
    path = checked_scene(store, identifier)
    details = {}
    for band in sorted(committed_bands(path)):
        inside_store(store, path / band)  # a linked band is refused, not read
        try:
            record = read_commit(path, band)
        except DamagedSceneError:
            details[band] = array_details(None, None, problem="commit record damaged")
            continue
        try:
            meta = json.loads((path / band / "zarr.json").read_bytes())
        except (OSError, ValueError) as err:
            what = "missing" if isinstance(err, FileNotFoundError) else "unreadable"
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


def _info(path: Path, identifier: str) -> SceneInfo:
    from scenestore.profiles import tile_of

    bands, bad_records = valid_committed_bands(path)
    attrs, group_problem = read_group_attrs(path / "zarr.json")
    # A group problem matters once something is committed; before that it is a killed
    # writer's leftover, which the next ingest replaces.
    damaged = (
        [f"group zarr.json {group_problem}"] if group_problem and (bands or bad_records) else []
    )
    damaged += [f"{band}: commit record damaged" for band in sorted(bad_records)]
    damaged += [
        f"{b}: array zarr.json missing"
        for b in sorted(bands)
        if not (path / b / "zarr.json").is_file()
    ]
    return SceneInfo(
        identifier=identifier,
        bands=tuple(sorted(bands)),
        damaged=tuple(damaged),
        size_bytes=_du(path),
        datetime=attrs.get("datetime"),
        tile=tile_of({"id": attrs.get("stac_id", identifier), "properties": attrs}),
        cloud_cover=attrs.get("eo:cloud_cover"),
        attrs=attrs,
    )


def read_group_attrs(meta: Path) -> tuple[dict[str, Any], str | None]:
    """A scene group's attributes from its ``zarr.json``, and what is wrong with it, if anything.

    Returns:
        The attributes ({} when unreadable) and None, "missing" or "unreadable".
    """
    try:
        doc = json.loads(meta.read_bytes())
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError):
        return {}, "unreadable"
    return group_attrs(doc)


def group_attrs(doc: Any) -> tuple[dict[str, Any], str | None]:
    """The attributes of a parsed group ``zarr.json`` and "unreadable" if it is no zarr v3 group."""
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return {}, "unreadable"
    attrs = doc.get("attributes", {})
    return (attrs, None) if isinstance(attrs, dict) else ({}, "unreadable")


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            # A concurrent writer may move a file between listing and stat.
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total
