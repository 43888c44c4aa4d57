"""The ``backfill`` flow: a long date range as one ingest run per window.

Each window is its own ``ingest`` flow run, started through a deployment with
``run_deployment(..., timeout=0)`` and polled until final, so every window shows in the UI and
can be retried alone. Without a deployment the windows run in-process as subflows (no worker
needed). Windows whose scenes are all stored are skipped before any run is started; the check
is the cached search plus one bulk missing-band check per window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Failed, State
from prefect.utilities.annotations import quote
from pydantic import Field

from flows.ingest import DEFAULT_BANDS, DEFAULT_OPTIONS, find_scenes, ingest
from flows.params import (
    BandName,
    BBox,
    CloudCover,
    IngestRequest,
    MgrsTile,
    ProfileName,
    RunOptions,
    StoreSpec,
)
from flows.tasks import check_scenes
from flows.windows import DateWindow, WindowUnit, split_windows
from scenestore.redact import redact

#: Seconds between two polls of the window runs.
DEFAULT_POLL_SECONDS = 5.0


@dataclass
class WindowOutcome:
    """What happened to one window.

    Attributes:
        window: The window.
        status: ``"complete"`` (skipped: nothing to do), or the run's final state name.
        flow_run_id: The window's ingest run, when one was started.
        message: The run's state message, for failures.
    """

    window: DateWindow
    status: str
    flow_run_id: UUID | None = None
    message: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the window's run ended in a failed (or crashed/cancelled) state."""
        return self.status not in ("complete", "Completed")


@flow(name="backfill", validate_parameters=True)
def backfill(
    store: str,
    start: date,
    end: date,
    bbox: BBox | None = None,
    aoi: dict[str, Any] | None = None,
    bands: list[BandName] = DEFAULT_BANDS,
    max_cloud: CloudCover | None = None,
    tiles: list[MgrsTile] | None = None,
    profile: ProfileName = "earth-search",
    stac_url: str | None = None,
    window_unit: WindowUnit = "month",
    window_length: Annotated[int, Field(ge=1, le=366)] = 1,
    deployment: str | None = None,
    max_windows_in_flight: Annotated[int, Field(ge=1, le=100)] = 2,
    poll_seconds: Annotated[float, Field(gt=0, le=600)] = DEFAULT_POLL_SECONDS,
    skip_complete_windows: bool = True,
    options: RunOptions = DEFAULT_OPTIONS,
) -> dict[str, Any] | State[Any]:
    """Ingest ``start..end`` as one ingest run per window.

    Args:
        store: Store directory.
        start: First sensing day.
        end: Last sensing day (inclusive).
        bbox: Area of interest as a lon/lat box; give this or aoi.
        aoi: Area of interest as GeoJSON.
        bands: Bands to store.
        max_cloud: Highest cloud cover in percent.
        tiles: MGRS tiles to keep; all when empty.
        profile: Provider profile.
        stac_url: STAC API root URL; the profile's by default.
        window_unit: Window size unit: day, week or (calendar) month.
        window_length: Window size in units.
        deployment: The ingest deployment to start per window, e.g. ingest/on-demand;
            None runs the windows in this process as subflows.
        max_windows_in_flight: Window runs started and not yet final at any time.
        poll_seconds: Seconds between polls of the window runs.
        skip_complete_windows: Skip windows whose scenes are all stored (search + check).
        options: Run options passed to every window's ingest.

    Returns:
        Status per window, or a Failed state naming the failed windows.
    """
    logger = get_run_logger()
    request = IngestRequest.parse(
        store=store, bbox=bbox, aoi=aoi, start=start, end=end, bands=bands,
        max_cloud=max_cloud, tiles=tiles or [], profile=profile, stac_url=stac_url,
    )
    spec = request.store_spec()
    spec.manager().check_writable()
    windows = split_windows(start, end, unit=window_unit, length=window_length)
    logger.info("Backfill %s..%s as %d windows", start, end, len(windows))
    outcomes: dict[DateWindow, WindowOutcome] = {}
    todo = []
    for window in windows:
        if skip_complete_windows and window_is_complete(request, window, spec, options):
            logger.info("Window %s: every scene is stored; skipped", window.label)
            outcomes[window] = WindowOutcome(window, "complete")
        else:
            todo.append(window)
    params = {w: window_parameters(request, w, options) for w in todo}
    if deployment:
        outcomes.update(
            _run_deployments(deployment, params, max_windows_in_flight, poll_seconds)
        )
    else:
        for window, window_params in params.items():
            state = ingest(**window_params, return_state=True)
            outcomes[window] = WindowOutcome(window, state.name, message=state.message)
    return _final(
        [outcomes[w] for w in windows], logger, failed_hint="retry the failed window runs alone"
    )


def window_is_complete(
    request: IngestRequest, window: DateWindow, spec: StoreSpec, options: RunOptions
) -> bool:
    """Whether every scene the (cached) search finds in ``window`` is complete in the store.

    A window without scenes counts as complete. A scene without a valid identifier does not:
    its window runs, so the failure shows in that run.
    """
    items = find_scenes(request.scene_query(window), spec, options)
    plans = check_scenes(quote(items), spec)
    return all(plan.error is None and not plan.missing for plan in plans)


def window_parameters(
    request: IngestRequest, window: DateWindow, options: RunOptions
) -> dict[str, Any]:
    """Parameters of the ingest run for one window (JSON-ready, as a deployment takes them)."""
    return {
        "store": request.store,
        "bbox": request.bbox.model_dump() if request.bbox else None,
        "aoi": request.aoi,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "bands": list(request.bands),
        "max_cloud": request.max_cloud,
        "tiles": list(request.tiles),
        "profile": request.profile,
        "stac_url": request.stac_url,
        "options": options.model_dump(mode="json"),
    }


def _run_deployments(
    deployment: str,
    params: dict[DateWindow, dict[str, Any]],
    max_in_flight: int,
    poll_seconds: float,
) -> dict[DateWindow, WindowOutcome]:
    """Start one run per window, at most ``max_in_flight`` unfinished, and poll to the end."""
    logger = get_run_logger()
    queue = list(params)
    running: dict[UUID, DateWindow] = {}
    outcomes: dict[DateWindow, WindowOutcome] = {}
    with get_client(sync_client=True) as client:
        while queue or running:
            while queue and len(running) < max_in_flight:
                window = queue.pop(0)
                run: FlowRun = run_deployment(
                    name=deployment,
                    parameters=params[window],
                    timeout=0,
                    flow_run_name=f"ingest {window.label}",
                    tags=["backfill"],
                )
                logger.info("Window %s: started flow run %s", window.label, run.name)
                running[run.id] = window
            time.sleep(poll_seconds)
            for run_id, window in list(running.items()):
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    del running[run_id]
                    outcomes[window] = WindowOutcome(window, state.name, run_id, state.message)
                    logger.info("Window %s: %s", window.label, state.name)
    return outcomes


def _final(
    outcomes: list[WindowOutcome], logger: Any, *, failed_hint: str
) -> dict[str, Any] | State[Any]:
    summary = {o.window.label: o.status for o in outcomes}
    failed = [o for o in outcomes if o.failed]
    if failed:
        names = "; ".join(
            f"{o.window.label} ({o.status}: {redact(o.message or '')[:200]})" for o in failed
        )
        message = f"{len(failed)} of {len(outcomes)} windows failed: {names}; {failed_hint}."
        logger.error(message)
        return Failed(message=message, data=RuntimeError(message))
    logger.info("Backfill done: %s", summary)
    return {"windows": summary}


__all__ = ["WindowOutcome", "backfill", "window_is_complete", "window_parameters"]
