"""The offline Sentinel-2 world: a synthetic but faithful Earth Search v1 served on loopback.

Generate COGs and STAC items once (:func:`generate_world`), then serve them with real HTTP:
byte-range file serving for the COGs and ``rustac serve`` behind a faulting proxy for the STAC
API, both in other processes (:class:`OfflineWorld`). Tests, benchmarks and the demo read it
exactly like the real service; :class:`FaultPlan` makes it fail like one.

Public names are imported on first use, so the world's server process (which imports
:mod:`scenestore.world.remote`) starts without importing rasterio and shapely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scenestore._lazy import lazy_exports

_EXPORTS = {
    "FaultKind": "scenestore.world.faults",
    "FaultPlan": "scenestore.world.faults",
    "choose_fault": "scenestore.world.faults",
    "CONTROL_PREFIX": "scenestore.world.traffic",
    "PathStats": "scenestore.world.traffic",
    "RequestRecord": "scenestore.world.traffic",
    "RangeFileServer": "scenestore.world.http",
    "parse_range": "scenestore.world.http",
    "StacProxy": "scenestore.world.proxy",
    "RemoteTraffic": "scenestore.world.remote",
    "WorldServers": "scenestore.world.remote",
    "BAND_ASSETS": "scenestore.world.items",
    "COLLECTION_ID": "scenestore.world.items",
    "collection_dict": "scenestore.world.items",
    "item_dict": "scenestore.world.items",
    "WorldManifest": "scenestore.world.manifest",
    "generate_world": "scenestore.world.manifest",
    "SIZES": "scenestore.world.scenes",
    "TILES": "scenestore.world.scenes",
    "SceneSpec": "scenestore.world.scenes",
    "TileSpec": "scenestore.world.scenes",
    "plan_scenes": "scenestore.world.scenes",
    "resolve_size": "scenestore.world.scenes",
    "KEEP": "scenestore.world.server",
    "OfflineWorld": "scenestore.world.server",
    "search_all": "scenestore.world.server",
    "serve_forever": "scenestore.world.server",
}

__all__ = [
    "BAND_ASSETS",
    "COLLECTION_ID",
    "CONTROL_PREFIX",
    "KEEP",
    "SIZES",
    "TILES",
    "FaultKind",
    "FaultPlan",
    "OfflineWorld",
    "PathStats",
    "RangeFileServer",
    "RemoteTraffic",
    "RequestRecord",
    "SceneSpec",
    "StacProxy",
    "TileSpec",
    "WorldManifest",
    "WorldServers",
    "choose_fault",
    "collection_dict",
    "generate_world",
    "item_dict",
    "parse_range",
    "plan_scenes",
    "resolve_size",
    "search_all",
    "serve_forever",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from scenestore.world.faults import FaultKind, FaultPlan, choose_fault
    from scenestore.world.http import RangeFileServer, parse_range
    from scenestore.world.items import BAND_ASSETS, COLLECTION_ID, collection_dict, item_dict
    from scenestore.world.manifest import WorldManifest, generate_world
    from scenestore.world.proxy import StacProxy
    from scenestore.world.remote import RemoteTraffic, WorldServers
    from scenestore.world.scenes import (
        SIZES,
        TILES,
        SceneSpec,
        TileSpec,
        plan_scenes,
        resolve_size,
    )
    from scenestore.world.server import KEEP, OfflineWorld, search_all, serve_forever
    from scenestore.world.traffic import CONTROL_PREFIX, PathStats, RequestRecord
