"""Batch ingest: :meth:`StoreManager.ingest` over many scenes; one failure stops no other."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from scenestore.errors import ScenestoreError
from scenestore.manager import IngestResult, StoreManager
from scenestore.redact import redact

logger = logging.getLogger(__name__)

T = TypeVar("T")


def ingest_items(
    manager: StoreManager[T],
    items: Iterable[T],
    *,
    on_result: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Download and store the missing bands of each scene, in order.

    A scene whose download fails with a :class:`~scenestore.errors.ScenestoreError` is recorded
    with its error and the next scene goes on; other exceptions (bugs) propagate.

    Args:
        manager: The store manager (must have a store).
        items: Scenes as items or ids.
        on_result: Called after each scene, e.g. to advance a progress bar.

    Returns:
        One result per scene, in input order.
    """
    results = []
    for item in items:
        try:
            result = manager.ingest(item)
        except ScenestoreError as err:
            identifier = _safe_identifier(manager, item)
            logger.warning("Scene %s failed: %s", identifier, redact(str(err)))
            result = IngestResult(identifier, error=redact(str(err)))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _safe_identifier(manager: StoreManager[T], item: T) -> str:
    try:
        return manager.identifier(item)
    except ScenestoreError:
        return str(getattr(item, "id", item))
