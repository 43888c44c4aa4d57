"""The offline Sentinel-2 world: a synthetic but faithful Earth Search v1 served on loopback.

Generate COGs and STAC items once (:func:`generate_world`), then serve them with real HTTP:
byte-range file serving for the COGs and ``rustac serve`` behind a faulting proxy for the STAC
API, both in other processes (:class:`OfflineWorld`). Tests, benchmarks and the demo read it
exactly like the real service; :class:`FaultPlan` makes it fail like one.

It is its own distribution (``scenestore-world``, in ``world/`` of the checkout) so the
``scenestore`` wheel carries no servers and does not depend on ``rustac``.

Public names are imported on first use, so the world's server process (which imports
:mod:`scenestore_world.remote`) starts without importing rasterio and shapely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scenestore._lazy import lazy_exports

_EXPORTS = {
    "FaultKind": "scenestore_world.faults",
    "FaultPlan": "scenestore_world.faults",
    "choose_fault": "scenestore_world.faults",
    "CONTROL_PREFIX": "scenestore_world.traffic",
    "PathStats": "scenestore_world.traffic",
    "RequestRecord": "scenestore_world.traffic",
    "RangeFileServer": "scenestore_world.http",
    "parse_range": "scenestore_world.http",
    "StacProxy": "scenestore_world.proxy",
    "RemoteTraffic": "scenestore_world.remote",
    "WorldServers": "scenestore_world.remote",
    "BAND_ASSETS": "scenestore_world.items",
    "COLLECTION_ID": "scenestore_world.items",
    "collection_dict": "scenestore_world.items",
    "item_dict": "scenestore_world.items",
    "WorldManifest": "scenestore_world.manifest",
    "generate_world": "scenestore_world.manifest",
    "SIZES": "scenestore_world.scenes",
    "TILES": "scenestore_world.scenes",
    "SceneSpec": "scenestore_world.scenes",
    "TileSpec": "scenestore_world.scenes",
    "plan_scenes": "scenestore_world.scenes",
    "resolve_size": "scenestore_world.scenes",
    "KEEP": "scenestore_world.server",
    "OfflineWorld": "scenestore_world.server",
    "search_all": "scenestore_world.server",
    "serve_forever": "scenestore_world.server",
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
    from scenestore_world.faults import FaultKind, FaultPlan, choose_fault
    from scenestore_world.http import RangeFileServer, parse_range
    from scenestore_world.items import BAND_ASSETS, COLLECTION_ID, collection_dict, item_dict
    from scenestore_world.manifest import WorldManifest, generate_world
    from scenestore_world.proxy import StacProxy
    from scenestore_world.remote import RemoteTraffic, WorldServers
    from scenestore_world.scenes import (
        SIZES,
        TILES,
        SceneSpec,
        TileSpec,
        plan_scenes,
        resolve_size,
    )
    from scenestore_world.server import KEEP, OfflineWorld, search_all, serve_forever
    from scenestore_world.traffic import CONTROL_PREFIX, PathStats, RequestRecord
