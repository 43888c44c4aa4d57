"""What a store holds: scenes, their committed bands and sizes, from small metadata only."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenestore.commit import committed_bands, read_commit
from scenestore.errors import SceneNotFoundError, StoreError
from scenestore.layout import identifier_of, scene_path


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
    """

    identifier: str
    bands: tuple[str, ...]
    size_bytes: int
    datetime: str | None = None
    tile: str | None = None
    cloud_cover: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

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
        if identifier and entry.is_dir():
            infos.append(_info(Path(entry.path), identifier))
    return infos


def scene_info(store: Path, identifier: str) -> SceneInfo:
    """Return one stored scene's inventory entry.

    Raises:
        SceneNotFoundError: If the scene is not in the store.
    """
    check_store(store)
    path = scene_path(store, identifier)
    if not path.is_dir():
        raise SceneNotFoundError(
            f"Scene {identifier!r} is not in the store {str(store)!r}; expected one of the "
            "identifiers `scenestore ls` lists."
        )
    return _info(path, identifier)


def band_details(store: Path, identifier: str) -> dict[str, dict[str, Any]]:
    """Return each committed band's commit record and stored codec metadata."""
    path = scene_path(store, identifier)
    details = {}
    for band in sorted(committed_bands(path)):
        record = read_commit(path, band)
        meta = json.loads((path / band / "zarr.json").read_text())
        details[band] = {
            "shape": tuple(meta["shape"]),
            "dtype": meta["data_type"],
            "chunks": tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
            "fill_value": meta.get("fill_value"),
            "codecs": [c["name"] for c in meta.get("codecs", [])],
            "attributes": meta.get("attributes", {}),
            "written_at": record.written_at if record else None,
        }
    return details


def _info(path: Path, identifier: str) -> SceneInfo:
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        attrs = {}
    from scenestore.profiles import tile_of

    return SceneInfo(
        identifier=identifier,
        bands=tuple(sorted(committed_bands(path))),
        size_bytes=_du(path),
        datetime=attrs.get("datetime"),
        tile=tile_of({"id": attrs.get("stac_id", identifier), "properties": attrs}),
        cloud_cover=attrs.get("eo:cloud_cover"),
        attrs=attrs,
    )


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            # A concurrent writer may move a file between listing and stat.
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total
