"""The ``backfill`` flow: a long date range as one ingest run per window, in date order.

Two modes (the ``mode`` parameter):

* ``"subflows"`` (the default): each window is an ``ingest`` subflow run in this process, at
  most ``max_windows_in_flight`` at a time (default 1, see :data:`DEFAULT_WINDOWS_IN_FLIGHT`).
  No worker, no process start and no polling per window: the cost of a window is the ingest
  itself plus its flow run's API writes (about a second on a SQLite server); the next window
  starts as soon as the previous one's state is final. Right for small areas, where a window
  takes seconds.
* ``"deployments"``: each window is a run of an ingest deployment (``ingest/on-demand`` by
  default), started with ``run_deployment(..., timeout=0)``, at most ``max_windows_in_flight``
  (default 2) unfinished at a time, on whatever workers serve the pool. Right for long, large
  windows that should spread over machines. The window runs are polled with one bulk
  ``read_flow_runs`` per poll, at an interval that starts at ``poll_seconds`` and grows while
  nothing finishes.

Either way windows start in date order, and every window is its own flow run, named
``ingest <first day>..<last day>``, that shows in the UI and can be retried alone. Windows
whose scenes are all stored are skipped before any run starts: one search over the whole range
and one bulk missing-band check, each scene counted in the window of its sensing day. In
subflows mode that search also gives each window its scenes (``flows.ingest.HANDED_ITEMS``):
the window runs do not search again. The
backfill run keeps two artifacts current: a table of the windows (``backfill-windows``) and its
progress (``backfill-progress``). In subflows mode it also shows the quicklooks of every window's
stored scenes in one ``backfill-quicklooks`` artifact, rendered while the next window runs; the
window runs make none of their own (in deployments mode each window run makes its own).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Failed, State
from prefect.utilities.annotations import quote
from pydantic import Field

from flows.ingest import (
    DEFAULT_BANDS,
    DEFAULT_OPTIONS,
    HANDED_ITEMS,
    find_scenes,
    ingest,
    search_key,
)
from flows.params import (
    AoiParam,
    BandName,
    BBox,
    CloudCover,
    IngestRequest,
    MgrsTile,
    ProfileName,
    RequiredEndDate,
    RunOptions,
    StoreSpec,
)
from flows.quicklooks import QUICKLOOK_SINK, QuicklookCollector
from flows.report import PARENT_SHOWS_PROGRESS, crash_hook
from flows.tasks import check_scenes
from flows.windows import DateWindow, WindowUnit, split_windows
from scenestore._lazy import PIXEL_STACK, import_in_background
from scenestore.aoi import sensing_day
from scenestore.errors import InvalidRequestError
from scenestore.redact import redact

#: How the windows run: in this process, or as runs of an ingest deployment on workers.
BackfillMode = Literal["subflows", "deployments"]
#: The ingest deployment started per window in deployments mode.
DEFAULT_DEPLOYMENT = "ingest/on-demand"
#: Windows in flight unless the run says otherwise. Subflows: one at a time. A small
#: window's cost is mostly its flow run's API writes (creating the run and its tracking task
#: run, states, artifacts, the tasks' events), which the Prefect server applies one at a
#: time on SQLite; a second window in flight only makes the other's writes wait (one-year
#: monthly benchmark on 2 cores: flow 19.5 s at 1, 23.5 s at 2, 26 s at 4, medians). The next
#: window still starts as soon as the previous one's state is final. Deployments: windows
#: run on workers, where their work, not the API, is the cost.
DEFAULT_WINDOWS_IN_FLIGHT: dict[str, int] = {"subflows": 1, "deployments": 2}
#: First interval between two polls of the window runs (deployments mode), in seconds.
DEFAULT_POLL_SECONDS = 5.0
#: Longest interval between two polls, however long the windows take.
MAX_POLL_SECONDS = 60.0
#: Factor the poll interval grows by after a poll in which no window finished.
POLL_BACKOFF = 1.5


def window_run_name(window: DateWindow) -> str:
    """The flow run name of a window's ingest run, e.g. ``ingest 2024-06-01..2024-06-30``.

    The ingest flow names its runs the same way (``flows.names.ingest_run_name``), so a
    window's subflow gets this name without ``with_options`` (which costs ~0.1 s a call).
    """
    return f"ingest {window.label}"


@dataclass
class WindowOutcome:
    """What happened to one window.

    Attributes:
        window: The window.
        status: ``"pending"``, ``"running"``, ``"complete"`` (skipped: nothing to do), or the
            run's final state name.
        flow_run_id: The window's ingest run, when one was started.
        message: The run's state message, for failures.
        result: The ingest run's summary (scenes, stored, bytes...), when known.
    """

    window: DateWindow
    status: str
    flow_run_id: UUID | None = None
    message: str | None = None
    result: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        """Whether the window's run ended in a failed (or crashed/cancelled) state."""
        return self.status not in ("complete", "Completed", "pending", "running")

    @property
    def done(self) -> bool:
        """Whether the window needs nothing more (skipped or final)."""
        return self.status not in ("pending", "running")

    def row(self) -> dict[str, Any]:
        """The window's row of the ``backfill-windows`` table artifact."""
        result = self.result or {}
        return {
            "window": self.window.label,
            "status": self.status,
            "flow run": window_run_name(self.window) if self.flow_run_id or result else "",
            "scenes": result.get("scenes", ""),
            "stored": result.get("stored", ""),
            "bytes": result.get("bytes_written", ""),
            "message": redact(self.message or "")[:300],
        }


