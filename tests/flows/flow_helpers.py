"""Helpers for the flow tests: count requests at the world's server, read runs back."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

#: A box around every scene of the offline world (they sit on tiles on two continents).
WORLD_BBOX = {"west": -180.0, "south": -80.0, "east": 180.0, "north": 80.0}
WORLD_START = date(2024, 6, 1)
WORLD_END = date(2024, 6, 30)
BANDS = ["B04", "SCL"]


def requests_by_scene(http: Any) -> dict[str, int]:
    """Requests the world's file server answered, per scene directory."""
    counts: dict[str, int] = {}
    for record in http.requests():
        scene = record.path.split("/", 1)[0]
        counts[scene] = counts.get(scene, 0) + 1
    return counts


def task_runs(flow_run_id: UUID) -> list[Any]:
    """Every task run of a flow run, read back from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def artifacts(flow_run_id: UUID) -> list[Any]:
    """Every artifact of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def flow_logs(flow_run_id: UUID) -> list[Any]:
    """Every log record of a flow run and its task runs, as stored by the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)  # logs are sent in batches
    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
