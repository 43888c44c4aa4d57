"""The offline Sentinel-2 world: a synthetic but faithful Earth Search v1 served on loopback.

Generate COGs and STAC items once (:func:`generate_world`), then serve them with real HTTP:
byte-range file serving for the COGs and ``rustac serve`` for the STAC API
(:class:`OfflineWorld`). Tests, benchmarks and the demo read it exactly like the real service.
"""

from scenestore.world.http import (
    FaultPolicy,
    NoFaults,
    PathStats,
    RangeFileServer,
    RequestRecord,
    parse_range,
)
from scenestore.world.items import BAND_ASSETS, COLLECTION_ID, collection_dict, item_dict
from scenestore.world.manifest import WorldManifest, generate_world
from scenestore.world.scenes import SIZES, TILES, SceneSpec, TileSpec, plan_scenes, resolve_size
from scenestore.world.server import OfflineWorld, search_all, serve_forever

__all__ = [
    "BAND_ASSETS",
    "COLLECTION_ID",
    "SIZES",
    "TILES",
    "FaultPolicy",
    "NoFaults",
    "OfflineWorld",
    "PathStats",
    "RangeFileServer",
    "RequestRecord",
    "SceneSpec",
    "TileSpec",
    "WorldManifest",
    "collection_dict",
    "generate_world",
    "item_dict",
    "parse_range",
    "plan_scenes",
    "resolve_size",
    "search_all",
    "serve_forever",
]