#: Seconds between two updates of the window table and progress artifacts while windows run
#: (each update is an API write, and the server's writes are what a small window costs); both
#: get their last version when the backfill ends.
TABLE_INTERVAL_S = 5.0


class WindowBoard:
    """The backfill run's window table and progress artifacts, kept current.

    While windows run, both are updated at most every :data:`TABLE_INTERVAL_S` seconds (the
    table as a new version of ``backfill-windows``, the progress in place), and once more
    when the backfill ends.
    """

    def __init__(self, outcomes: list[WindowOutcome], label: str) -> None:
        self.outcomes = outcomes
        self.label = label
        self._table_at = 0.0
        self._progress = create_progress_artifact(
            progress=self._percent(), key="backfill-progress",
            description=f"Windows done of {len(outcomes)} for {label}",
        )
        self._shown = self._percent()
        self.publish_table()

    def _percent(self) -> float:
        done = sum(o.done for o in self.outcomes)
        return 100.0 if not self.outcomes else round(100.0 * done / len(self.outcomes), 1)

    def publish_table(self) -> None:
        """Write the window table artifact (a new version of ``backfill-windows``)."""
        self._table_at = time.monotonic()
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        create_table_artifact(
            table=[o.row() for o in self.outcomes],
            key="backfill-windows",
            description=f"Backfill {self.label}: {len(self.outcomes)} windows; "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
        )

    def _publish_progress(self) -> None:
        percent = self._percent()
        if percent != self._shown:
            update_progress_artifact(artifact_id=self._progress, progress=percent)
            self._shown = percent

    def changed(self) -> None:
        """A window changed state: update the table and the progress if they are due."""
        if time.monotonic() - self._table_at >= TABLE_INTERVAL_S:
            self.publish_table()
            self._publish_progress()

    def finish(self) -> None:
        """Every window is done: the table's last version and the final progress."""
        self.publish_table()
        self._publish_progress()


