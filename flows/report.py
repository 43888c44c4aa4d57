"""What an ingest run reports: its summary, per-scene rows, failure message and progress.

The ``ingest`` flow (:mod:`flows.ingest`) fills an :class:`IngestSummary` as scenes finish,
shows it as a table artifact, keeps a progress artifact current (:class:`Progress`) and, when
scenes failed, ends Failed with :func:`failure_message`.
"""

from __future__ import annotations

import time
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


class Progress:
    """The run's progress artifact, updated at most every :data:`PROGRESS_INTERVAL_S`."""

    def __init__(self, *, total: int, done: int, label: str) -> None:
        self.total, self.done = total, done
        self._last = time.monotonic()
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
        update_progress_artifact(artifact_id=self._id, progress=self._percent())


__all__ = [
    "MAX_NAMED_FAILURES",
    "PROGRESS_INTERVAL_S",
    "IngestSummary",
    "Progress",
    "ScenesFailedError",
    "failure_message",
    "record_failure",
    "report_row",
]
