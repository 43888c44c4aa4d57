"""The ingest flows: one scene (``ingest-scene``) and a search's worth of scenes (``ingest``).

``ingest`` searches once (cached), checks every scene's missing bands in one task, and only
then submits one ``store-scene`` task per incomplete scene, at most ``max_in_flight`` at a
time, on threads or on Dask. Complete scenes never get a task. A scene that fails does not
stop the others; the run ends Failed, naming them, when any failed.

With ``offline=True`` (a compute node without internet) ``ingest`` answers from the store
alone (:func:`scenestore.offline.plan_offline`): no search, no download, no write, and the
run ends Failed naming every scene that lacks bands and every id that is not stored.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import pystac
from prefect import Task, flow, get_run_logger
from prefect.artifacts import (
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.names import ingest_run_name, ingest_scene_run_name
from flows.params import (
    AoiParam,
    AreasParam,
    BandName,
    BBox,
    CloudCover,
    EndDate,
    IngestRequest,
    ItemId,
    LookbackDays,
    MgrsTile,
    ProfileName,
    RunOptions,
    StoreSpec,
    make_store_spec,
)
from flows.quicklooks import publish_quicklooks
from flows.report import (
    MAX_NAMED_FAILURES,
    IngestSummary,
    Progress,
    ScenesFailedError,
    crash_hook,
    failure_message,
    record_failure,
    record_not_found,
    report_row,
    with_queries,
)
from flows.tasks import (
    ScenePlan,
    check_scenes,
    download_scene,
    fetch_by_ids,
    missing_bands,
    retry_options,
    save_scene,
    scene_identifier,
    search,
    store_scene,
)
from scenestore._lazy import PIXEL_STACK, import_in_background
from scenestore.bands import ALL_BANDS
from scenestore.idlist import IdEntry, unique
from scenestore.idlist import item_ids as map_item_ids
from scenestore.manager import IngestResult
from scenestore.offline import OfflinePlan, plan_offline
from scenestore.profiles import get_profile
from scenestore.redact import redact
from scenestore.search import SceneQuery, merge_searches

P = ParamSpec("P")
R = TypeVar("R")

#: All bands, pre-selected in the UI's multi-select.
DEFAULT_BANDS: list[BandName] = list(ALL_BANDS)  # type: ignore[arg-type]
#: Run options used when a run gives none.
DEFAULT_OPTIONS = RunOptions()


# -- task runners -----------------------------------------------------------------------------


def scene_task_runner(options: RunOptions) -> TaskRunner[Any]:
    """The runner the per-scene tasks go to: threads, a local Dask cluster or a scheduler.

    Chosen per run from parameters, inside the flow: a wrapper flow that picks
    ``ingest.with_options(task_runner=...)`` would cost one more flow run (~1.1 s) and a second
    entry in the UI per run. The flow's own ``task_runner`` is not used for scenes.
    """
    if options.dask_address or options.use_dask:
        from prefect_dask import DaskTaskRunner

        if options.dask_address:
            return DaskTaskRunner(address=options.dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": options.dask_workers,
                "threads_per_worker": max(1, options.max_in_flight // options.dask_workers),
                "processes": True,
                "dashboard_address": None,
            },
        )
    return ThreadPoolTaskRunner(max_workers=options.max_in_flight)


# -- flows ------------------------------------------------------------------------------------


# The flow's own tasks (search, check) run in the flow thread; scenes go to the runner that
# `scene_task_runner` picks. The bounded pool only guards against unbounded threads (the
# default) should anything be submitted to the flow's runner.
# No flow-level retries: scenes already retry transient errors alone, and Prefect retries a
# flow on any failure (bad parameters, a missing item), so a retry would only delay the verdict.
# A crash is what a retry fixes: the hook says so, and Retry resumes (stored scenes skipped).
@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=True,
      flow_run_name=ingest_run_name, on_crashed=[crash_hook(
          "stored scenes are skipped and only their missing bands are downloaded.")])
def ingest(
    store: str,
    bbox: BBox | None = None,
    aoi: AoiParam = None,
    start: date | None = None,
    end: EndDate = None,
    lookback_days: LookbackDays | None = None,
    bands: list[BandName] = DEFAULT_BANDS,
    max_cloud: CloudCover | None = None,
    tiles: list[MgrsTile] | None = None,
    profile: ProfileName = "earth-search",
    stac_url: str | None = None,
    item_ids: list[ItemId] | None = None,
    areas: AreasParam = None,
    options: RunOptions = DEFAULT_OPTIONS,
    offline: bool = False,
) -> dict[str, Any] | State[Any]:
    """Search for scenes and store the missing bands of each, a bounded number at a time.

    The scenes are those of one search (bbox or aoi), of one search per area (areas), of a
    list of ids (item_ids), or of both searches and ids: each scene is stored once, and the
    report's ``query`` column names the queries that found it.

    Args:
        store: Store directory (created if missing; offline, it must exist).
        bbox: Area of interest as a lon/lat box; give this or aoi.
        aoi: Area of interest as GeoJSON (geometry, Feature or FeatureCollection).
        start: First sensing day; without it the run looks back lookback_days.
        end: Last sensing day (inclusive); defaults to the day the run was scheduled for.
        lookback_days: Days before end to start from when start is not given.
        bands: Bands to store.
        max_cloud: Highest cloud cover in percent.
        tiles: MGRS tiles to keep, e.g. ["33UUP"]; all when empty.
        profile: Provider profile.
        stac_url: STAC API root URL; the profile's by default.
        item_ids: STAC item ids or store identifiers to ingest, fetched 100 per request; an id
            the API does not have is a failed row ("not found") and fails the run.
        areas: Many queries instead of bbox/aoi: a list of areas (bbox or aoi each, with
            optional name, tiles, start and end), or a GeoJSON FeatureCollection of sites
            (name, start, end, tiles from each feature's properties).
        options: Parallelism, retries, Dask and search caching.
        offline: Answer from the store alone, as on a compute node without internet: the
            queries and ids are matched against the store index, nothing is searched,
            downloaded or written (the store may be read-only), and each scene lacking
            bands is named with the bands it lacks. stac_url and options are not used.

    Returns:
        A summary (scenes found, complete, stored, bytes) when every scene succeeded, else a
        Failed state naming the failed scenes and the ids not found. Offline: a summary
        (scenes found, ready, incomplete, not stored) when every scene found has every band
        and every id is stored, else a Failed state naming the incomplete scenes with their
        missing bands and the ids not stored.
    """
    logger = get_run_logger()
    request = IngestRequest.parse(
        store=store, bbox=bbox, aoi=aoi, start=start, end=end, lookback_days=lookback_days,
        bands=bands, max_cloud=max_cloud, tiles=tiles or [], profile=profile, stac_url=stac_url,
        item_ids=item_ids or [], areas=areas or [],
    )
    today = reference_day()
    label = request.label(today)
    queries = request.queries(today)
    spec = request.store_spec()
    if offline:
        return ingest_offline(request, spec, label=label, queries=queries)
    spec.manager().check_writable()  # before any search or download: fail fast on a bad store
    import_in_background(*PIXEL_STACK)  # while the search waits on the network
    logger.info(
        "Ingest %s of %s bands %s from %s into %s",
        label, request.bbox or ("the AOI" if request.aoi else [q for q, _ in queries] or "ids"),
        ",".join(spec.bands), redact(spec.stac_url), redact(spec.store),
    )
    found = find_all(queries, request.item_ids, spec, options)
    return ingest_items(
        found.items, spec, options, label=label, found_by=found.found_by,
        not_found=found.not_found,
    )


@flow(name="ingest-scene", validate_parameters=True, flow_run_name=ingest_scene_run_name)
def ingest_scene(
    item: str,
    store: str,
    bands: list[BandName] = DEFAULT_BANDS,
    profile: ProfileName = "earth-search",
    stac_url: str | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    """Store the missing bands of one scene, as four visible steps.

    Args:
        item: STAC item id (or store identifier) of the scene.
        store: Store directory.
        bands: Bands to store.
        profile: Provider profile.
        stac_url: STAC API root URL; the profile's by default.
        options: Retries (the other options do not apply to one scene).

    Returns:
        What was fetched: identifier, bands, bytes, seconds, and whether it was skipped.
    """
    started = time.perf_counter()
    spec = make_store_spec(store, bands, profile=profile, stac_url=stac_url)
    retrying = retry_options(
        options.retries, options.retry_backoff_seconds, options.retry_jitter_factor
    )
    identifier = scene_identifier(item, spec)
    missing = missing_bands(identifier, spec)
    if not missing:
        get_run_logger().info("Scene %s is complete; nothing to download", identifier)
        return _as_dict(
            IngestResult(identifier, skipped=True, seconds=time.perf_counter() - started)
        )
    dataset = download_scene.with_options(**retrying)(item, missing, spec)
    result = save_scene.with_options(**retrying)(dataset, identifier, spec)
    get_run_logger().info(
        "Stored %s bands %s (%d bytes)", identifier, ",".join(result.fetched),
        result.bytes_written,
    )
    return {**_as_dict(result), "seconds": time.perf_counter() - started}


def _as_dict(result: IngestResult) -> dict[str, Any]:
    """An IngestResult as plain JSON-ready values (bands as a list)."""
    return {**asdict(result), "fetched": list(result.fetched)}


# -- the parts ------------------------------------------------------------------------------


def reference_day() -> date:
    """The UTC day the current run was scheduled for (today when run directly)."""
    scheduled = flow_run.scheduled_start_time
    if scheduled is None:
        return datetime.now(UTC).date()
    return scheduled.astimezone(UTC).date()


#: Set by a backfill in each window's thread (its copy of the context only): the items the
#: backfill's one search over the whole range found in that window, by :func:`search_key`.
#: A window whose query, STAC URL and profile are there takes them instead of searching the
#: same range again; any other query is searched. A window run retried alone searches.
HANDED_ITEMS: contextvars.ContextVar[Mapping[str, list[dict[str, Any]]] | None] = (
    contextvars.ContextVar("handed_items", default=None)
)


def search_key(query: SceneQuery, spec: StoreSpec) -> str:
    """What a search's answer depends on: the canonical query, the STAC URL and the profile."""
    return f"{spec.profile} {spec.stac_url} {query.to_json()}"


def find_scenes(
    query: SceneQuery, spec: StoreSpec, options: RunOptions
) -> list[dict[str, Any]]:
    """Run the cached search task and return the items as STAC JSON documents.

    The cache key is the canonical JSON of the query plus the STAC URL and profile (and the
    task's source); it expires after ``options.search_cache_seconds`` (0: no cache).
    """
    return _cached(search, options)(query.to_json(), spec.stac_url, spec.profile)


def _cached(task: Task[P, R], options: RunOptions) -> Task[P, R]:
    """A STAC task with the run's retries and search cache (0 seconds: no cache at all)."""
    retrying = retry_options(
        options.retries, options.retry_backoff_seconds, options.retry_jitter_factor
    )
    if options.search_cache_seconds > 0:
        return task.with_options(
            cache_expiration=timedelta(seconds=options.search_cache_seconds), **retrying
        )
    return task.with_options(cache_policy=NO_CACHE, persist_result=False, **retrying)


@dataclass(frozen=True)
class FoundScenes:
    """The scenes of a run's queries and ids, merged.

    Attributes:
        items: Distinct items as STAC JSON documents, by sensing time.
        found_by: Labels of the queries that found each item id (``ids`` for the id list).
        not_found: Why each asked-for item id is missing (it names the id as given).
    """

    items: list[dict[str, Any]]
    found_by: dict[str, list[str]]
    not_found: dict[str, str]


def find_all(
    queries: Sequence[tuple[str, SceneQuery]],
    item_ids: Sequence[str],
    spec: StoreSpec,
    options: RunOptions,
) -> FoundScenes:
    """Run one cached search task per query and one cached fetch of the ids, then merge.

    Several searches are submitted together to the flow's bounded runner (4 threads); a
    scene found by several queries, or searched and listed, is ingested once.

    Raises:
        InvalidRequestError: If an id is the store identifier of another profile's scene.
    """
    search_task = _cached(search, options)
    handed = HANDED_ITEMS.get() or {}
    if len(queries) == 1 and (key := search_key(queries[0][1], spec)) in handed:
        label = queries[0][0]
        results = [(label, handed[key])]
        get_run_logger().info(
            "%d scenes from the backfill's search of the whole range; not searched again",
            len(handed[key]),
        )
    elif len(queries) == 1:
        label, query = queries[0]
        results = [(label, search_task(query.to_json(), spec.stac_url, spec.profile))]
    else:
        futures = [
            (label, search_task.submit(query.to_json(), spec.stac_url, spec.profile))
            for label, query in queries
        ]
        results = [(label, future.result()) for label, future in futures]
    not_found: dict[str, str] = {}
    if item_ids:
        entries = unique(IdEntry(v, f"item_ids[{n}]") for n, v in enumerate(item_ids))
        wanted = map_item_ids(entries, spec.profile)
        fetched = _cached(fetch_by_ids, options)(list(wanted), spec.stac_url, spec.profile)
        results.append(("ids", fetched["items"]))
        collection = get_profile(spec.profile).collection
        for item_id in fetched["missing"]:
            entry = wanted[item_id]
            asked = "" if entry.value == item_id else f" (asked as {entry.value!r})"
            not_found[item_id] = (
                f"no item {item_id!r}{asked} in collection {collection!r} at "
                f"{redact(spec.stac_url)}; expected an existing item id ({entry.source})"
            )
    items, found_by = merge_searches(results)
    return FoundScenes(items, found_by, not_found)


def ingest_items(
    items: Sequence[pystac.Item | dict[str, Any]],
    spec: StoreSpec,
    options: RunOptions,
    *,
    label: str,
    found_by: Mapping[str, Sequence[str]] | None = None,
    not_found: Mapping[str, str] | None = None,
) -> dict[str, Any] | State[Any]:
    """The per-scene part of ``ingest`` (call it inside a flow run).

    Checks all scenes in one task, submits ``store-scene`` for the incomplete ones with at
    most ``options.max_in_flight`` in flight, keeps a progress artifact current, and writes
    a table artifact: with ``found_by`` (query labels per item id) it has a ``query`` column;
    each id of ``not_found`` (item id: message) is a failed row and fails the run.

    Returns:
        The summary, or a Failed state naming the failed scenes.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    not_found = dict(not_found or {})
    summary = IngestSummary(label=label, scenes=len(items) + len(not_found))
    plans = check_scenes(quote(list(items)), spec)
    todo: list[ScenePlan] = []
    for plan in plans:
        if plan.error is not None:
            record_failure(summary, plan.name, plan.error, logger)
        elif not plan.missing:
            summary.complete += 1
            summary.rows.append(report_row(plan.name, (), 0, 0.0, "complete"))
        else:
            todo.append(plan)
    logger.info(
        "%d scenes found: %d complete, %d to download, %d invalid",
        summary.scenes, summary.complete, len(todo), len(summary.failed),
    )
    for item_id, message in not_found.items():
        record_not_found(summary, item_id, message, logger)
    progress = Progress(total=len(items), done=len(items) - len(todo), label=label)
    if todo:
        _run_scenes(todo, spec, options, summary, progress)
    progress.finish()
    stored = [r["scene"] for r in summary.rows if r["status"] == "stored"]
    if options.quicklooks:
        publish_quicklooks(stored, spec, label=label)
    summary.seconds = time.perf_counter() - started
    rows = summary.rows
    if found_by is not None:
        labels = {plan.name: ", ".join(found_by.get(plan.item_id, ())) for plan in plans}
        rows = with_queries(rows, {**labels, **dict.fromkeys(not_found, "ids")})
    create_table_artifact(
        table=rows,
        key="ingest-report",
        description=(
            f"Ingest {label}: {summary.scenes} scenes, {summary.complete} already complete, "
            f"{summary.stored} stored ({summary.bytes_written} bytes), "
            f"{len(summary.failed)} failed."
        ),
    )
    if summary.failed:
        message = failure_message(summary)
        logger.error(message)
        return Failed(
            message=message,
            data=ScenesFailedError(message, dict(summary.failed), summary.as_result()),
        )
    return summary.as_result()


def ingest_offline(
    request: IngestRequest,
    spec: StoreSpec,
    *,
    label: str,
    queries: Sequence[tuple[str, SceneQuery]],
) -> dict[str, Any] | State[Any]:
    """The offline part of ``ingest``: what the store holds for the run (call it in a flow run).

    Reads the store index only (:func:`~scenestore.offline.plan_offline`), so it works on a
    read-only store without network; writes the ``ingest-report`` table artifact with one
    row per scene (``ready``, ``incomplete (lacks B08)``) and per id not stored.

    Returns:
        The summary (``scenes``, ``ready``, ``incomplete``, ``not_stored``, and the ready
        ``identifiers``), or a Failed state naming what is incomplete or not stored.

    Raises:
        InvalidRequestError: If an id is the store identifier of another profile's scene.
        StoreError: If the store is missing or cannot be read.
    """
    logger = get_run_logger()
    logger.info(
        "Offline ingest %s of bands %s from %s alone: nothing is searched or downloaded",
        label, ",".join(spec.bands), redact(spec.store),
    )
    # The same id checks as online (another profile's identifier is refused); an item id and
    # its store identifier count once. plan_offline matches either form.
    entries = unique(IdEntry(v, f"item_ids[{n}]") for n, v in enumerate(request.item_ids))
    wanted = map_item_ids(entries, spec.profile)
    plan = plan_offline(spec.store, queries, [e.value for e in wanted.values()], spec.bands)
    failures: dict[str, str] = {}
    for scene in plan.incomplete:
        failures[scene.identifier] = f"lacks {','.join(scene.missing)}"
        logger.warning(
            "%s lacks %s; run without offline with network access to fetch them",
            scene.identifier, ",".join(scene.missing),
        )
    sources = {e.value: e.source for e in wanted.values()}
    for value in plan.not_stored:
        failures[value] = (
            f"not stored: {value} ({sources.get(value, 'item_ids')}) is no scene of "
            f"{redact(spec.store)}"
        )
        logger.warning(
            "%s (%s) is not stored in %s; expected a store identifier or item id that "
            "`scenestore ls` lists, or run without offline with network access to fetch it",
            value, sources.get(value, "item_ids"), redact(spec.store),
        )
    ready = [s.identifier for s in plan.scenes if not s.missing]
    summary: dict[str, Any] = {
        "label": label,
        "offline": True,
        "scenes": len(plan.scenes),
        "ready": len(ready),
        "incomplete": len(plan.incomplete),
        "not_stored": len(plan.not_stored),
        "identifiers": ready,
    }
    logger.info(
        "Offline: %d of %d scenes have every requested band in %s; %d ids not stored; "
        "nothing was downloaded",
        len(ready), len(plan.scenes), redact(spec.store), len(plan.not_stored),
    )
    create_table_artifact(
        table=_offline_rows(plan, failures),
        key="ingest-report",
        description=(
            f"Offline ingest {label}: {len(plan.scenes)} stored scenes found, {len(ready)} "
            f"ready, {len(plan.incomplete)} incomplete, {len(plan.not_stored)} ids not "
            "stored; nothing was downloaded."
        ),
    )
    if plan.ready:
        return summary
    message = _offline_failure_message(plan, label)
    logger.error(message)
    return Failed(message=message, data=ScenesFailedError(message, failures, summary))


def _offline_rows(plan: OfflinePlan, failures: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ingest-report rows of an offline run: the online columns, nothing fetched."""
    rows: list[dict[str, Any]] = []
    labels: dict[str, str] = {}
    for scene in plan.scenes:
        status = f"incomplete (lacks {','.join(scene.missing)})" if scene.missing else "ready"
        rows.append(report_row(
            scene.identifier, (), 0, 0.0, status,
            error=failures.get(scene.identifier), missing=scene.missing,
        ))
        labels[scene.identifier] = ", ".join(scene.found_by)
    for value in plan.not_stored:
        rows.append(report_row(value, (), 0, 0.0, "not stored", error=failures[value]))
        labels[value] = "ids"
    return with_queries(rows, labels)


def _offline_failure_message(plan: OfflinePlan, label: str) -> str:
    """The Failed state's message of an offline run: each incomplete scene and its bands."""
    named = [f"{s.identifier} lacks {','.join(s.missing)}" for s in plan.incomplete]
    named += [f"{value} is not stored" for value in plan.not_stored]
    shown = "; ".join(named[:MAX_NAMED_FAILURES])
    more = len(named) - MAX_NAMED_FAILURES
    parts = []
    if plan.incomplete:
        parts.append(f"{len(plan.incomplete)} of {len(plan.scenes)} stored scenes incomplete")
    if plan.not_stored:
        parts.append(f"{len(plan.not_stored)} ids not stored")
    return (
        f"Offline ingest {label}: {' and '.join(parts)}: {shown}"
        + (f"; and {more} more (see the ingest-report artifact)" if more > 0 else "")
        + "; run without offline with network access to fetch them."
    )


def _run_scenes(
    todo: list[ScenePlan],
    spec: StoreSpec,
    options: RunOptions,
    summary: IngestSummary,
    progress: Progress,
) -> None:
    """Submit ``store-scene`` for each plan, keeping at most ``max_in_flight`` in flight."""
    logger = get_run_logger()
    task = store_scene.with_options(
        **retry_options(options.retries, options.retry_backoff_seconds, options.retry_jitter_factor)
    )
    queue = list(reversed(todo))
    in_flight: dict[PrefectFuture[IngestResult], ScenePlan] = {}
    with scene_task_runner(options) as runner:
        while queue or in_flight:
            while queue and len(in_flight) < options.max_in_flight:
                plan = queue.pop()
                future = runner.submit(task, parameters={"item": plan.item(), "spec": spec})
                in_flight[future] = plan
            # Take the first future to finish, then refill the free slot.
            future = next(as_completed(list(in_flight)))
            plan = in_flight.pop(future)
            _collect(future, plan, summary, logger)
            progress.advance()


def _collect(
    future: PrefectFuture[IngestResult], plan: ScenePlan, summary: IngestSummary, logger: Any
) -> None:
    identifier = plan.name
    future.wait()  # sets the final state from the runner; reading it earlier asks the API
    state = future.state
    if state.is_completed():
        result: IngestResult = future.result()
        status = "complete" if result.skipped else "stored"
        summary.stored += 0 if result.skipped else 1
        summary.complete += 1 if result.skipped else 0
        summary.bytes_written += result.bytes_written
        summary.rows.append(
            report_row(identifier, result.fetched, result.bytes_written, result.seconds, status)
        )
        logger.info(
            "%s %s: %s (%d bytes, %.1f s)", status.capitalize(), identifier,
            ",".join(result.fetched) or "-", result.bytes_written, result.seconds,
        )
        return
    error = state.result(raise_on_failure=False)
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else state.message
    record_failure(summary, identifier, redact(str(text)), logger, missing=plan.missing)


__all__ = [
    "DEFAULT_BANDS",
    "DEFAULT_OPTIONS",
    "HANDED_ITEMS",
    "FoundScenes",
    "IngestSummary",
    "ScenesFailedError",
    "find_all",
    "find_scenes",
    "ingest",
    "ingest_items",
    "ingest_offline",
    "ingest_scene",
    "reference_day",
    "scene_task_runner",
    "search_key",
]
