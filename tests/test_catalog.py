"""The STAC catalog of a store: valid offline, loadable again, every band openable from it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pystac
import pytest
import xarray as xr
import zarr
from pystac.errors import STACValidationError
from pystac.extensions.projection import SCHEMA_URI as PROJ_URI

from scenestore import StacStoreManager
from scenestore.store import open_store
from scenestore.store.catalog import ZARR_MEDIA_TYPE, validate_catalog, write_catalog
from scenestore.store.layout import scene_path
from scenestore.store.quicklook import quicklook_path, write_quicklook
from scenestore.store.removal import remove_scene
from test_cli import run

#: A stand-in for the projection extension's schema, written for this test (the real one is
#: not available offline): it checks the types of the three proj fields the catalog writes.
PROJ_STAND_IN = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": PROJ_URI,
    "type": "object",
    "required": ["properties"],
    "properties": {
        "properties": {
            "type": "object",
            "required": ["proj:shape", "proj:transform"],
            "properties": {
                "proj:code": {"type": ["string", "null"]},
                "proj:shape": {
                    "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer"}
                },
                "proj:transform": {
                    "type": "array", "minItems": 6, "maxItems": 9, "items": {"type": "number"}
                },
            },
        }
    },
}


@pytest.fixture(scope="module")
def stored(world, tmp_path_factory):
    """A store with B02, B03, B04 and SCL of two world scenes, beside an empty work dir."""
    root = tmp_path_factory.mktemp("catalog")
    manager = StacStoreManager(["B02", "B03", "B04", "SCL"], root / "store",
                               stac_url=world.stac_url)
    for item in world.items[:2]:
        manager.download_and_store(item)
    return root, manager


def red_fields(item):
    return item.assets["B04"].extra_fields


def test_catalog_validates_offline_and_loads_again(world, stored, tmp_path):
    root, manager = stored
    work = tmp_path / "work"
    shutil.copytree(root / "store", work / "store")
    store, out = work / "store", work / "catalog"
    with_look = manager.identifier(world.items[0])
    write_quicklook(open_store(store), with_look, quicklook_path(store, with_look))

    write_catalog(open_store(store), out)
    check = validate_catalog(out)

    assert check.objects == 3
    assert PROJ_URI in check.extensions_unchecked

    # Catalog and store move together: the relative hrefs still resolve.
    moved = tmp_path / "moved"
    shutil.move(work, moved)
    catalog = pystac.Catalog.from_file(str(moved / "catalog" / "catalog.json"))
    items = {i.id: i for i in catalog.get_items()}
    assert set(items) == {manager.identifier(i) for i in world.items[:2]}
    for source in world.items[:2]:
        item = items[manager.identifier(source)]
        assert item.datetime == source.datetime
        assert item.properties["eo:cloud_cover"] == source.properties["eo:cloud_cover"]
        assert item.properties["proj:shape"] == [120, 120]
        assert item.properties["proj:code"] == source.properties["proj:code"]
        assert np.allclose(item.bbox, source.bbox, atol=2e-3), (item.bbox, source.bbox)
        thumb = {"thumbnail"} if item.id == with_look else set()
        assert set(item.assets) == {"zarr", "B02", "B03", "B04", "SCL"} | thumb
        # SCL keeps its 20 m grid (layout 2), and its asset says so; 10 m bands use the item's
        scl = item.assets["SCL"].extra_fields
        assert scl["proj:shape"] == [60, 60] and "proj:shape" not in red_fields(item)
        assert scl["proj:transform"][0] == 2 * item.properties["proj:transform"][0]
        if thumb:
            with open(item.assets["thumbnail"].get_absolute_href(), "rb") as png:
                assert png.read(4) == b"\x89PNG"
        red = item.assets["B04"]
        assert red.media_type == ZARR_MEDIA_TYPE and not red.href.startswith("/")
        assert red.extra_fields["bands"][0]["eo:common_name"] == "red"
        stored_red = zarr.open_array(scene_path(root / "store", item.id) / "B04", mode="r")[...]
        np.testing.assert_array_equal(zarr.open_array(red.get_absolute_href(), mode="r")[...],
                                      stored_red)
        ds = xr.open_zarr(item.assets["zarr"].get_absolute_href(), consolidated=False)
        np.testing.assert_array_equal(ds["B04"].values, stored_red)
        x0, y0 = float(ds.x[0]), float(ds.y[0])
        transform = item.properties["proj:transform"]
        assert (transform[2] + transform[0] / 2, transform[5] + transform[4] / 2) == (x0, y0)


def test_extension_schemas_from_a_local_directory_are_checked(stored, tmp_path, monkeypatch):
    root, _ = stored
    out = tmp_path / "catalog"
    write_catalog(open_store(root / "store"), out)
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "projection.json").write_text(json.dumps(PROJ_STAND_IN))
    monkeypatch.setenv("SCENESTORE_STAC_SCHEMAS", str(schemas))

    assert PROJ_URI in validate_catalog(out).extensions_checked

    item_file = next(out.glob("*/*.json"))
    doc = json.loads(item_file.read_text())
    doc["properties"]["proj:shape"] = ["120", 120]
    item_file.write_text(json.dumps(doc))
    with pytest.raises(STACValidationError, match="projection"):
        validate_catalog(out)
    doc["properties"]["proj:shape"] = [120, 120]
    del doc["properties"]["datetime"]  # a core violation: no datetime, no start/end
    item_file.write_text(json.dumps(doc))
    with pytest.raises(STACValidationError, match="item"):
        validate_catalog(out)


def test_cli_catalog_rewrites_without_removed_scenes(world, stored, tmp_path):
    root, manager = stored
    store, out = tmp_path / "store", tmp_path / "catalog"
    shutil.copytree(root / "store", store)
    first = run("catalog", "--store", str(store), "--out", str(out), check=True).stdout
    assert "2 items" in first and "Valid against the STAC core schemas" in first
    gone = manager.identifier(world.items[0])
    remove_scene(open_store(store), gone)

    again = run("catalog", "--store", str(store), "--out", str(out), check=True).stdout

    assert "1 items" in again
    assert not (out / gone).exists()
    assert [i.id for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items()] == [
        manager.identifier(world.items[1])
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging left"
