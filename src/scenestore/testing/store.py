"""The promises of the commit protocol, as tests any store backend must pass.

A backend's test module subclasses :class:`SceneStoreTests` and supplies a ``scenes`` fixture
that returns a fresh, empty :class:`~scenestore.store.SceneStore`; every test then runs on that
backend. Damage is done through ``scenes.client`` (get, put, delete), so the same tests hold on
a directory, an object store and memory; a backend whose objects cannot be reached that way
overrides :meth:`SceneStoreTests.flip_byte`, :meth:`SceneStoreTests.delete_object` and
:meth:`SceneStoreTests.put_garbage`.

Scenes are tiny and synthetic (40 x 40 px on a UTM 33N grid, 20 px chunks) so the whole
suite runs in seconds per backend.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from zarr.codecs import ZstdCodec

from scenestore.errors import (
    DamagedSceneError,
    IncompleteSceneError,
    SceneBusyError,
    SceneNotFoundError,
)
from scenestore.store import SceneStore
from scenestore.store.arrays import SceneWrites, align_chunks, fit_encodings, write_band_array
from scenestore.store.inventory import list_scenes, scene_info
from scenestore.store.layout import band_key, commit_key, scene_key, staging_key
from scenestore.store.removal import remove_scene
from scenestore.store.verify import BAND, GROUP, RECORD, STAGING, repair, verify_store

#: The scene every test writes, its bands, grid edge and chunk edge in pixels.
IDENTIFIER = "conformance_S2A_33UVP_20240601_0_L2A"
BANDS = ("B02", "B03", "B04")
SIZE = 40
CHUNK = 20
#: West and north edge of the grid (UTM zone 33N, metres) and its pixel size.
WEST, NORTH, PIXEL = 499980.0, 5400000.0, 10.0
EPSG = 32633


class SourceFailure(RuntimeError):
    """What the synthetic source raises for the blocks it is told to fail."""


def scene_pixels(band: str, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """The pixels :func:`scene_dataset` gives a band for ``seed`` (uint16, never 0 = fill)."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = sum(ord(c) for c in band) + 101 * seed
    return ((yy * 7 + xx * 3 + base) % 4000 + 1).astype("uint16")


def _utm_wkt() -> str:
    from pyproj import CRS

    return CRS.from_epsg(EPSG).to_wkt()


