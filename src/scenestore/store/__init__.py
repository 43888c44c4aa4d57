"""One store of scenes on one client contract, written once for every backend.

A store location is a local directory, an object-store URL (``s3://bucket/prefix``, also
``gs://`` and ``az://``) or ``memory://<name>`` (in-process, for tests). :func:`open_store`
turns it into a :class:`SceneStore` over the matching :class:`StoreClient` backend; everything
above the client (layout, commit records and checksums, band arrays, inventory, verify and
repair, removal, catalog, quicklooks) is the same code for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from scenestore._lazy import lazy_exports
from scenestore.store._object import (
    StoreURL,
    is_object_url,
    memory_client,
    parse_store_url,
)

if TYPE_CHECKING:  # pragma: no cover
    from scenestore.store._local import LocalClient
    from scenestore.store._object import ObjectClient
    from scenestore.store.client import SceneLock, StoreClient
    from scenestore.store.scenes import SceneStore

# The backends and SceneStore pull in zarr, numpy and xarray: imported on first use, so that
# parsing a store location (every CLI command's --store) and `scenestore --help` stay cheap.
_EXPORTS = {
    "LocalClient": "scenestore.store._local",
    "ObjectClient": "scenestore.store._object",
    "SceneLock": "scenestore.store.client",
    "StoreClient": "scenestore.store.client",
    "SceneStore": "scenestore.store.scenes",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

#: A store location as users give it: a directory, or a URL string.
StoreLocation = Path | str

MEMORY_SCHEME = "memory://"


def store_location(text: str | Path) -> StoreLocation:
    """A URL stays a (normalised) string; anything else is a Path.

    Raises:
        InvalidRequestError: If an object-store URL is malformed.
    """
    if isinstance(text, str) and text.startswith(MEMORY_SCHEME):
        return text
    if is_object_url(text):
        return str(parse_store_url(str(text)))
    return Path(text)


def open_client(location: StoreLocation) -> StoreClient:
    """The backend for a store location (no I/O happens here).

    Raises:
        InvalidRequestError: If an object-store URL is malformed.
    """
    from scenestore.store._local import LocalClient
    from scenestore.store._object import ObjectClient

    if isinstance(location, str) and location.startswith(MEMORY_SCHEME):
        return memory_client(location[len(MEMORY_SCHEME) :])
    if is_object_url(location):
        return ObjectClient(parse_store_url(str(location)))
    return LocalClient(Path(location))


def open_store(location: StoreLocation | SceneStore) -> SceneStore:
    """The scenes of the store at ``location`` (no I/O happens here).

    Raises:
        InvalidRequestError: If an object-store URL is malformed.
    """
    from scenestore.store.scenes import SceneStore

    if isinstance(location, SceneStore):
        return location
    return SceneStore(open_client(location))


__all__ = [
    "MEMORY_SCHEME",
    "LocalClient",
    "ObjectClient",
    "SceneLock",
    "SceneStore",
    "StoreClient",
    "StoreLocation",
    "StoreURL",
    "is_object_url",
    "open_client",
    "open_store",
    "parse_store_url",
    "store_location",
]
