"""Offline runs: which stored scenes a run's queries and ids find, and which bands they lack.

On a compute node without internet the question an ingest answers is "is everything I need
stored?". :func:`plan_offline` answers it from the store index alone
(:mod:`scenestore.store.index`): the same queries a run would send to a STAC API, and the same
id lists, matched against the stored scenes; nothing touches the network. ``scenestore ingest
--offline`` and the ``ingest`` flow's ``offline`` parameter print it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scenestore.store import StoreLocation, open_client, store_location
from scenestore.store.index import IndexQuery, SceneInfo, StoreIndex


@dataclass(frozen=True)
class OfflineScene:
    """One stored scene an offline run found.

    Attributes:
        identifier: Store identifier.
        item_id: The source STAC item id, if recorded.
        datetime: Sensing time (UTC), if recorded.
        bands: Its committed bands.
        missing: Requested bands it lacks (empty when it is ready to open).
        found_by: The labels of the queries (or the ids) that found it.
    """

    identifier: str
    item_id: str | None
    datetime: str | None
    bands: tuple[str, ...]
    missing: tuple[str, ...]
    found_by: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class OfflinePlan:
    """What an offline run found in the store.

    Attributes:
        scenes: Every scene found, sorted by identifier.
        not_stored: Ids given that name no stored scene.
    """

    scenes: list[OfflineScene]
    not_stored: list[str]

    @property
    def incomplete(self) -> list[OfflineScene]:
        """The scenes that lack requested bands."""
        return [s for s in self.scenes if s.missing]

    @property
    def ready(self) -> bool:
        """Whether every scene found has every band and every id was found."""
        return not self.incomplete and not self.not_stored


def index_query(query: Any, bands: Sequence[str] = ()) -> IndexQuery:
    """The index query of a :class:`~scenestore.search.SceneQuery` (and bands to require)."""
    return IndexQuery(
        geometry=query.geometry,
        start=query.start,
        end=query.end,
        max_cloud=query.max_cloud,
        tiles=tuple(query.tiles),
        bands=tuple(bands),
    )


def plan_offline(
    store: StoreLocation | StoreIndex,
    queries: Sequence[tuple[str, Any]],
    ids: Sequence[str],
    bands: Sequence[str],
) -> OfflinePlan:
    """Match a run's queries and ids against the stored scenes; never touches the network.

    Args:
        store: The store (or its index, already read).
        queries: ``(label, SceneQuery)`` pairs, as a run would search them.
        ids: Store identifiers or STAC item ids.
        bands: The bands the run needs.

    Returns:
        The scenes found with the bands each lacks, and the ids that name no stored scene.

    Raises:
        StoreError: If the store is missing or cannot be read.
    """
    index = (
        store
        if isinstance(store, StoreIndex)
        else StoreIndex.read(open_client(store_location(store)))
    )
    found: dict[str, tuple[SceneInfo, list[str]]] = {}
    for label, query in queries:
        for info in index.search(index_query(query)):
            found.setdefault(info.identifier, (info, []))[1].append(label)
    not_stored: list[str] = []
    if ids:
        by_item = {i.item_id: i for i in index.scenes() if i.item_id}
        for value in ids:
            hit = index.get(value) or by_item.get(value)
            if hit is None:
                not_stored.append(value)
            else:
                found.setdefault(hit.identifier, (hit, []))[1].append(value)
    scenes = [
        OfflineScene(
            identifier=identifier,
            item_id=info.item_id,
            datetime=info.datetime,
            bands=info.bands,
            missing=tuple(b for b in bands if b not in info.bands),
            found_by=tuple(dict.fromkeys(labels)),
        )
        for identifier, (info, labels) in sorted(found.items())
    ]
    return OfflinePlan(scenes=scenes, not_stored=not_stored)


__all__ = ["OfflinePlan", "OfflineScene", "index_query", "plan_offline"]
