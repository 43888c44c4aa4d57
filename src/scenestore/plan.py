"""Ingest planning: what each scene of a search result still needs, decided before any download.

The check is one pass over the items that asks the store only what it already knows: the
scene identifier (pure) and the missing bands (the commit records; pixels are never read). A
scene that cannot be planned (no valid identifier, an unreadable store entry) becomes a plan
with an error instead of an exception, so one bad item cannot stop the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pystac

from scenestore.errors import ScenestoreError
from scenestore.redact import redact

if TYPE_CHECKING:
    from scenestore.manager import StoreManager

#: What a plan can be made from: a pystac Item, a STAC item document, or an item id.
PlanSource = pystac.Item | dict[str, Any] | str


@dataclass(frozen=True)
class ScenePlan:
    """What the bulk check found for one scene.

    Attributes:
        source: The scene's STAC item, as a pystac Item, a STAC JSON document or an item id.
        identifier: Its store identifier, or None when it has no valid one.
        missing: Bands the store lacks (empty: the scene is complete).
        error: Why the scene cannot be ingested, when it cannot.
    """

    source: PlanSource
    identifier: str | None
    missing: tuple[str, ...] = ()
    error: str | None = None

    @property
    def item_id(self) -> str:
        """The STAC item id."""
        if isinstance(self.source, dict):
            return self.source["id"]
        if isinstance(self.source, str):
            return self.source
        return self.source.id

    @property
    def name(self) -> str:
        """The identifier, or the item id when there is no valid identifier."""
        return self.identifier or str(self.item_id)

    @property
    def is_complete(self) -> bool:
        """Whether the scene is planned and the store lacks none of its bands."""
        return self.error is None and not self.missing

    def item(self) -> pystac.Item:
        """The pystac Item (parsed only here: ~1 ms each, so only for scenes to download).

        Raises:
            TypeError: If the plan was made from a bare item id, which holds no item.
        """
        if isinstance(self.source, pystac.Item):
            return self.source
        if isinstance(self.source, str):
            raise TypeError(
                f"Plan of {self.source!r} was made from an item id, not an item; expected a "
                "pystac Item or a STAC item document as its source (or fetch the item by id)."
            )
        return pystac.Item.from_dict(self.source)


def plan_ingest(manager: StoreManager[Any], items: Iterable[PlanSource]) -> list[ScenePlan]:
    """Plan every scene at once: its identifier and the bands the store lacks.

    Uses only the manager's public contract (:meth:`~StoreManager.identifier` and
    :meth:`~StoreManager.missing_bands`, one listing of commit records per scene), so it
    works for every store backend and makes no source requests.

    Args:
        manager: The store manager whose bands and store are planned for.
        items: pystac Items, STAC item documents (dicts, as a cached search returns them;
            never parsed here, that costs ~1 ms each) or item ids, in the order to report.

    Returns:
        One plan per item, in order. A scene that cannot be planned (an invalid identifier,
        a store error) is a plan with ``error`` set and no identifier, never an exception.
    """
    plans = []
    for item in items:
        try:
            identifier = manager.identifier(item["id"] if isinstance(item, dict) else item)
            plans.append(ScenePlan(item, identifier, tuple(manager.missing_bands(identifier))))
        except ScenestoreError as err:
            plans.append(ScenePlan(item, None, error=redact(str(err))))
    return plans


__all__ = ["PlanSource", "ScenePlan", "plan_ingest"]
