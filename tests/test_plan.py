"""Ingest planning (scenestore.plan) on real stores: what is missing, complete or invalid."""

from __future__ import annotations

import pystac
import pytest

from scenestore.plan import ScenePlan, plan_ingest
from scenestore.stac import StacStoreManager
from synthetic import ArrayStoreManager

BANDS = ["B02", "B04"]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An empty store: a directory, or an s3:// prefix on the test S3 server."""
    if request.param == "local":
        return tmp_path / "store"
    return request.getfixturevalue("s3_store")


def item_doc(item_id: str) -> dict:
    """A minimal STAC item document, as a cached search returns it."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": {"type": "Point", "coordinates": [15.0, 50.0]},
        "bbox": [15.0, 50.0, 15.0, 50.0],
        "properties": {"datetime": "2024-06-01T10:00:00Z"},
        "links": [],
        "assets": {},
    }


def test_plans_tell_complete_partial_absent_and_invalid_scenes_apart(store):
    ArrayStoreManager(BANDS, store).download_and_store("whole")
    ArrayStoreManager(["B04"], store).download_and_store("half")
    manager = ArrayStoreManager(BANDS, store)

    plans = plan_ingest(manager, ["whole", "half", "../escape", "absent"])

    assert [p.name for p in plans] == ["whole", "half", "../escape", "absent"]  # input order
    whole, half, bad, absent = plans
    assert (whole.identifier, whole.missing, whole.error) == ("whole", (), None)
    assert whole.is_complete
    assert (half.missing, half.is_complete) == (("B02",), False)
    assert (absent.identifier, absent.missing) == ("absent", tuple(BANDS))
    assert not absent.is_complete
    # An invalid id is a failed plan, not an exception, and does not stop the scenes after it.
    assert bad.identifier is None and bad.missing == () and not bad.is_complete
    assert "'../escape'" in bad.error
    # Planning reads commit records only: nothing is fetched from the source.
    assert manager.downloads == []


def test_planning_changes_nothing_in_the_store(tmp_path):
    store = tmp_path / "store"
    ArrayStoreManager(["B04"], store).download_and_store("half")
    before = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*"))
    plan_ingest(ArrayStoreManager(BANDS, store), ["half", "absent"])
    after = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*"))
    assert after == before


def test_without_a_store_every_band_is_missing():
    plans = plan_ingest(ArrayStoreManager(BANDS, None), ["s1", "s2"])
    assert [(p.identifier, p.missing) for p in plans] == [
        ("s1", ("B02", "B04")), ("s2", ("B02", "B04"))
    ]


def test_stac_items_and_documents_are_planned_without_source_requests(tmp_path):
    # Port 9 (discard) serves nothing: a request to the STAC API would fail the test.
    manager = StacStoreManager(BANDS, tmp_path / "store", stac_url="http://127.0.0.1:9")
    doc, bad = item_doc("S2A_33UUP_20240601_0_L2A"), item_doc("S2A/../x")
    item = pystac.Item.from_dict(item_doc("S2B_33UUP_20240604_0_L2A"))

    first, second, third = plan_ingest(manager, [doc, item, bad])

    assert first.identifier == "es-l2a_S2A_33UUP_20240601_0_L2A"
    assert first.source is doc  # a document stays unparsed until a download needs it
    assert first.item().id == doc["id"] and first.missing == ("B02", "B04")
    assert second.identifier == "es-l2a_S2B_33UUP_20240604_0_L2A" and second.item() is item
    assert third.identifier is None and third.name == "S2A/../x"
    assert "S2A/../x" in third.error


def test_a_plan_from_a_bare_id_has_no_item():
    plan = ScenePlan("s1", "s1", ("B04",))
    assert plan.item_id == plan.name == "s1"
    with pytest.raises(TypeError, match="made from an item id"):
        plan.item()


def test_an_empty_search_plans_nothing(tmp_path):
    assert plan_ingest(ArrayStoreManager(BANDS, tmp_path), []) == []
