"""Conformance tests every store backend runs (the way ``zarr.testing`` serves zarr stores).

:class:`~scenestore.testing.store.SceneStoreTests` is a pytest base class: a backend's test
module subclasses it and supplies a ``scenes`` fixture returning a fresh, empty
:class:`~scenestore.store.SceneStore`. :func:`~scenestore.testing.stateful.scene_store_machine`
builds a hypothesis state machine of the commit protocol for the same kind of store.

This package imports pytest and hypothesis (test dependencies); nothing else in scenestore
imports it.
"""

from __future__ import annotations

from scenestore.testing.store import SceneStoreTests, SourceFailure, scene_dataset, scene_pixels

__all__ = ["SceneStoreTests", "SourceFailure", "scene_dataset", "scene_pixels"]