@flow(
    name="backfill", validate_parameters=True, flow_run_name="backfill {start}..{end}",
    on_crashed=[crash_hook(
        "windows whose scenes are all stored are skipped, the others resume where they stopped."
    )],
)
def backfill(
    store: str,
    start: date,
    end: RequiredEndDate,
    bbox: BBox | None = None,
    aoi: AoiParam = None,
    bands: list[BandName] = DEFAULT_BANDS,
    max_cloud: CloudCover | None = None,
    tiles: list[MgrsTile] | None = None,
    profile: ProfileName = "earth-search",
    stac_url: str | None = None,
    window_unit: WindowUnit = "month",
    window_length: Annotated[int, Field(ge=1, le=366)] = 1,
    mode: BackfillMode = "subflows",
    deployment: str | None = None,
    max_windows_in_flight: Annotated[int, Field(ge=1, le=100)] | None = None,
    poll_seconds: Annotated[float, Field(gt=0, le=600)] = DEFAULT_POLL_SECONDS,
    skip_complete_windows: bool = True,
    options: RunOptions = DEFAULT_OPTIONS,
) -> dict[str, Any] | State[Any]:
    """Ingest ``start..end`` as one ingest run per window, in date order.

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
        mode: "subflows" runs the windows in this run's process (small areas); "deployments"
            starts each as a run of the ingest deployment on workers (long, large windows).
        deployment: The ingest deployment started per window in deployments mode; by default
            ingest/on-demand. Ignored in subflows mode.
        max_windows_in_flight: Window runs started and not yet final at any time; by default
            1 in subflows mode and 2 in deployments mode.
        poll_seconds: Deployments mode: first interval between two polls of the window runs;
            it grows up to 60 s while no window finishes.
        skip_complete_windows: Skip windows whose scenes are all stored (search + check).
        options: Run options passed to every window's ingest.

    Returns:
        Status per window, or a Failed state naming the failed windows.
    """
    logger = get_run_logger()
    try:
        request = IngestRequest.parse(
            store=store, bbox=bbox, aoi=aoi, start=start, end=end, bands=bands,
            max_cloud=max_cloud, tiles=tiles or [], profile=profile, stac_url=stac_url,
        )
        windows = split_windows(start, end, unit=window_unit, length=window_length)
    except InvalidRequestError as err:
        # A user mistake, not a bug: one line in the state and the log, no traceback.
        logger.error("Invalid backfill parameters: %s", err)  # noqa: TRY400 (no traceback)
        return Failed(message=f"Invalid backfill parameters: {err}", data=err)
    spec = request.store_spec()
    spec.manager().check_writable()
    if mode == "subflows":  # the windows read pixels here: load them while the search waits
        import_in_background(*PIXEL_STACK)
    logger.info("Backfill %s..%s as %d windows (%s)", start, end, len(windows), mode)
    outcomes = [WindowOutcome(w, "pending") for w in windows]
    board = WindowBoard(outcomes, f"{start}..{end}")
    handed: dict[DateWindow, dict[str, list[dict[str, Any]]]] = {}
    if skip_complete_windows:
        scan = scan_windows(request, windows, spec, options)
        complete = scan.complete
        if scan.items is not None:  # each window takes its scenes from this one search
            handed = {
                w: {search_key(request.scene_query(w), spec): found}
                for w, found in scan.items.items()
            }
        for outcome in outcomes:
            if outcome.window in complete:
                logger.info("Window %s: every scene is stored; skipped", outcome.window.label)
                outcome.status = "complete"
        if complete:
            board.changed()
    todo = [o for o in outcomes if not o.done]
    in_flight = max_windows_in_flight or DEFAULT_WINDOWS_IN_FLIGHT[mode]
    params = {o.window: window_parameters(request, o.window, options) for o in todo}
    if mode == "deployments":
        _run_deployments(
            deployment or DEFAULT_DEPLOYMENT, todo, params, board,
            max_in_flight=in_flight, poll_seconds=poll_seconds,
        )
    else:
        if deployment:
            logger.info(
                "deployment %s is not used in subflows mode; set mode to deployments to start "
                "the windows as its runs on workers", deployment,
            )
        # One quicklook artifact for the backfill, rendered while the next window runs.
        looks = QuicklookCollector(spec) if options.quicklooks else None
        try:
            _run_subflows(
                todo, params, board, max_in_flight=in_flight, quicklooks=looks, handed=handed
            )
        finally:
            if looks is not None:
                looks.publish(label=f"{start}..{end}")
    board.finish()
    return _final(outcomes, logger, failed_hint="retry the failed window runs alone")


@dataclass(frozen=True)
class WindowScan:
    """What one search over all the windows and one bulk check tell about each window.

    Attributes:
        complete: The windows in which every scene is complete in the store.
        items: Each window's scenes as STAC JSON documents (every window, empty ones too), or
            None when a scene's sensing day cannot be read or is in no window (each window
            then searches alone).
    """

    complete: set[DateWindow]
    items: dict[DateWindow, list[dict[str, Any]]] | None


def scan_windows(
    request: IngestRequest, windows: list[DateWindow], spec: StoreSpec, options: RunOptions
) -> WindowScan:
    """One (cached) search over all the windows and one bulk check, split by window.

    Each scene counts in the window of its UTC sensing day (the day the window's own search
    matches it on). A window without scenes is complete. A scene without a valid identifier is
    not: its window runs, so the failure shows in that run. If a scene's day cannot be read,
    no window is complete and no window is given its scenes; if a scene's day is in no window
    (the API matched it on its time range), no window is given its scenes.
    """
    span = DateWindow(windows[0].start, windows[-1].end)
    items = find_scenes(request.scene_query(span), spec, options)
    plans = check_scenes(quote(items), spec)
    complete = set(windows)
    by_window: dict[DateWindow, list[dict[str, Any]]] = {w: [] for w in windows}
    by_window_ok = True
    for item, plan in zip(items, plans, strict=True):
        day = _sensing_day(item)
        if day is None:
            return WindowScan(set(), None)
        matched = [w for w in windows if w.start <= day <= w.end]
        if not matched:  # the API matched it on something else: let each window search
            by_window_ok = False
        for window in matched:
            by_window[window].append(item)
            if not plan.is_complete:
                complete.discard(window)
    return WindowScan(complete, by_window if by_window_ok else None)


