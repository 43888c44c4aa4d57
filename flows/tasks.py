"""Prefect tasks: one-line bodies around the scenestore library.

What is persisted as a Prefect result: only the STAC search (item documents as JSON, for the
search cache). Every task that sees a Dataset, and every per-scene task, runs with
``persist_result=False`` and returns small values (identifiers, band lists, byte counts); the
store itself is the scene cache (:meth:`~scenestore.manager.StoreManager.missing_bands`).

Retries target exactly :class:`~scenestore.errors.TransientSourceError` (HTTP 5xx, 429,
timeouts, resets, as the library classifies them); user errors (unknown band, bad identifier,
coordinate mismatch, an item without the asset) fail at once.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pystac
from prefect import Task, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import MissingContextError
from prefect.states import State
from prefect.tasks import exponential_backoff

from flows.params import StoreSpec
from flows.throttle import provider_slot
from scenestore.errors import ScenestoreError, TransientSourceError
from scenestore.manager import IngestResult
from scenestore.network import DEFAULT_BACKOFF_S, DEFAULT_JITTER, DEFAULT_RETRIES
from scenestore.plan import ScenePlan, plan_ingest
from scenestore.search import SceneQuery, fetch_items, search_scenes

if TYPE_CHECKING:  # xarray (and pandas) load with the pixel stack, in the background
    import xarray as xr

#: Retry defaults unless a run asks otherwise (RunOptions): the library's and the CLI's, one place.
DEFAULT_BACKOFF_SECONDS = DEFAULT_BACKOFF_S
#: How long a search result is reused unless a run asks otherwise.
DEFAULT_SEARCH_CACHE = timedelta(hours=1)


def is_transient(error: BaseException | None) -> bool:
    """Whether retrying could help: a transient source error, or a bare network error."""
    if isinstance(error, TransientSourceError):
        return True
    # Anything else scenestore raises on purpose is a verdict, not a hiccup.
    return isinstance(error, ConnectionError | TimeoutError) and not isinstance(
        error, ScenestoreError
    )


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """``retry_condition_fn``: retry only when the failure is transient."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            result = state.result(raise_on_failure=False)
        except Exception as err:  # a result that cannot be read is no reason to retry
            result = err
        error = result if isinstance(result, BaseException) else None
    retry = is_transient(error)
    if not retry:
        _logger().info("Not retrying %s: %s is not transient", task_run.name, type(error).__name__)
    return retry


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def retry_options(
    retries: int = DEFAULT_RETRIES,
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    jitter: float = DEFAULT_JITTER,
) -> dict[str, Any]:
    """Keyword arguments for ``task.with_options`` that set the transient-error retries."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff_seconds),
        "retry_jitter_factor": jitter,
        "retry_condition_fn": retry_if_transient,
    }


# -- search (cached) --------------------------------------------------------------------------


@task(
    name="search-scenes",
    cache_policy=INPUTS + TASK_SOURCE,
    cache_expiration=DEFAULT_SEARCH_CACHE,
    result_serializer="json",
    **retry_options(),
)
def search(query_json: str, stac_url: str, profile: str) -> list[dict[str, Any]]:
    """Search the STAC API; cached by the canonical query text, URL, profile and this code.

    Args:
        query_json: The query as :meth:`scenestore.search.SceneQuery.to_json` renders it.
        stac_url: STAC API root URL (resolved, never None, so defaults share one cache entry).
        profile: Provider profile name.

    Returns:
        The matching items as STAC JSON documents (small, JSON-persisted for the cache).
    """
    with provider_slot(profile):  # the provider's fleet-wide budget (flows/throttle.py)
        items = search_scenes(SceneQuery.from_json(query_json), stac_url=stac_url, profile=profile)
    return [item.to_dict(transform_hrefs=False) for item in items]


@task(
    name="fetch-items",
    cache_policy=INPUTS + TASK_SOURCE,
    cache_expiration=DEFAULT_SEARCH_CACHE,
    result_serializer="json",
    **retry_options(),
)
def fetch_by_ids(item_ids: list[str], stac_url: str, profile: str) -> dict[str, Any]:
    """Fetch items by id, 100 ids per STAC request; cached like :func:`search`.

    Args:
        item_ids: STAC item ids (store identifiers already mapped back), each once, in order.
        stac_url: STAC API root URL (resolved, never None).
        profile: Provider profile name.

    Returns:
        ``{"items": [STAC JSON documents], "missing": [ids the API has no item for]}``.
    """
    with provider_slot(profile):
        fetched = fetch_items(item_ids, stac_url=stac_url, profile=profile)
    return {
        "items": [item.to_dict(transform_hrefs=False) for item in fetched.items],
        "missing": fetched.missing,
    }


# -- bulk planning ----------------------------------------------------------------------------


@task(name="check-scenes", persist_result=False)
def check_scenes(items: list[pystac.Item | dict[str, Any]], spec: StoreSpec) -> list[ScenePlan]:
    """Find the missing bands of every scene at once (one directory listing per scene).

    Pass a long list wrapped in ``prefect.utilities.annotations.quote``: otherwise Prefect
    walks every nested value of the items looking for futures (3.5 s for 1,000 item dicts).
    A scene without a valid identifier is planned as failed, not raised, so it cannot stop
    the others (:func:`scenestore.plan.plan_ingest` decides).
    """
    return plan_ingest(spec.manager(), items)


# -- the four steps of one scene --------------------------------------------------------------


@task(name="scene-identifier", persist_result=False)
def scene_identifier(item: pystac.Item | str, spec: StoreSpec) -> str:
    """Return the scene's store identifier (raises InvalidIdentifierError, never retried)."""
    return spec.manager().identifier(item)


