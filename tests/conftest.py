"""Shared fixtures: the offline world is built once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Retries (tenacity's, and GDAL's inside a read) wait 50 ms rather than 1 s: the tests check
# what is retried and that it ends, not how long the waits are. Subprocesses inherit it.
os.environ.setdefault("SCENESTORE_RETRY_BACKOFF", "0.05")

import pytest


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The offline Sentinel-2 world (real STAC API + Range HTTP server), once per session."""
    from scenestore_world import OfflineWorld

    with OfflineWorld(tmp_path_factory.mktemp("world"), scenes=4, size="tiny", seed=0) as w:
        yield w


@pytest.fixture
def http(world):
    """The world's COG server with its request counters reset for this test."""
    world.http.reset_stats()
    return world.http


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto_server) on 127.0.0.1, once per session."""
    from s3server import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_store(s3_server, monkeypatch, request):
    """A fresh ``s3://`` store URL on the test server, with its endpoint and keys in the env."""
    import uuid

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    import re

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
    return f"s3://{s3_server.bucket}/{name}-{uuid.uuid4().hex[:8]}"
