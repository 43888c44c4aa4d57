"""Object-storage stores (``s3://bucket/prefix``; also ``gs://``, ``az://`` through obstore).

Same layout and commit protocol as a local store, built on zarr's ``ObjectStore`` over obstore,
with conditional writes where a local store uses rename and ``fcntl``:

* :mod:`~scenestore.objstore.location`: URLs and keys (pure);
* :mod:`~scenestore.objstore.client`: the obstore client and its error mapping;
* :mod:`~scenestore.objstore.lease`: the per-scene lease lock;
* :mod:`~scenestore.objstore.scenes`: commit records, writing, promotion and opening;
* :mod:`~scenestore.objstore.catalog`: listing and verifying stored scenes, their STAC catalog;
* :mod:`~scenestore.objstore.removal`: removing scenes under their lease (``rm``, ``prune``);
* :mod:`~scenestore.objstore.quicklook`: quicklooks read decimated, kept as objects.
"""

from __future__ import annotations

from scenestore.objstore.location import StoreURL, is_object_url, parse_store_url

__all__ = ["ObjectScenes", "StoreURL", "is_object_url", "parse_store_url"]


def __getattr__(name: str):  # the I/O modules import zarr and obstore: only when used
    if name == "ObjectScenes":
        from scenestore.objstore.scenes import ObjectScenes

        return ObjectScenes
    raise AttributeError(name)
