"""Flow run names: what a run covers, instead of Prefect's random adjective-animal names.

Used as ``flow_run_name=`` of the flows. Prefect calls them when the run starts, with the run's
parameters in :mod:`prefect.runtime`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect.runtime import flow_run


def ingest_run_name() -> str:
    """``ingest <start>..<end>``; a run without ``start`` says its look-back instead.

    The same name as the backfill gives its window runs (``flows.backfill.window_run_name``),
    so a window keeps its name when Prefect renames the run at start. A daily run (no
    ``start``, no ``end``) is named after the day it was scheduled for, e.g.
    ``ingest 3 days to 2026-12-02``; an offline run is ``ingest offline ...``.
    """
    params: dict[str, Any] = flow_run.parameters or {}
    start, end = params.get("start"), params.get("end")
    # An offline run (store only, no download) says so: it is a check, not an ingest.
    what = "ingest offline" if params.get("offline") else "ingest"
    if start is not None:
        return f"{what} {start}..{end if end is not None else 'scheduled day'}"
    day = end if end is not None else _scheduled_day()
    return f"{what} {params.get('lookback_days') or 0} days to {day}"


def ingest_scene_run_name() -> str:
    """``ingest-scene <item>``."""
    params: dict[str, Any] = flow_run.parameters or {}
    return f"ingest-scene {params.get('item', '?')}"


def _scheduled_day() -> str:
    scheduled = flow_run.scheduled_start_time
    when = scheduled if isinstance(scheduled, datetime) else datetime.now(UTC)
    return str(when.astimezone(UTC).date())


__all__ = ["ingest_run_name", "ingest_scene_run_name"]
