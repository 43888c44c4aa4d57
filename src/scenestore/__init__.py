"""scenestore: a raw data store for Sentinel-2 L2A scenes.

Search STAC APIs for scenes, load the requested bands with odc-stac onto the scene's 10 m
UTM grid, and keep each scene as a crash-safe zarr v3 store, one variable per band.
"""

from scenestore.bands import ALL_BANDS, normalize_bands
from scenestore.errors import (
    CoordinateMismatchError,
    IncompleteSceneError,
    InvalidIdentifierError,
    InvalidRequestError,
    ItemError,
    SceneNotFoundError,
    ScenestoreError,
    SourceError,
    StoreError,
    StoreRequiredError,
    TransientSourceError,
)
from scenestore.manager import IngestResult, StoreManager
from scenestore.profiles import PROFILES, Profile, get_profile
from scenestore.search import SceneQuery, build_query, search_scenes
from scenestore.stac import StacStoreManager

__version__ = "0.1.0"

__all__ = [
    "ALL_BANDS",
    "PROFILES",
    "CoordinateMismatchError",
    "IncompleteSceneError",
    "IngestResult",
    "InvalidIdentifierError",
    "InvalidRequestError",
    "ItemError",
    "Profile",
    "SceneNotFoundError",
    "SceneQuery",
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
    "search_scenes",
]
