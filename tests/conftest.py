"""Shared fixtures: the offline world is built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The offline Sentinel-2 world (real STAC API + Range HTTP server), once per session."""
    from scenestore.world import OfflineWorld

    with OfflineWorld(tmp_path_factory.mktemp("world"), scenes=4, size="tiny", seed=0) as w:
        yield w


@pytest.fixture
def http(world):
    """The world's COG server with its request counters reset for this test."""
    world.http.reset_stats()
    return world.http