def complete_windows(
    request: IngestRequest, windows: list[DateWindow], spec: StoreSpec, options: RunOptions
) -> set[DateWindow]:
    """The windows in which every scene is complete in the store: nothing to run for them.

    See :func:`scan_windows`, whose ``complete`` this is.
    """
    return scan_windows(request, windows, spec, options).complete


def window_is_complete(
    request: IngestRequest, window: DateWindow, spec: StoreSpec, options: RunOptions
) -> bool:
    """Whether every scene the (cached) search finds in ``window`` is complete in the store."""
    return bool(complete_windows(request, [window], spec, options))


def _sensing_day(item: dict[str, Any]) -> date | None:
    """The UTC day of an item's ``datetime`` (its ``start_datetime`` without one), or None."""
    props = item.get("properties") or {}
    return sensing_day(props.get("datetime") or props.get("start_datetime"))


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


@dataclass
class _WindowSignals:
    """What a window's subflow tells the backfill, through its state hooks.

    Attributes:
        started: Set once the run is Running (or over): the next window may start.
        final: Set once the run's state is final, before Prefect's end-of-run bookkeeping
            (the heartbeat thread's join, up to a second): the window's slot is free.
        wake: Notified on either, so the backfill's loop wakes up.
    """

    started: threading.Event
    final: threading.Event
    wake: threading.Condition


#: Set in a window's thread (its copy of the context only): the signals of its subflow.
_WINDOW_SIGNALS: contextvars.ContextVar[_WindowSignals | None] = contextvars.ContextVar(
    "window_signals", default=None
)
#: Window threads beyond those in flight, for windows whose state is final and whose run is
#: still doing Prefect's end-of-run bookkeeping (subflows mode).
BOOKKEEPING_THREADS = 4
#: Longest wait for one window's run to start before the next window is started anyway.
START_WAIT_SECONDS = 30.0


def _signal(event_name: str) -> None:
    signals = _WINDOW_SIGNALS.get()
    if signals is not None:
        getattr(signals, event_name).set()
        with signals.wake:
            signals.wake.notify_all()


