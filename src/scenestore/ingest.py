"""Batch ingest: :meth:`StoreManager.ingest` over many scenes; one failure stops no other.

Scenes are ingested in threads of this process. Asked for (``processes=N`` or
``SCENESTORE_PROCESSES=N``), several scenes of a local store are ingested in forked worker
processes instead, one scene per process at a time (:mod:`scenestore.procpool`), so small
scenes keep every core busy. It is opt-in: it about doubles the peak memory (a full tile per
worker). A worker forked after this process read pixels in threads used to hang; the two causes
and their fixes are in :mod:`scenestore.procpool`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from scenestore.errors import InvalidRequestError, ScenestoreError, store_io_error
from scenestore.manager import IngestResult, StoreManager
from scenestore.network import DEFAULT_RETRIES, transient_retrying
from scenestore.procpool import (
    PROCESSES_ENV,
    ingest_in_processes,
    processes_wanted,
    unfit_for_processes,
)
from scenestore.redact import redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Scenes in flight at once by default: while one scene's pixels are decoded and compressed,
#: the next one's metadata, requests and zarr set-up overlap with it.
DEFAULT_SCENES_IN_FLIGHT = 2


def ingest_items(
    manager: StoreManager[T],
    items: Iterable[T],
    *,
    max_workers: int = DEFAULT_SCENES_IN_FLIGHT,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float | None = None,
    on_result: Callable[[IngestResult], None] | None = None,
    processes: int | None = None,
) -> list[IngestResult]:
    """Download and store the missing bands of each scene, several scenes at a time.

    A transient failure (:class:`~scenestore.errors.TransientSourceError`: HTTP 5xx/429, a
    reset connection, a truncated body) is retried with exponential backoff and jitter; a
    retry is safe because nothing is committed until a band is whole. A scene that still fails,
    or fails for another :class:`~scenestore.errors.ScenestoreError`, is recorded with its
    error and the others go on; other exceptions (bugs) propagate.

    Args:
        manager: The store manager (must have a store).
        items: Scenes as items or ids.
        max_workers: Scenes in flight at once (>= 1): worker processes of one scene each, or
            threads when processes are not used.
        retries: Further attempts of a scene after a transient failure.
        backoff_s: First retry delay in seconds (default
            :func:`scenestore.network.retry_backoff_s`); doubles on each retry, plus jitter.
        on_result: Called after each scene as it finishes, e.g. to advance a progress bar;
            always in this process.
        processes: Worker processes at most (0 or 1: threads only); None reads
            ``SCENESTORE_PROCESSES`` (unset: one per core when every scene is a STAC item
            of at most 2048 px, and this process runs no other thread; else threads). Used
            for two or more scenes of a local store, up to ``max_workers`` and the number of
            scenes; see :mod:`scenestore.procpool`.

    Returns:
        One result per scene, in input order.

    Raises:
        InvalidRequestError: If ``max_workers`` is below 1, or ``processes`` (or
            ``SCENESTORE_PROCESSES``) is not a count >= 0.
    """
    if max_workers < 1:
        raise InvalidRequestError(
            f"Scenes in flight {max_workers!r} is below 1; expected a positive number."
        )
    items = list(items)
    asked = processes is not None or bool(os.environ.get(PROCESSES_ENV, "").strip())
    workers = min(processes_wanted(processes, items), max_workers, len(items))

    # Only TransientSourceError is retried: a local I/O error (StoreIOError, disk full) or a
    # user mistake would fail the same way again.
    retrying = transient_retrying(retries, backoff_s=backoff_s, what="a scene")

    def one(item: T) -> IngestResult:
        try:
            try:
                result = retrying.copy()(manager.ingest, item)
            except OSError as err:
                # Disk full or read-only while the scene is created: one line, not a traceback.
                local = store_io_error(err)
                if local is None:
                    raise
                raise local from err
        except ScenestoreError as err:
            identifier = _safe_identifier(manager, item)
            # The result carries the error; callers report it (the CLI in its summary).
            logger.info("Scene %s failed: %s", identifier, redact(str(err)))
            result = IngestResult(identifier, error=redact(str(err)))
        return result

    def reported(item: T) -> IngestResult:
        result = one(item)
        if on_result is not None:
            on_result(result)
        return result

    if workers >= 2:
        unfit = unfit_for_processes(manager, asked=asked)
        if unfit is None:
            return ingest_in_processes(
                one,
                items,
                workers,
                on_result=on_result,
                identifier=lambda item: _safe_identifier(manager, item),
            )
        logger.debug("Scenes are ingested in threads: %s", unfit)
    if max_workers == 1 or len(items) <= 1:
        return [reported(item) for item in items]
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="scene") as pool:
        return list(pool.map(reported, items))


def _safe_identifier(manager: StoreManager[T], item: T) -> str:
    try:
        return manager.identifier(item)
    except ScenestoreError:
        return str(getattr(item, "id", item))
