"""The store conformance suite (:mod:`scenestore.testing`) on every backend.

Local directory, S3 (the moto server, a fresh prefix per test) and memory (a uniquely named
store, forgotten after the test) must keep the same commit-protocol promises.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import settings

from scenestore.store import open_store
from scenestore.store._object import forget
from scenestore.testing import SceneStoreTests
from scenestore.testing.stateful import scene_store_machine


def _directory(parent):
    """A fresh, empty store directory (``ls`` of a missing directory is an error)."""
    path = parent / uuid.uuid4().hex
    path.mkdir()
    return path


class TestLocalStore(SceneStoreTests):
    @pytest.fixture
    def scenes(self, tmp_path):
        return open_store(_directory(tmp_path))


class TestMemoryStore(SceneStoreTests):
    @pytest.fixture
    def scenes(self):
        name = f"conformance-{uuid.uuid4().hex}"
        yield open_store(f"memory://{name}")
        forget(name)


class TestS3Store(SceneStoreTests):
    @pytest.fixture
    def scenes(self, s3_store):
        return open_store(s3_store)


def _fresh_memory():
    return open_store(f"memory://machine-{uuid.uuid4().hex}")


def _forget(scenes):
    forget(scenes.client.location.removeprefix("memory://"))


#: The commit protocol as a state machine on memory (a local and an S3 run follow).
TestMemoryMachine = scene_store_machine(_fresh_memory, dispose=_forget)


def test_state_machine_on_a_local_store(tmp_path):
    machine = scene_store_machine(
        lambda: open_store(_directory(tmp_path)),
        settings=settings(max_examples=12, stateful_step_count=8, deadline=None),
    )
    machine("runTest").runTest()


def test_state_machine_on_s3(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    base = f"s3://{s3_server.bucket}/machine-{uuid.uuid4().hex[:8]}"
    machine = scene_store_machine(
        lambda: open_store(f"{base}/{uuid.uuid4().hex[:8]}"),
        settings=settings(max_examples=4, stateful_step_count=6, deadline=None),
    )
    machine("runTest").runTest()