def _window_running(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_running`` hook of a window's subflow: let the backfill start the next window."""
    _signal("started")


def _window_final(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_completion``/``on_failure`` hook of a window's subflow: its slot is free."""
    _signal("final")


#: The ingest flow as subflows mode runs it: the same flow, plus the signals. Made once
#: (``with_options`` rebuilds the parameter schema, ~0.1 s a call); the run names are the
#: ingest flow's own (see :func:`window_run_name`).
_window_ingest = ingest.with_options(
    on_running=[_window_running], on_completion=[_window_final], on_failure=[_window_final]
)


def _run_subflows(
    todo: list[WindowOutcome],
    params: dict[DateWindow, dict[str, Any]],
    board: WindowBoard,
    *,
    max_in_flight: int,
    quicklooks: QuicklookCollector | None = None,
    handed: Mapping[DateWindow, Mapping[str, list[dict[str, Any]]]] | None = None,
) -> None:
    """Run each window as an ``ingest`` subflow of this run, ``max_in_flight`` at a time.

    Windows start in date order: the next is submitted once the previous one's run is
    Running (or over). At most ``max_in_flight`` window runs are not final at any time; a
    window's slot is free as soon as its run's state is final, so the next window does not
    wait for the second or so of bookkeeping Prefect does after the state is set (joining
    the run's heartbeat thread). Each runs in a thread with a copy of this run's context, so
    Prefect records it as a subflow of this run; a window's failure ends up in its state and
    never stops the others. With ``quicklooks``, the windows hand their stored scenes to it
    instead of each making a quicklook artifact. A window in ``handed`` takes its scenes from
    there (the backfill's own search, by :func:`flows.ingest.search_key`) instead of
    searching again.
    """
    logger = get_run_logger()
    wake = threading.Condition()

    def run_window(outcome: WindowOutcome, signals: _WindowSignals) -> WindowOutcome:
        _WINDOW_SIGNALS.set(signals)  # in this thread's copy of the context only
        PARENT_SHOWS_PROGRESS.set(True)  # the window table and progress cover this run
        if quicklooks is not None:
            QUICKLOOK_SINK.set(quicklooks.add)
        if handed and outcome.window in handed:
            HANDED_ITEMS.set(handed[outcome.window])
        outcome.status = "running"
        try:
            state = _window_ingest(**params[outcome.window], return_state=True)
            outcome.status, outcome.message = state.name, state.message
            outcome.flow_run_id = state.state_details.flow_run_id
            if state.is_completed():
                result = state.result(raise_on_failure=False)
                outcome.result = result if isinstance(result, dict) else None
        finally:
            signals.started.set()
            signals.final.set()
            with wake:
                wake.notify_all()
        return outcome

    queue = list(todo)
    running: dict[Future[WindowOutcome], _WindowSignals] = {}

    def free_slot() -> bool:
        # Threads: one per unfinished window, plus those finishing their bookkeeping. A
        # window of a few small scenes can be over before the previous one's bookkeeping is
        # (its heartbeat thread's join takes up to a second): a single spare thread made
        # every such window wait for it.
        unfinal = sum(not s.final.is_set() for s in running.values())
        return unfinal < max_in_flight and len(running) < max_in_flight + BOOKKEEPING_THREADS

    def collect() -> None:
        for future in [f for f in running if f.done()]:
            del running[future]
            outcome = future.result()
            logger.info("Window %s: %s", outcome.window.label, outcome.status)
            board.changed()

    with ThreadPoolExecutor(
        max_workers=max_in_flight + BOOKKEEPING_THREADS, thread_name_prefix="window"
    ) as pool:
        while queue or running:
            while queue and free_slot():
                outcome = queue.pop(0)
                signals = _WindowSignals(threading.Event(), threading.Event(), wake)
                future = pool.submit(
                    contextvars.copy_context().run, run_window, outcome, signals
                )
                running[future] = signals
                signals.started.wait(START_WAIT_SECONDS)
            with wake:
                wake.wait_for(
                    lambda: any(f.done() for f in running) or bool(queue and free_slot()),
                    timeout=1.0,
                )
            collect()


def _run_deployments(
    deployment: str,
    todo: list[WindowOutcome],
    params: dict[DateWindow, dict[str, Any]],
    board: WindowBoard,
    *,
    max_in_flight: int,
    poll_seconds: float,
) -> None:
    """Start one deployment run per window, at most ``max_in_flight`` unfinished, in date order.

    Each poll reads every unfinished window run in one ``read_flow_runs`` call. The interval
    starts at ``poll_seconds`` and grows by :data:`POLL_BACKOFF` (up to
    :data:`MAX_POLL_SECONDS`) after each poll in which no window finished, so a long window
    costs a few polls rather than one every few seconds.
    """
    logger = get_run_logger()
    queue = list(todo)
    running: dict[UUID, WindowOutcome] = {}
    interval = poll_seconds
    polls = 0
    # Scheduled times one millisecond apart: workers take runs in scheduled-time order, so
    # windows started in one poll still start in date order.
    base = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        while queue or running:
            started = False
            while queue and len(running) < max_in_flight:
                outcome = queue.pop(0)
                window = outcome.window
                run: FlowRun = run_deployment(
                    name=deployment,
                    parameters=params[window],
                    timeout=0,
                    flow_run_name=window_run_name(window),
                    scheduled_time=base + timedelta(milliseconds=len(todo) - len(queue)),
                    tags=["backfill"],
                )
                logger.info("Window %s: started flow run %s", window.label, run.name)
                outcome.status, outcome.flow_run_id = "running", run.id
                running[run.id] = outcome
                started = True
            if started:
                board.changed()
            time.sleep(interval)
            polls += 1
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(running)))
            )
            finished = 0
            for run in runs:
                state = run.state
                if state is None or not state.is_final() or run.id not in running:
                    continue
                outcome = running.pop(run.id)
                outcome.status, outcome.message = state.name, state.message
                logger.info("Window %s: %s", outcome.window.label, state.name)
                finished += 1
            if finished:
                board.changed()
                interval = poll_seconds
            else:
                interval = min(interval * POLL_BACKOFF, max(MAX_POLL_SECONDS, poll_seconds))
    logger.info("%d window runs final after %d polls (one API call each)", len(todo), polls)


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


__all__ = [
    "DEFAULT_DEPLOYMENT",
    "BackfillMode",
    "WindowBoard",
    "WindowOutcome",
    "WindowScan",
    "backfill",
    "complete_windows",
    "scan_windows",
    "window_is_complete",
    "window_parameters",
    "window_run_name",
]