def scene_dataset(
    bands: dict[str, int] | list[str] | tuple[str, ...],
    *,
    size: int = SIZE,
    chunk: int = CHUNK,
    fail: dict[str, int] | None = None,
) -> xr.Dataset:
    """A dask-backed scene on a real UTM grid, as a source hands it to ``save``.

    Args:
        bands: The bands, each with its pixel seed (a list means seed 0 for each).
        size: Grid edge in pixels.
        chunk: Dask block (and zarr chunk) edge.
        fail: Bands whose source breaks, each with how many blocks (in row-major order) it
            delivers before every later block raises :class:`SourceFailure`.
    """
    seeds = dict(bands) if isinstance(bands, dict) else dict.fromkeys(bands, 0)
    fail = fail or {}
    per_row = -(-size // chunk)

    def block(band: str, seed: int, block_info: Any = None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        index = (y0 // chunk) * per_row + x0 // chunk
        if band in fail and index >= fail[band]:
            raise SourceFailure(f"source of {band} broke at block {index}")
        return scene_pixels(band, seed, size)[y0:y1, x0:x1]

    blocks = tuple(min(chunk, size - i) for i in range(0, size, chunk))
    data = {
        band: (
            ("y", "x"),
            da.map_blocks(
                block,
                band,
                seed,
                chunks=(blocks, blocks),
                dtype="uint16",
                meta=np.array((), "uint16"),
            ),
            {"source": f"synthetic://{band}?seed={seed}", "nodata": 0},
        )
        for band, seed in seeds.items()
    }
    wkt = _utm_wkt()
    coords = {
        "x": WEST + PIXEL / 2 + PIXEL * np.arange(size, dtype="float64"),
        "y": NORTH - PIXEL / 2 - PIXEL * np.arange(size, dtype="float64"),
        "spatial_ref": xr.DataArray(0, attrs={"crs_wkt": wkt, "spatial_ref": wkt}),
    }
    attrs = {"datetime": "2024-06-01T10:00:00Z", "eo:cloud_cover": 5.0, "stac_id": IDENTIFIER}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def encodings_for(ds: xr.Dataset, chunk: int = CHUNK) -> dict[str, dict[str, Any]]:
    """uint16 bands in ``chunk`` px chunks, zstd-compressed (crc32c is added on write)."""
    bands = [str(b) for b in ds.data_vars]
    plain = {
        b: {
            "dtype": "uint16",
            "fill_value": 0,
            "chunks": (chunk, chunk),
            "compressors": [ZstdCodec(level=1)],
        }
        for b in bands
    }
    return fit_encodings(plain, ds)


def save(scenes: SceneStore, ds: xr.Dataset, identifier: str = IDENTIFIER) -> int:
    """Save ``ds`` under the scene's lock, as :class:`~scenestore.StoreManager` does."""
    encodings = encodings_for(ds)
    with scenes.lock(identifier, timeout_s=60):
        return scenes.save(align_chunks(ds, encodings), identifier, encodings)


def write_uncommitted(scenes: SceneStore, ds: xr.Dataset, identifier: str = IDENTIFIER) -> None:
    """Write bands' arrays at their final names and commit nothing: a writer killed before
    its commit records."""
    encodings = encodings_for(ds)
    store = SceneWrites(scenes.client.zarr_store())
    for band in ds.data_vars:
        write_band_array(store, band_key(identifier, str(band)), ds[band], encodings[str(band)])


def missing_bands(scenes: SceneStore, identifier: str, bands: tuple[str, ...] = BANDS) -> list[str]:
    """What :meth:`StoreManager.missing_bands` answers for a manager of ``bands``."""
    from scenestore import StoreManager

    class _Manager(StoreManager[str]):
        def identifier(self, item: Any) -> str:
            return str(item)

        def encodings(self, bands: list[str]) -> dict[str, dict]:
            return {}

        def download_scene_from_source(self, item: Any, bands: list[str]) -> xr.Dataset:
            raise NotImplementedError("conformance tests save directly")

    manager = _Manager(list(bands), None)
    manager.scenes = scenes
    return manager.missing_bands(identifier)


def listed(scenes: SceneStore) -> dict[str, tuple[str, ...]]:
    """Each listed scene's committed bands."""
    return {info.identifier: info.bands for info in list_scenes(scenes)}


def assert_pixels(scenes: SceneStore, seeds: dict[str, int], identifier: str = IDENTIFIER) -> None:
    """The committed bands open (every chunk checked) to exactly the pixels of their seeds."""
    ds = scenes.open(identifier, sorted(seeds), eager=True)
    for band, seed in seeds.items():
        np.testing.assert_array_equal(ds[band].values, scene_pixels(band, seed), err_msg=band)


class SceneStoreTests:
    """The conformance suite; subclass it and supply a ``scenes`` fixture.

    Example::

        class TestMemory(SceneStoreTests):
            @pytest.fixture
            def scenes(self):
                return open_store(f"memory://{uuid.uuid4().hex}")
    """

    @pytest.fixture
    def scenes(self) -> SceneStore:
        """A fresh, empty store (the backend's test module supplies it)."""
        raise NotImplementedError("subclasses supply a `scenes` fixture (a fresh SceneStore)")

    # -- damage, through the client ------------------------------------------------------------

    def chunk_keys(self, scenes: SceneStore, band: str) -> list[str]:
        """The chunk objects of a band of the test scene."""
        return [k for k, _ in scenes.client.list(f"{band_key(IDENTIFIER, band)}/c")]

    def flip_byte(self, scenes: SceneStore, key: str) -> None:
        """Flip one byte in the middle of an object (a bit rot)."""
        data = bytearray(scenes.client.get(key) or b"")
        assert data, f"nothing to damage at {key!r}"
        data[len(data) // 2] ^= 0xFF
        scenes.client.put(key, bytes(data))

    def delete_object(self, scenes: SceneStore, key: str) -> None:
        """Delete one object."""
        assert scenes.client.exists(key), f"nothing to delete at {key!r}"
        scenes.client.delete([key])

    def put_garbage(self, scenes: SceneStore, key: str) -> None:
        """Overwrite (or create) an object with bytes that are no JSON."""
        scenes.client.put(key, b"\x00 not a record {")

    # -- basics --------------------------------------------------------------------------------

    def test_empty_store_has_no_scene(self, scenes: SceneStore) -> None:
        assert listed(scenes) == {}
        assert not scenes.exists(IDENTIFIER)
        assert scenes.committed(IDENTIFIER) == (set(), {})
        assert missing_bands(scenes, IDENTIFIER) == list(BANDS)
        with pytest.raises(SceneNotFoundError, match=IDENTIFIER):
            scenes.open(IDENTIFIER, ["B02"])
        with pytest.raises(SceneNotFoundError, match=IDENTIFIER):
            scene_info(scenes, IDENTIFIER)

    def test_saved_bands_round_trip_and_inventory(self, scenes: SceneStore) -> None:
        seeds = {"B02": 1, "B03": 2}
        written = save(scenes, scene_dataset(seeds))

        assert scenes.exists(IDENTIFIER)
        assert scenes.committed(IDENTIFIER) == ({"B02", "B03"}, {})
        assert scenes.committed_bands(IDENTIFIER) == {"B02", "B03"}
        assert missing_bands(scenes, IDENTIFIER) == ["B04"]
        # Chunk bytes are what was written; the arrays' metadata comes on top.
        assert 0 < written < scenes.stored_bytes(IDENTIFIER, ["B02", "B03"])
        chunks = sum(len(self.chunk_keys(scenes, b)) for b in seeds)
        assert chunks == 2 * (SIZE // CHUNK) ** 2
        record = scenes.read_commit(IDENTIFIER, "B02")
        assert record is not None and record.shape == (SIZE, SIZE)
        assert record.chunks == (CHUNK, CHUNK) and record.chunk_count == (SIZE // CHUNK) ** 2
        assert scenes.read_commit(IDENTIFIER, "B04") is None
        info = scene_info(scenes, IDENTIFIER)
        assert info.bands == ("B02", "B03") and info.damaged == ()
        assert info.size_bytes >= written and info.datetime == "2024-06-01T10:00:00Z"
        assert info.cloud_cover == 5.0
        assert listed(scenes) == {IDENTIFIER: ("B02", "B03")}
        assert_pixels(scenes, seeds)
        lazy = scenes.open(IDENTIFIER, ["B02"])
        assert lazy["B02"].chunks is not None, "lazy unless eager"
        assert lazy["B02"].dtype == np.uint16
        np.testing.assert_allclose(lazy["x"].values, scene_dataset(seeds)["x"].values)
        assert lazy["B02"].attrs["source"] == "synthetic://B02?seed=1"
        assert scenes.open(IDENTIFIER, ["B02"], verify=True)["B02"].shape == (SIZE, SIZE)
        with pytest.raises(IncompleteSceneError, match="B04"):
            scenes.open(IDENTIFIER, ["B02", "B04"])
        assert verify_store(scenes) == (2, [])
        assert not scenes.writer_active(IDENTIFIER)

    def test_adding_and_replacing_bands(self, scenes: SceneStore) -> None:
        save(scenes, scene_dataset({"B02": 1}))
        save(scenes, scene_dataset({"B02": 5, "B03": 2}))

        assert scenes.committed_bands(IDENTIFIER) == {"B02", "B03"}
        assert_pixels(scenes, {"B02": 5, "B03": 2})
        assert not scenes.client.list(staging_key(IDENTIFIER))
        assert verify_store(scenes) == (2, [])

    # -- commit only after data ----------------------------------------------------------------

    def test_a_band_failing_mid_write_has_no_record_and_the_others_commit(
        self, scenes: SceneStore
    ) -> None:
        ds = scene_dataset({"B02": 1, "B03": 2, "B04": 3}, fail={"B03": 2})

        with pytest.raises(SourceFailure, match="B03"):
            save(scenes, ds)

        assert scenes.committed_bands(IDENTIFIER) == {"B02", "B04"}
        assert scenes.read_commit(IDENTIFIER, "B03") is None
        assert missing_bands(scenes, IDENTIFIER) == ["B03"]
        assert listed(scenes) == {IDENTIFIER: ("B02", "B04")}
        assert_pixels(scenes, {"B02": 1, "B04": 3})
        assert verify_store(scenes) == (2, [])
        save(scenes, scene_dataset({"B03": 2}))  # the rerun fetches what is missing
        assert_pixels(scenes, {"B02": 1, "B03": 2, "B04": 3})

    def test_a_failed_first_save_leaves_no_scene(self, scenes: SceneStore) -> None:
        with pytest.raises(SourceFailure):
            save(scenes, scene_dataset({"B02": 1}, fail={"B02": 1}))

        assert not scenes.exists(IDENTIFIER)
        assert listed(scenes) == {}
        assert missing_bands(scenes, IDENTIFIER) == list(BANDS)
        save(scenes, scene_dataset({"B02": 1}))
        assert_pixels(scenes, {"B02": 1})

    # -- killed writers ------------------------------------------------------------------------

    def test_a_killed_writers_band_is_not_present_and_the_next_save_replaces_it(
        self, scenes: SceneStore
    ) -> None:
        save(scenes, scene_dataset({"B02": 1}))
        write_uncommitted(scenes, scene_dataset({"B03": 9}))  # chunks written, no record
        assert self.chunk_keys(scenes, "B03"), "the leftovers are there"

        assert scenes.committed_bands(IDENTIFIER) == {"B02"}
        assert missing_bands(scenes, IDENTIFIER) == ["B03", "B04"]
        assert listed(scenes) == {IDENTIFIER: ("B02",)}
        with pytest.raises(IncompleteSceneError, match="B03"):
            scenes.open(IDENTIFIER, ["B03"])
        assert verify_store(scenes) == (1, [])

        save(scenes, scene_dataset({"B03": 2}))
        assert_pixels(scenes, {"B02": 1, "B03": 2})
        assert verify_store(scenes) == (2, [])

    def test_a_killed_first_writers_leftovers_commit_nothing_and_are_replaced(
        self, scenes: SceneStore
    ) -> None:
        write_uncommitted(scenes, scene_dataset({"B02": 9, "B03": 9}))

        assert scenes.committed_bands(IDENTIFIER) == set()
        assert missing_bands(scenes, IDENTIFIER) == list(BANDS)
        assert all(not bands for bands in listed(scenes).values())

        save(scenes, scene_dataset({"B02": 1}))
        assert listed(scenes) == {IDENTIFIER: ("B02",)}
        assert_pixels(scenes, {"B02": 1})
        assert not self.chunk_keys(scenes, "B03"), "a new scene starts from nothing"
        assert verify_store(scenes) == (1, [])

    # -- replacing -----------------------------------------------------------------------------

    def test_a_failed_overwrite_keeps_the_old_band(self, scenes: SceneStore) -> None:
        save(scenes, scene_dataset({"B02": 1, "B03": 2}))
        before = scenes.read_commit(IDENTIFIER, "B02")
        chunks_before = {k: scenes.client.get(k) for k in self.chunk_keys(scenes, "B02")}

        with pytest.raises(SourceFailure):
            save(scenes, scene_dataset({"B02": 7}, fail={"B02": 3}))

        assert scenes.read_commit(IDENTIFIER, "B02") == before
        assert {k: scenes.client.get(k) for k in self.chunk_keys(scenes, "B02")} == chunks_before
        assert scenes.committed_bands(IDENTIFIER) == {"B02", "B03"}
        assert_pixels(scenes, {"B02": 1, "B03": 2})
        assert not scenes.client.list(staging_key(IDENTIFIER)), "no staging left behind"
        assert verify_store(scenes) == (2, [])

    # -- concurrency ---------------------------------------------------------------------------

    def test_two_writers_of_one_scene_take_turns_and_both_commit(self, scenes: SceneStore) -> None:
        active, overlaps, errors = [0], [], []
        guard = threading.Lock()

        def writer(band: str, seed: int) -> None:
            ds = scene_dataset({band: seed})
            encodings = encodings_for(ds)
            try:
                with scenes.lock(IDENTIFIER, timeout_s=60):
                    with guard:
                        active[0] += 1
                        overlaps.append(active[0])
                    time.sleep(0.05)  # long enough for the other writer to try the lock
                    scenes.save(align_chunks(ds, encodings), IDENTIFIER, encodings)
                    with guard:
                        active[0] -= 1
            except Exception as err:  # reported below, in the test's thread
                errors.append(err)

        threads = [threading.Thread(target=writer, args=a) for a in (("B02", 1), ("B03", 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

        assert errors == [] and overlaps == [1, 1], "one writer at a time"
        assert scenes.committed_bands(IDENTIFIER) == {"B02", "B03"}
        assert_pixels(scenes, {"B02": 1, "B03": 2})
        assert verify_store(scenes) == (2, [])

    def test_of_racing_put_if_absent_exactly_one_wins(self, scenes: SceneStore) -> None:
        key = commit_key(IDENTIFIER, "B02")
        start = threading.Barrier(4)
        wins: list[tuple[int, bool]] = []

        def racer(n: int) -> None:
            start.wait()
            wins.append((n, scenes.client.put_if_absent(key, f"writer {n}".encode())))

        threads = [threading.Thread(target=racer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        winners = [n for n, won in wins if won]
        assert len(wins) == 4 and len(winners) == 1
        assert scenes.client.get(key) == f"writer {winners[0]}".encode()

    # -- removal -------------------------------------------------------------------------------

    def test_removal_of_a_scene_being_written_is_refused_then_done(
        self, scenes: SceneStore
    ) -> None:
        save(scenes, scene_dataset({"B02": 1}))
        before = dict(scenes.client.list(scene_key(IDENTIFIER)))
        size = scene_info(scenes, IDENTIFIER).size_bytes

        with scenes.lock(IDENTIFIER, timeout_s=10):
            assert scenes.writer_active(IDENTIFIER)
            with pytest.raises(SceneBusyError, match=IDENTIFIER):
                remove_scene(scenes, IDENTIFIER)
            assert dict(scenes.client.list(scene_key(IDENTIFIER))) == before, "untouched"
        assert_pixels(scenes, {"B02": 1})

        assert remove_scene(scenes, IDENTIFIER) == size > 0
        assert not scenes.exists(IDENTIFIER)
        assert listed(scenes) == {}
        assert not scenes.client.list(scene_key(IDENTIFIER))
        with pytest.raises(SceneNotFoundError):
            remove_scene(scenes, IDENTIFIER)

    # -- damage --------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "damage, kind, band",
        [
            ("flipped chunk byte", BAND, "B02"),
            ("deleted chunk", BAND, "B02"),
            ("garbage record", RECORD, "B02"),
            ("deleted group zarr.json", GROUP, "-"),
            ("leftover staging", STAGING, "-"),
        ],
    )
    def test_verify_finds_the_damage_and_repair_then_a_save_makes_it_whole(
        self, scenes: SceneStore, damage: str, kind: str, band: str
    ) -> None:
        seeds = {"B02": 1, "B03": 2}
        save(scenes, scene_dataset(seeds))
        if damage == "flipped chunk byte":
            self.flip_byte(scenes, self.chunk_keys(scenes, "B02")[-1])
        elif damage == "deleted chunk":
            self.delete_object(scenes, self.chunk_keys(scenes, "B02")[0])
        elif damage == "garbage record":
            self.put_garbage(scenes, commit_key(IDENTIFIER, "B02"))
            assert missing_bands(scenes, IDENTIFIER) == ["B02", "B04"], "garbage is missing"
            assert "B02" in scenes.committed(IDENTIFIER)[1]
        elif damage == "deleted group zarr.json":
            self.delete_object(scenes, f"{scene_key(IDENTIFIER)}/zarr.json")
        else:
            self.put_garbage(scenes, f"{staging_key(IDENTIFIER, 'B02')}/zarr.json")

        _checked, found = verify_store(scenes)

        assert [(d.identifier, d.band, d.kind) for d in found] == [(IDENTIFIER, band, kind)]
        assert found[0].problem

        repair(scenes, found)

        assert verify_store(scenes)[1] == []
        save(
            scenes,
            scene_dataset(
                {b: seeds[b] for b in missing_bands(scenes, IDENTIFIER) if b in seeds} or {"B03": 2}
            ),
        )
        assert scenes.committed_bands(IDENTIFIER) == set(seeds)
        assert_pixels(scenes, seeds)
        assert verify_store(scenes) == (2, [])
        assert not scenes.client.list(staging_key(IDENTIFIER))

    def test_open_with_verify_refuses_a_band_missing_a_chunk(self, scenes: SceneStore) -> None:
        save(scenes, scene_dataset({"B02": 1}))
        self.delete_object(scenes, self.chunk_keys(scenes, "B02")[0])

        with pytest.raises(DamagedSceneError, match="B02"):
            scenes.open(IDENTIFIER, ["B02"], verify=True)

    def test_reading_a_flipped_byte_raises_damage_not_wrong_pixels(
        self, scenes: SceneStore
    ) -> None:
        save(scenes, scene_dataset({"B02": 1}))
        self.flip_byte(scenes, self.chunk_keys(scenes, "B02")[0])

        with pytest.raises(DamagedSceneError, match="B02"):
            scenes.open(IDENTIFIER, ["B02"], eager=True)
        with pytest.raises(DamagedSceneError):
            scenes.open(IDENTIFIER, ["B02"]).load()

    def test_a_garbage_record_is_damage_on_open_and_in_the_inventory(
        self, scenes: SceneStore
    ) -> None:
        save(scenes, scene_dataset({"B02": 1, "B03": 2}))
        self.put_garbage(scenes, commit_key(IDENTIFIER, "B02"))

        with pytest.raises(DamagedSceneError):
            scenes.open(IDENTIFIER, ["B02"])
        assert_pixels(scenes, {"B03": 2})
        info = scene_info(scenes, IDENTIFIER)
        assert info.bands == ("B03",) and info.damaged == ("B02: commit record damaged",)


__all__ = [
    "BANDS",
    "IDENTIFIER",
    "SceneStoreTests",
    "SourceFailure",
    "assert_pixels",
    "encodings_for",
    "listed",
    "missing_bands",
    "save",
    "scene_dataset",
    "scene_pixels",
    "write_uncommitted",
]