@task(name="missing-bands", persist_result=False)
def missing_bands(identifier: str, spec: StoreSpec) -> list[str]:
    """Return the bands of ``spec`` that the stored scene lacks."""
    return spec.manager().missing_bands(identifier)


@task(name="download-scene", persist_result=False, **retry_options())
def download_scene(item: pystac.Item | str, bands: list[str], spec: StoreSpec) -> xr.Dataset:
    """Open the scene's bands lazily (dask); no pixels move here.

    Only the item lookup of an id (a STAC request) can fail transiently, so this retries too.
    The Dataset is never persisted: it lives in memory until :func:`save_scene` computes it.
    """
    with provider_slot(spec.profile):  # the COG header checks read the source
        return spec.manager().download_for_store(item, bands)


@task(name="save-scene", persist_result=False, **retry_options())
def save_scene(dataset: xr.Dataset, identifier: str, spec: StoreSpec) -> IngestResult:
    """Compute the lazy Dataset and commit its bands: the step where the bytes move.

    This is the step whose retries matter: a 503 or a reset while reading a COG surfaces
    here. A retry recomputes the lazy Dataset from the source; already committed bands are
    replaced, never half-written (the library stages and commits).
    """
    manager = spec.manager()
    with provider_slot(spec.profile):
        manager.save_to_store(dataset, identifier)
    bands = [str(b) for b in dataset.data_vars]
    return IngestResult(
        identifier, fetched=tuple(bands), bytes_written=manager.stored_bytes(identifier, bands)
    )


# -- what `ingest` maps -----------------------------------------------------------------------


@task(name="store-scene", task_run_name="store-{item.id}", persist_result=False, **retry_options())
def store_scene(item: pystac.Item, spec: StoreSpec) -> IngestResult:
    """Download and commit the missing bands of one scene: the unit `ingest` maps and retries.

    The library re-checks the missing bands under the scene lock, so a scene another run
    finished in the meantime is skipped, and a retry only fetches what is still missing.
    """
    with provider_slot(spec.profile):
        return spec.manager().ingest(item)


__all__ = [
    "ScenePlan",
    "check_scenes",
    "download_scene",
    "fetch_by_ids",
    "is_transient",
    "missing_bands",
    "retry_if_transient",
    "retry_options",
    "save_scene",
    "scene_identifier",
    "search",
    "store_scene",
]
