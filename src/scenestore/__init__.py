"""scenestore: a raw data store for Sentinel-2 L2A scenes.

Search STAC APIs for scenes, load the requested bands with odc-stac onto the scene's 10 m
UTM grid, and keep each scene as a crash-safe zarr v3 store, one variable per band.

Public names are imported on first use, so ``scenestore --help`` does not pay for importing
xarray, dask and odc-stac.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scenestore._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ALL_BANDS": "scenestore.bands",
    "normalize_bands": "scenestore.bands",
    "CoordinateMismatchError": "scenestore.errors",
    "IncompleteSceneError": "scenestore.errors",
    "InvalidIdentifierError": "scenestore.errors",
    "InvalidRequestError": "scenestore.errors",
    "ItemError": "scenestore.errors",
    "SceneBusyError": "scenestore.errors",
    "SceneNotFoundError": "scenestore.errors",
    "ScenestoreError": "scenestore.errors",
    "SourceError": "scenestore.errors",
    "StoreError": "scenestore.errors",
    "StoreRequiredError": "scenestore.errors",
    "TransientSourceError": "scenestore.errors",
    "IngestResult": "scenestore.manager",
    "StoreManager": "scenestore.manager",
    "PROFILES": "scenestore.profiles",
    "Profile": "scenestore.profiles",
    "get_profile": "scenestore.profiles",
    "SceneQuery": "scenestore.search",
    "build_query": "scenestore.search",
    "search_scenes": "scenestore.search",
    "StacStoreManager": "scenestore.stac",
    "SceneStore": "scenestore.store",
    "open_store": "scenestore.store",
    "ScenePlan": "scenestore.plan",
    "plan_ingest": "scenestore.plan",
}

__all__ = [
    "ALL_BANDS",
    "CoordinateMismatchError",
    "IncompleteSceneError",
    "IngestResult",
    "InvalidIdentifierError",
    "InvalidRequestError",
    "ItemError",
    "PROFILES",
    "Profile",
    "SceneBusyError",
    "SceneNotFoundError",
    "ScenePlan",
    "SceneQuery",
    "SceneStore",
    "ScenestoreError",
    "SourceError",
    "StacStoreManager",
    "StoreError",
    "StoreManager",
    "StoreRequiredError",
    "TransientSourceError",
    "build_query",
    "get_profile",
    "normalize_bands",
    "open_store",
    "plan_ingest",
    "search_scenes",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from scenestore.bands import ALL_BANDS, normalize_bands
    from scenestore.errors import (
        CoordinateMismatchError,
        IncompleteSceneError,
        InvalidIdentifierError,
        InvalidRequestError,
        ItemError,
        SceneBusyError,
        SceneNotFoundError,
        ScenestoreError,
        SourceError,
        StoreError,
        StoreRequiredError,
        TransientSourceError,
    )
    from scenestore.manager import IngestResult, StoreManager
    from scenestore.plan import ScenePlan, plan_ingest
    from scenestore.profiles import PROFILES, Profile, get_profile
    from scenestore.search import SceneQuery, build_query, search_scenes
    from scenestore.stac import StacStoreManager
    from scenestore.store import SceneStore, open_store
