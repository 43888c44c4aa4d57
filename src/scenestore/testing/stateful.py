"""The commit protocol as a hypothesis state machine, checked against a dict model.

The model is what a reader must see: band -> pixel seed of its last committed write. Rules
commit, replace, fail mid-band and remove the scene; after every step the invariants hold:
no band is present without its whole, correct data, the inventory never shows a band whose
data is gone, the store index claims exactly the committed bands, and ``missing_bands`` is
the model's complement. :func:`scene_store_machine` builds the test for one kind of store, as
``zarr.testing.stateful`` does for zarr stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scenestore.store import SceneStore
from scenestore.store.index import StoreIndex
from scenestore.store.removal import remove_scene
from scenestore.store.verify import verify_scene
from scenestore.testing.store import (
    BANDS,
    IDENTIFIER,
    SourceFailure,
    listed,
    missing_bands,
    save,
    scene_dataset,
    scene_pixels,
)

#: Grid and chunk edge of the machine's scenes: 4 chunks a band, a few ms a write.
SIZE, CHUNK = 20, 10
_BLOCKS = (SIZE // CHUNK) ** 2

#: The default run: small, since every step writes and every invariant reads the scene.
DEFAULT_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_bands = st.sampled_from(BANDS)
_seeds = st.integers(min_value=0, max_value=50)


class SceneStoreMachine(RuleBasedStateMachine):
    """One scene in a fresh store, written, replaced, broken and removed at random.

    Subclasses set :attr:`make_scenes` (and optionally :attr:`dispose`).
    """

    make_scenes: Callable[[], SceneStore]
    dispose: Callable[[SceneStore], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.scenes = type(self).make_scenes()
        self.model: dict[str, int] = {}

    def teardown(self) -> None:
        dispose = type(self).dispose
        if dispose is not None:
            dispose(self.scenes)

    def _save(self, band: str, seed: int, fail: dict[str, int] | None = None) -> None:
        save(self.scenes, scene_dataset({band: seed}, size=SIZE, chunk=CHUNK, fail=fail))

    @rule(band=_bands, seed=_seeds)
    def commit(self, band: str, seed: int) -> None:
        self._save(band, seed)
        self.model[band] = seed

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), seed=_seeds)
    def replace(self, data: Any, seed: int) -> None:
        band = data.draw(st.sampled_from(sorted(self.model)), label="band")
        self._save(band, seed)
        self.model[band] = seed

    @rule(band=_bands, seed=_seeds, delivered=st.integers(min_value=0, max_value=_BLOCKS - 1))
    def kill_mid_band(self, band: str, seed: int, delivered: int) -> None:
        try:
            self._save(band, seed, fail={band: delivered})
        except SourceFailure:
            pass
        else:
            raise AssertionError(f"a save whose source broke after {delivered} blocks succeeded")

    @precondition(lambda self: bool(self.model))
    @rule()
    def remove(self) -> None:
        remove_scene(self.scenes, IDENTIFIER)
        self.model.clear()

    @invariant()
    def present_bands_are_whole_and_correct(self) -> None:
        assert self.scenes.committed_bands(IDENTIFIER) == set(self.model)
        if not self.model:
            return
        ds = self.scenes.open(IDENTIFIER, sorted(self.model), eager=True)
        for band, seed in self.model.items():
            np.testing.assert_array_equal(ds[band].values, scene_pixels(band, seed, SIZE))

    @invariant()
    def the_inventory_lists_only_bands_with_data(self) -> None:
        shown = listed(self.scenes)
        if self.model:
            assert shown == {IDENTIFIER: tuple(sorted(self.model))}
        else:
            assert shown == {}, "a scene without a committed band is not listed"
        assert verify_scene(self.scenes, IDENTIFIER) == []

    @invariant()
    def the_index_claims_exactly_the_committed_bands(self) -> None:
        # Read raw (not checked against the store): what the writers themselves journaled.
        entry = StoreIndex.read(self.scenes.client, check=False).get(IDENTIFIER)
        assert set(entry.bands if entry else ()) == set(self.model)

    @invariant()
    def missing_bands_is_the_complement(self) -> None:
        expected = [b for b in BANDS if b not in self.model]
        assert missing_bands(self.scenes, IDENTIFIER) == expected


def scene_store_machine(
    make_scenes: Callable[[], SceneStore],
    *,
    dispose: Callable[[SceneStore], None] | None = None,
    settings: settings | None = None,
) -> Any:
    """The state machine's ``unittest.TestCase`` for one kind of store.

    Args:
        make_scenes: Returns a fresh, empty store; called once per example.
        dispose: Called with each example's store when the example ends (e.g. to forget a
            memory store).
        settings: Hypothesis settings (default :data:`DEFAULT_SETTINGS`).

    Returns:
        A TestCase class pytest collects when bound to a ``Test*`` name, or runs as
        ``case("runTest").runTest()`` inside a test that needs fixtures.
    """
    machine: type[SceneStoreMachine] = type(
        "SceneStoreMachineFor",
        (SceneStoreMachine,),
        {
            "make_scenes": staticmethod(make_scenes),
            "dispose": staticmethod(dispose) if dispose else None,
        },
    )
    case = machine.TestCase
    case.settings = settings if settings is not None else DEFAULT_SETTINGS
    return case


__all__ = ["DEFAULT_SETTINGS", "SceneStoreMachine", "scene_store_machine"]
