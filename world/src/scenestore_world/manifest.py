"""Generating the offline world on disk, once, and describing what was generated.

Layout of a world directory::

    manifest.json               what was generated (written last: its presence means complete)
    data/<scene_id>/<BAND>.tif  one COG per band at native resolution
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from scenestore.bands import ALL_BANDS
from scenestore.errors import InvalidRequestError
from scenestore_world.cogs import write_scene
from scenestore_world.items import collection_dict, item_dict
from scenestore_world.scenes import SceneSpec, plan_scenes, resolve_size

MANIFEST_NAME = "manifest.json"

#: Bumped whenever the pixels or the layout change, so cached worlds are regenerated.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class WorldManifest:
    """A generated offline world.

    Attributes:
        directory: The world directory (holds ``manifest.json`` and ``data/``).
        size: Pixels per side of each scene's 10 m grid.
        seed: The seed every pixel and property derives from.
        scenes: The scenes in acquisition order.
        scl_counts: Per scene id, SCL pixel counts by class value, measured when written.
    """

    directory: Path
    size: int
    seed: int
    scenes: tuple[SceneSpec, ...]
    scl_counts: dict[str, dict[int, int]] = field(default_factory=dict, compare=False)

    @property
    def data_dir(self) -> Path:
        """Directory served over HTTP: ``<directory>/data``."""
        return self.directory / "data"

    def band_path(self, scene_id: str, band: str) -> Path:
        """Local path of one band's COG."""
        return self.data_dir / scene_id / f"{band}.tif"

    def scene(self, scene_id: str) -> SceneSpec:
        """The scene with identifier ``scene_id``.

        Raises:
            InvalidRequestError: If the world has no such scene.
        """
        for scene in self.scenes:
            if scene.id == scene_id:
                return scene
        raise InvalidRequestError(
            f"Unknown scene {scene_id!r}; this world has {', '.join(s.id for s in self.scenes)}."
        )

    def item_dicts(self, data_url: str) -> list[dict[str, Any]]:
        """STAC items of every scene with asset hrefs under ``data_url``."""
        return [item_dict(s, data_url, self.scl_counts.get(s.id)) for s in self.scenes]

    def collection_dict(self) -> dict[str, Any]:
        """The ``sentinel-2-l2a`` collection document covering the world's items."""
        return collection_dict(self.scenes)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form written to ``manifest.json``."""
        return {
            "version": GENERATOR_VERSION,
            "size": self.size,
            "seed": self.seed,
            "scenes": [
                {
                    **s.to_dict(),
                    "scl_counts": {str(k): v for k, v in self.scl_counts.get(s.id, {}).items()},
                }
                for s in self.scenes
            ],
        }

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> WorldManifest:
        """Rebuild a manifest from :meth:`to_json` output."""
        scenes, counts = [], {}
        for entry in data["scenes"]:
            entry = dict(entry)
            raw_counts = entry.pop("scl_counts", {})
            scene = SceneSpec.from_dict(entry)
            scenes.append(scene)
            counts[scene.id] = {int(k): int(v) for k, v in raw_counts.items()}
        return cls(
            directory=directory,
            size=int(data["size"]),
            seed=int(data["seed"]),
            scenes=tuple(scenes),
            scl_counts=counts,
        )

    @classmethod
    def load(cls, directory: Path) -> WorldManifest:
        """Read ``<directory>/manifest.json``.

        Raises:
            FileNotFoundError: If the world was never (completely) generated.
        """
        path = Path(directory) / MANIFEST_NAME
        return cls.from_json(Path(directory), json.loads(path.read_text()))

    def is_complete(self) -> bool:
        """Whether every band file of every scene exists."""
        return all(self.band_path(s.id, b).is_file() for s in self.scenes for b in ALL_BANDS)


def generate_world(
    directory: Path, *, scenes: int = 4, size: str | int = "tiny", seed: int = 0
) -> WorldManifest:
    """Generate (or reuse) an offline Sentinel-2 L2A world in ``directory``.

    Generation is deterministic: the same ``(scenes, size, seed)`` gives byte-identical COGs.
    It is cached: when ``manifest.json`` records the same parameters and every file exists,
    nothing is written. A file lock makes concurrent callers on one directory wait for each
    other instead of writing the same files twice.

    Args:
        directory: World directory, created if needed.
        scenes: Number of scenes.
        size: ``"tiny"`` (120 px at 10 m), ``"small"`` (1098), ``"full"`` (10980) or a multiple
            of 6.
        seed: World seed.

    Returns:
        The manifest of the world.

    Raises:
        InvalidRequestError: If ``scenes``, ``size`` or ``seed`` is unusable.
    """
    directory = Path(directory)
    pixels = resolve_size(size)
    planned = plan_scenes(scenes, size=pixels, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".generate.lock")):
        cached = _reusable(directory, planned, pixels, seed)
        if cached is not None:
            return cached
        # drop the manifest first: a run that dies half-way must not look complete
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        data_dir = directory / "data"
        _remove_stale_scenes(data_dir, {s.id for s in planned})
        counts = {scene.id: write_scene(scene, data_dir) for scene in planned}
        manifest = WorldManifest(
            directory=directory, size=pixels, seed=seed, scenes=tuple(planned), scl_counts=counts
        )
        _write_json_atomic(directory / MANIFEST_NAME, manifest.to_json())
        return manifest


def _reusable(
    directory: Path, planned: list[SceneSpec], pixels: int, seed: int
) -> WorldManifest | None:
    try:
        raw = json.loads((directory / MANIFEST_NAME).read_text())
        if raw.get("version") != GENERATOR_VERSION:
            return None
        manifest = WorldManifest.from_json(directory, raw)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (manifest.size, manifest.seed, manifest.scenes) != (pixels, seed, tuple(planned)):
        return None
    return manifest if manifest.is_complete() else None


def _remove_stale_scenes(data_dir: Path, keep: set[str]) -> None:
    if not data_dir.is_dir():
        return
    for child in data_dir.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)  # rename is atomic on POSIX: readers see the old or the new file


__all__ = ["GENERATOR_VERSION", "MANIFEST_NAME", "WorldManifest", "generate_world"]
