"""The ingest flow's quicklooks: one PNG per stored scene, embedded in a markdown artifact."""

from __future__ import annotations

import base64
import re
from datetime import date

import pytest
from flow_helpers import WORLD_BBOX, artifacts, task_runs
from flows.backfill import backfill
from flows.ingest import ingest
from flows.quicklooks import MAX_EMBEDDED, RenderedQuicklook, quicklook_markdown
from test_flow_backfill import child_runs

from scenestore.store import open_store
from scenestore.store.layout import quicklook_key
from scenestore.store.quicklook import quicklook_path
from scenestore.store.removal import remove_scene

pytestmark = pytest.mark.usefixtures("prefect_results")

IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\(data:image/png;base64,(?P<data>[A-Za-z0-9+/=]+)\)")


def markdown_of(state) -> str:
    (art,) = [a for a in artifacts(state.state_details.flow_run_id) if a.type == "markdown"]
    assert art.key == "ingest-quicklooks"
    return art.data


def test_every_stored_scene_gets_a_quicklook_in_the_artifact(world, ingest_params, store,
                                                              monkeypatch):
    params = {**ingest_params, "bands": ["B02", "B03", "B04"]}
    state = ingest(**params, return_state=True)

    assert state.is_completed(), state.message
    text = markdown_of(state)
    images = {m["alt"].split()[0]: base64.b64decode(m["data"]) for m in IMAGE.finditer(text)}
    identifiers = {f"es-l2a_{item.id}" for item in world.items}
    assert set(images) == identifiers
    for ident, png in images.items():
        path = quicklook_path(store, ident)
        assert png.startswith(b"\x89PNG") and png == path.read_bytes()
        assert f"File: `{path}`" in text
    names = [r.name for r in task_runs(state.state_details.flow_run_id)]
    # One task renders all of the run's quicklooks (a task run per scene costs more than
    # a small quicklook).
    assert len([n for n in names if n.startswith("quicklook")]) == 1, names

    again = ingest(**params, return_state=True)  # nothing stored: nothing rendered
    assert again.is_completed() and "No scene was stored in this run." in markdown_of(again)

    gone = sorted(identifiers)[0]
    remove_scene(open_store(store), gone)
    assert not quicklook_path(store, gone).exists(), "rm takes the scene's quicklook along"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("flows.quicklooks.save_quicklook", disk_full)
    failed_look = ingest(**params, return_state=True)  # stores `gone` again, cannot draw it
    assert failed_look.is_completed(), "a quicklook that fails never fails the run"
    assert f"## {gone}\nNo quicklook: " in markdown_of(failed_look)
    assert "No space left on device" in markdown_of(failed_look)


def test_quicklooks_of_an_s3_store_are_objects_in_it_and_embedded(world, ingest_params, s3_store):
    item = world.items[1]
    west, south, east, north = item.bbox
    params = {**ingest_params, "store": s3_store, "bands": ["B02", "B03", "B04"],
              "bbox": {"west": west, "south": south, "east": east, "north": north}}
    state = ingest(**params, return_state=True)

    assert state.is_completed(), state.message
    text = markdown_of(state)
    images = {m["alt"].split()[0]: base64.b64decode(m["data"]) for m in IMAGE.finditer(text)}
    ident = f"es-l2a_{item.id}"
    assert ident in images and "No quicklook" not in text
    scenes = open_store(s3_store)
    for name, png in images.items():
        stored = scenes.client.get(quicklook_key(name))
        assert stored is not None and png.startswith(b"\x89PNG") and png == stored
        assert f"File: `{s3_store}/.quicklooks/{name}.png`" in text


def test_markdown_embeds_a_bounded_number_and_explains_the_missing():
    looks = [RenderedQuicklook(f"s{i}", path=f"/q/s{i}.png", png=b"\x89PNG-%d" % i)
             for i in range(MAX_EMBEDDED + 2)]
    looks.append(RenderedQuicklook("norgb", note="Scene 'norgb' lacks bands ['B04']"))
    text = quicklook_markdown(looks, label="2024-06-01..2024-06-30")
    assert text.startswith("# Quicklooks of the scenes stored in 2024-06-01..2024-06-30")
    assert len(IMAGE.findall(text)) == MAX_EMBEDDED
    assert "File: `/q/s13.png`" in text and "No quicklook: Scene 'norgb' lacks bands" in text


def test_a_backfill_shows_every_windows_quicklooks_in_one_artifact(world, store):
    state = backfill(store=str(store), start=date(2024, 6, 1), end=date(2024, 6, 14),
                     bbox=WORLD_BBOX, bands=["B02", "B03", "B04"], stac_url=world.stac_url,
                     window_unit="week", return_state=True)

    assert state.is_completed(), state.message
    (art,) = [a for a in artifacts(state.state_details.flow_run_id) if a.type == "markdown"]
    assert art.key == "backfill-quicklooks"
    # Every scene of both windows, window by window in date order, each embedded and kept
    # in the store.
    names = re.findall(r"^## (\S+)$", art.data, flags=re.MULTILINE)
    days = [name.split("_")[3] for name in names]
    assert len(names) == 4 and max(days[:3]) < "20240608" <= days[3], names
    assert len(IMAGE.findall(art.data)) == 4
    assert all(quicklook_path(store, name).exists() for name in names)
    # The windows make none of their own (the backfill run shows them).
    windows = child_runs(state)
    assert len(windows) == 2
    assert not [a for w in windows for a in artifacts(w.id) if a.type == "markdown"]
