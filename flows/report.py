"""What an ingest run reports: its summary, per-scene rows, failure message and progress.

The ``ingest`` flow (:mod:`flows.ingest`) fills an :class:`IngestSummary` as scenes finish,
shows it as a table artifact, keeps a progress artifact current (:class:`Progress`) and, when
scenes failed, ends Failed with :func:`failure_message`.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from scenestore.redact import redact

#: Seconds between two updates of the progress artifact (each is one API call).
PROGRESS_INTERVAL_S = 1.0
#: Failed scenes named in a Failed state's message before "and N more".
MAX_NAMED_FAILURES = 20


class ScenesFailedError(RuntimeError):
    """Some scenes of an ingest run failed; the others were stored.

    Attributes:
        failures: Error message per failed scene identifier (redacted).
        summary: The run's summary (see :class:`IngestSummary`).
    """

    def __init__(self, message: str, failures: dict[str, str], summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.failures = failures
        self.summary = summary


@dataclass
class IngestSummary:
    """What one ingest run did, returned by the flow and shown as its table artifact.

    Attributes:
        label: The date range (or other label) of the run.
        scenes: Scenes the search found.
        complete: Scenes that were already complete (no task was created for them).
        stored: Scenes whose missing bands were downloaded and committed.
        failed: Error message per failed scene.
        bytes_written: Bytes committed by this run.
        seconds: Wall time of the per-scene part.
        rows: One report row per scene.
    """

    label: str
    scenes: int = 0
    complete: int = 0
    stored: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def as_result(self) -> dict[str, Any]:
        """The summary without the per-scene rows (those go to the table artifact)."""
        data = asdict(self)
        data.pop("rows")
        return data


def record_failure(
    summary: IngestSummary,
    identifier: str,
    message: str,
    logger: Any,
    *,
    missing: tuple[str, ...] = (),
) -> None:
    """Record a failed scene in the summary and its rows, and log it."""
    summary.failed[identifier] = message
    summary.rows.append(
        report_row(identifier, (), 0, 0.0, "failed", error=message, missing=missing)
    )
    logger.warning("Scene %s failed: %s", identifier, message)


def record_not_found(summary: IngestSummary, item_id: str, message: str, logger: Any) -> None:
    """Record an asked-for item id the STAC API does not have, as a failed row."""
    summary.failed[item_id] = message
    summary.rows.append(report_row(item_id, (), 0, 0.0, "not found", error=message))
    logger.warning("Item %s not found: %s", item_id, message)


def with_queries(rows: list[dict[str, Any]], queries: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rows with a ``query`` column after ``scene``: which queries found each scene.

    Args:
        rows: Report rows (see :func:`report_row`).
        queries: Query labels per scene (the row's ``scene`` value), e.g. ``"site-a, ids"``.
    """
    out = []
    for row in rows:
        scene = row["scene"]
        out.append({"scene": scene, "query": queries.get(scene, ""), **row})
    return out


def report_row(
    identifier: str,
    fetched: tuple[str, ...],
    size: int,
    seconds: float,
    status: str,
    *,
    error: str | None = None,
    missing: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One row of the ingest-report table artifact (errors redacted)."""
    return {
        "scene": identifier,
        "bands fetched": ",".join(fetched) or (f"(wanted {','.join(missing)})" if missing else ""),
        "bytes": size,
        "seconds": round(seconds, 2),
        "status": status,
        "error": redact(error) if error else "",
    }


def failure_message(summary: IngestSummary) -> str:
    """The Failed state's message: the failed scenes, at most MAX_NAMED_FAILURES by name."""
    names = [f"{ident} ({_shorten(msg, 400)})" for ident, msg in summary.failed.items()]
    shown = "; ".join(names[:MAX_NAMED_FAILURES])
    more = len(names) - MAX_NAMED_FAILURES
    return (
        f"{len(summary.failed)} of {summary.scenes} scenes failed in {summary.label}: {shown}"
        + (f"; and {more} more (see the ingest-report artifact)" if more > 0 else "")
    )


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Set (in its thread's context) when a parent run shows this run's progress itself: a
#: backfill's window table and progress artifacts cover its window runs, whose own progress
#: artifacts would cost two API calls a window and say nothing more.
PARENT_SHOWS_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "parent_shows_progress", default=False
)


class Progress:
    """The run's progress artifact, updated at most every :data:`PROGRESS_INTERVAL_S`.

    None is made when :data:`PARENT_SHOWS_PROGRESS` is set.
    """

    def __init__(self, *, total: int, done: int, label: str) -> None:
        self.total, self.done = total, done
        self._last = time.monotonic()
        self._id = None
        if not PARENT_SHOWS_PROGRESS.get():
            self._id = create_progress_artifact(
                progress=self._percent(),
                key="ingest-progress",
                description=f"Scenes done of {total} for {label}",
            )

    def _percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)

    def advance(self) -> None:
        self.done += 1
        if time.monotonic() - self._last >= PROGRESS_INTERVAL_S:
            self._update()

    def finish(self) -> None:
        self.done = self.total
        self._update()

    def _update(self) -> None:
        self._last = time.monotonic()
        if self._id is not None:
            update_progress_artifact(artifact_id=self._id, progress=self._percent())


#: Key of the markdown artifact a crashed run gets (see :func:`crash_hook`).
CRASH_ARTIFACT_KEY = "crash-report"


def crash_message(reason: str | None, retry_does: str) -> str:
    """One line for a crashed run: what happened, and what Retry does."""
    return (
        f"Crashed: the run's process stopped before the run finished ({reason or 'no reason'}); "
        "usually its worker was stopped or killed, the machine restarted or memory ran out. "
        f"Retry the run (Retry on its page, or let the next run cover it): {retry_does}"
    )


def crash_hook(retry_does: str) -> Any:
    """An ``on_crashed`` hook that says what happened and what Retry does.

    The hook replaces the state message Prefect gives a crash ("Execution was aborted by ...")
    with :func:`crash_message`, logs it, and writes it as the ``crash-report`` markdown
    artifact. It runs in the run's own process when that process is stopped by a signal (a
    worker stopped with Ctrl-C or SIGTERM); a process killed outright (SIGKILL, out of memory)
    runs no hook, and keeps Prefect's own message.

    Args:
        retry_does: What a retry of this flow does, e.g. "stored scenes are skipped and only
            missing bands are downloaded."
    """

    def report_crash(flow: Any, flow_run: Any, state: Any) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate
        from prefect.logging.loggers import flow_run_logger
        from prefect.states import Crashed

        message = crash_message(state.message, retry_does)
        flow_run_logger(flow_run, flow).error(message)
        markdown = (
            f"## Run crashed\n\n{redact(message)}\n\n"
            "Nothing needs cleaning up first: a band is committed whole or not at all, so a "
            "retry finds exactly what is missing."
        )
        with get_client(sync_client=True) as client:
            client.create_artifact(ArtifactCreate(
                flow_run_id=flow_run.id, key=CRASH_ARTIFACT_KEY, type="markdown",
                data=markdown, description="Why the run crashed and what Retry does",
            ))
            # Same state type, clearer message: the UI shows it beside the Crashed badge.
            client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)

    return report_crash


__all__ = [
    "CRASH_ARTIFACT_KEY",
    "MAX_NAMED_FAILURES",
    "PARENT_SHOWS_PROGRESS",
    "PROGRESS_INTERVAL_S",
    "IngestSummary",
    "Progress",
    "ScenesFailedError",
    "crash_hook",
    "crash_message",
    "failure_message",
    "record_failure",
    "record_not_found",
    "report_row",
    "with_queries",
]
