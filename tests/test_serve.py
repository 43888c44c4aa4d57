"""``scenestore serve``: a real rustac STAC API over a real store, searched with pystac-client.

The items are the stored scenes, their band assets the stored zarr arrays: a client that only
knows the API's URL finds the scenes by bbox and datetime and reads the very values
``SceneStore.open`` gives.
"""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from pystac_client import Client

from scenestore import StacStoreManager, serve
from scenestore.errors import InvalidRequestError
from scenestore.store import open_store

#: Runs the CLI as `python -m scenestore.cli` does, with `serve` registered if cli.py does not
#: register it (yet): the command under test is the same either way.
ENTRY = """
import sys
from scenestore import cli_serve
from scenestore.cli import app, user_errors
if "serve" not in {c.name for c in app.registered_commands}:
    cli_serve.register(app, user_errors=user_errors)
sys.argv = ["scenestore", *sys.argv[1:]]
app()
"""

ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "SCENESTORE_RETRY_BACKOFF": "0.05"}
BANDS = ["B02", "B04", "SCL"]


@pytest.fixture(scope="module")
def stored(world, tmp_path_factory):
    """A store holding B02, B04 and SCL (20 m, its own grid) of three world scenes."""
    root = tmp_path_factory.mktemp("serve")
    manager = StacStoreManager(BANDS, root / "store", stac_url=world.stac_url)
    for item in world.items[:3]:
        manager.download_and_store(item)
    ids = {manager.identifier(item): item for item in world.items[:3]}
    return root / "store", ids


def test_pystac_client_searches_the_store_and_reads_its_bands(stored):
    store, ids = stored
    with serve.start(store, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.items == 3
        api = Client.open(server.url)
        assert [c.id for c in api.get_collections()] == [serve.COLLECTION_ID]

        everything = api.search(
            collections=[serve.COLLECTION_ID], bbox=server.bbox, datetime="2020-01-01/2030-01-01"
        ).item_collection()
        assert sorted(i.id for i in everything) == sorted(ids)

        # bbox and datetime narrow it down as on any STAC API (paging on: limit 1)
        first_id, source = next(iter(ids.items()))
        day = source.datetime.date().isoformat()
        found = list(api.search(bbox=source.bbox, datetime=f"{day}/{day}", limit=1).items())
        assert [i.id for i in found] == [first_id]
        outside = api.search(bbox=[0.0, 0.0, 0.1, 0.1], datetime="2020-01-01/2030-01-01")
        assert list(outside.items()) == []

        item = found[0]
        assert item.properties["eo:cloud_cover"] == source.properties["eo:cloud_cover"]
        assert set(BANDS) <= set(item.assets) and "zarr" in item.assets
        red_href = item.assets["B04"].href
        # a file:// URL: pystac (odc-stac, most tools) would take a bare path as relative to
        # the item's http:// link
        assert red_href == f"file://{store.absolute()}/{Path(red_href).parent.name}/B04"
        assert item.assets["B04"].get_absolute_href() == red_href

        native = open_store(store).open(first_id, BANDS, resolution="native", eager=True)
        # a band from its asset alone, as stored
        red = zarr.open_array(red_href, mode="r")[...]
        np.testing.assert_array_equal(red, native["B04"].values)
        # the scene group with xarray: SCL on its own 20 m grid, as stored
        ds = xr.open_zarr(item.assets["zarr"].href, consolidated=False, mask_and_scale=False)
        np.testing.assert_array_equal(ds["SCL"].values, native["SCL"].values)
        assert (
            ds["SCL"].shape
            == native["SCL"].shape
            == tuple(item.assets["SCL"].extra_fields["proj:shape"])
        )
    assert not server.is_alive() and not server.workdir.exists()
    with pytest.raises(urllib.error.URLError):  # nothing listens there any more
        urllib.request.urlopen(server.url, timeout=2)


def test_an_empty_store_serves_no_items(tmp_path):
    (tmp_path / "store").mkdir()
    with serve.start(tmp_path / "store", port=0) as server:
        assert server.items == 0 and server.bbox is None
        api = Client.open(server.url)
        assert list(api.search(collections=[serve.COLLECTION_ID]).items()) == []


def test_a_port_in_use_is_one_clear_error(stored):
    store, _ = stored
    with serve.start(store, port=0) as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(InvalidRequestError, match=f"Port {port} .* in use"):
            serve.start(store, port=port)
        assert first.is_alive()  # the first server is untouched


def test_without_rustac_serve_says_how_to_install_it(tmp_path):
    # No rustac beside this "interpreter", none on PATH.
    code = f"import sys; sys.executable = {str(tmp_path / 'python')!r}\n{ENTRY}"
    (tmp_path / "store").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code, "serve", "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**ENV, "PATH": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install rustac" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_cli_serves_until_ctrl_c(stored, stop_signal):
    store, ids = stored
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "serve", "--store", str(store), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        url = _read_url(proc, timeout=120)
        api = Client.open(url)
        found = api.search(collections=[serve.COLLECTION_ID], max_items=10).item_collection()
        assert sorted(i.id for i in found) == sorted(ids)

        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Stopped the STAC API." in out and "Traceback" not in err
    with pytest.raises(urllib.error.URLError):  # rustac went with it
        urllib.request.urlopen(url, timeout=2)


def test_cli_bad_store_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, "serve", "--store", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _read_url(proc: subprocess.Popen, timeout: float) -> str:
    """The URL from the 'Serving ... at URL' line; fails with stderr if the process exits."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not selector.select(timeout=deadline - time.monotonic()):
            break
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"serve exited {proc.wait()}: {proc.stderr.read()}")
        if line.startswith("Serving ") and " at http://" in line:
            return line.split(" at ", 1)[1].split()[0]
    raise AssertionError(f"no URL printed within {timeout} s")


def test_items_are_valid_json_documents(stored):
    store, ids = stored
    items = serve.store_items(open_store(store))
    assert sorted(i["id"] for i in items) == sorted(ids)
    for item in items:
        json.dumps(item)
        assert item["collection"] == serve.COLLECTION_ID and item["links"] == []
    collection = serve.collection_dict(items)
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    assert all(west <= i["bbox"][0] and i["bbox"][2] <= east for i in items)
    assert all(south <= i["bbox"][1] and i["bbox"][3] <= north for i in items)


def test_an_object_store_serves_s3_hrefs(world, s3_store):
    manager = StacStoreManager(["B04"], s3_store, stac_url=world.stac_url)
    manager.download_and_store(world.items[0])
    identifier = manager.identifier(world.items[0])
    with serve.start(s3_store, port=0) as server:
        (item,) = Client.open(server.url).search(ids=[identifier]).items()
    # the object's own URL, which a client with the bucket's credentials opens (s3fs, obstore)
    assert item.assets["B04"].href == f"{s3_store}/{identifier}.zarr/B04"
    assert item.assets["B04"].get_absolute_href() == item.assets["B04"].href
    assert open_store(s3_store).client.exists(f"{identifier}.zarr/B04/zarr.json")


def test_a_damaged_scene_is_not_served(stored, tmp_path, caplog):
    import shutil

    source, ids = stored
    store = tmp_path / "store"
    shutil.copytree(source, store)
    broken = sorted(ids)[0]
    (store / f"{broken}.zarr" / "B04" / "zarr.json").unlink()

    served = [i["id"] for i in serve.store_items(open_store(store))]

    assert served == sorted(set(ids) - {broken})
    assert f"Not serving scene {broken}" in caplog.text and "verify --repair" in caplog.text
