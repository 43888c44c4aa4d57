"""Prefect orchestration of scenestore: tasks and flows that wire the library together.

Flows: ``ingest`` (search, then store the missing bands of every scene), ``ingest-scene``
(one scene as four visible steps) and ``backfill`` (a long range as one ingest run per
window). Deployments live in ``deployments/prefect.yaml``. The library never imports this.
"""
