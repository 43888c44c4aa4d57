"""Tests of the offline Sentinel-2 world: generation, COGs, items, Range server, STAC API."""

from __future__ import annotations

import email.parser
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import odc.stac
import pystac
import pystac_client
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from providers.recorded import fixture
from scenestore.bands import ALL_BANDS, BAND_SPECS
from scenestore.errors import InvalidRequestError
from scenestore_world import (
    BAND_ASSETS,
    FaultPlan,
    OfflineWorld,
    RangeFileServer,
    generate_world,
    item_dict,
    parse_range,
    plan_scenes,
    resolve_size,
)
from scenestore_world.cogs import NOISE_SIGMA, SceneSynthesizer

GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "0"}
ID_PATTERN = re.compile(r"^S2[AB]_\d{2}[C-X][A-Z]{2}_\d{8}_0_L2A$")


def es_fixture(name: str) -> dict:
    """A recorded Earth Search document from the shared fixtures."""
    return json.loads(fixture(f"earth-search/{name}").read_text())


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineWorld]:
    with OfflineWorld(tmp_path_factory.mktemp("world"), scenes=4, size="tiny", seed=0) as w:
        yield w


@pytest.fixture
def files(tmp_path: Path) -> Iterator[RangeFileServer]:
    """A file server over a directory with a 1000-byte file of known content."""
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "data.bin").write_bytes(bytes(i % 251 for i in range(1000)))
    (tmp_path / "secret.txt").write_text("outside the root")
    with RangeFileServer(tmp_path / "root") as server:
        yield server


def request(
    server: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection to ``server`` (anything with a ``port``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


BODY = bytes(i % 251 for i in range(1000))


# --- Range parsing (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", [(0, 9)]),
        ("bytes=990-", [(990, 999)]),
        ("bytes=-10", [(990, 999)]),
        ("bytes=-5000", [(0, 999)]),
        ("bytes=995-2000", [(995, 999)]),
        ("bytes=0-0, 10-19,-1", [(0, 0), (10, 19), (999, 999)]),
        ("bytes=1000-", []),
        ("bytes=-0", []),
        ("bytes=5-3", None),
        ("bytes=a-b", None),
        ("items=0-9", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: list[tuple[int, int]] | None) -> None:
    assert parse_range(header, 1000) == expected


@given(size=st.integers(0, 10_000), first=st.integers(0, 20_000), length=st.integers(0, 20_000))
def test_parse_range_stays_inside_the_file(size: int, first: int, length: int) -> None:
    last = first + length
    ranges = parse_range(f"bytes={first}-{last}", size)
    if first >= size:
        assert ranges == []
    else:
        assert ranges == [(first, min(last, size - 1))]
    suffix = parse_range(f"bytes=-{length}", size)
    assert suffix == ([(max(0, size - length), size - 1)] if length and size else [])


# --- The HTTP file server -------------------------------------------------------------------


def test_single_suffix_and_open_ended_ranges(files: RangeFileServer) -> None:
    for header, start, end in [
        ("bytes=10-19", 10, 19),
        ("bytes=-7", 993, 999),
        ("bytes=900-", 900, 999),
        ("bytes=950-5000", 950, 999),
    ]:
        status, headers, body = request(files, "/sub/data.bin", headers={"Range": header})
        assert status == 206, header
        assert body == BODY[start : end + 1]
        assert headers["Content-Range"] == f"bytes {start}-{end}/1000"
        assert headers["Content-Length"] == str(end - start + 1)
        assert headers["Accept-Ranges"] == "bytes"


def test_multiple_ranges_are_multipart_byteranges(files: RangeFileServer) -> None:
    status, headers, body = request(
        files, "/sub/data.bin", headers={"Range": "bytes=0-3,100-109,-2"}
    )
    assert status == 206
    assert headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert int(headers["Content-Length"]) == len(body)
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.get_payload()]
    assert parts == [
        ("bytes 0-3/1000", BODY[0:4]),
        ("bytes 100-109/1000", BODY[100:110]),
        ("bytes 998-999/1000", BODY[998:1000]),
    ]


def test_whole_file_unsatisfiable_and_missing(files: RangeFileServer) -> None:
    status, headers, body = request(files, "/sub/data.bin")
    assert (status, body, headers["Accept-Ranges"]) == (200, BODY, "bytes")
    status, headers, _ = request(files, "/sub/data.bin", headers={"Range": "bytes=1000-"})
    assert (status, headers["Content-Range"]) == (416, "bytes */1000")
    status, _, body = request(files, "/sub/data.bin", headers={"Range": "bytes=9-2"})
    assert (status, body) == (200, BODY)  # malformed Range headers are ignored (RFC 9110)
    assert request(files, "/sub/missing.bin")[0] == 404
    assert request(files, "/sub")[0] == 404  # directories are never listed
    assert request(files, "/")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/sub/%5c..%5csecret.txt",
    ],
)
def test_path_traversal_is_rejected(files: RangeFileServer, path: str) -> None:
    status, _, body = request(files, path)
    assert status == 400
    assert b"outside the root" not in body


def test_symlink_out_of_the_root_is_not_served(files: RangeFileServer) -> None:
    (files.root / "link.txt").symlink_to(files.root.parent / "secret.txt")
    assert request(files, "/link.txt")[0] == 404


def test_head_sends_headers_only(files: RangeFileServer) -> None:
    status, headers, body = request(files, "/sub/data.bin", method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, "1000", b"")
    status, headers, body = request(
        files, "/sub/data.bin", method="HEAD", headers={"Range": "bytes=0-9"}
    )
    assert (status, headers["Content-Length"], body) == (206, "10", b"")


def test_keep_alive_serves_many_requests_on_one_connection(files: RangeFileServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", files.port, timeout=5)
    try:
        for start in range(0, 1000, 100):
            conn.request("GET", "/sub/data.bin", headers={"Range": f"bytes={start}-{start + 9}"})
            response = conn.getresponse()
            assert response.read() == BODY[start : start + 10]
            assert not response.will_close
        conn.request("GET", "/nope")  # an error answer keeps the connection open too
        assert conn.getresponse().read() and conn.sock is not None
    finally:
        conn.close()


def test_stats_count_requests_per_path(files: RangeFileServer) -> None:
    request(files, "/sub/data.bin", headers={"Range": "bytes=0-9"})
    request(files, "/sub/data.bin")
    request(files, "/sub/data.bin", method="HEAD")
    request(files, "/sub/missing.bin")
    stats = files.stats()
    assert set(stats) == {"sub/data.bin", "sub/missing.bin"}
    got = stats["sub/data.bin"]
    assert (got.requests, got.gets, got.heads, got.range_requests) == (3, 2, 1, 1)
    assert got.bytes_sent == 10 + 1000
    assert got.statuses == {206: 1, 200: 2}
    assert stats["sub/missing.bin"].statuses == {404: 1}
    # Records are appended when each handler finishes, so compare them as a multiset.
    assert sorted(r.status for r in files.requests()) == [200, 200, 206, 404]
    files.reset_stats()
    assert files.stats() == {} and files.requests() == []


def test_fault_plan_applies_in_process_and_only_to_matching_paths(
    files: RangeFileServer,
) -> None:
    assert files.faults is None
    files.faults = FaultPlan(status_503=1.0, path_glob="sub/*.bin", retry_after=3)
    status, headers, _ = request(files, "/sub/data.bin")
    assert (status, headers["Retry-After"]) == (503, "3")
    assert request(files, "/other.bin")[0] == 404  # outside the glob: served normally
    files.faults = None
    assert request(files, "/sub/data.bin")[0] == 200
    assert files.stats()["sub/data.bin"].statuses == {503: 1, 200: 1}
    assert files.stats()["sub/data.bin"].faults == {"status_503": 1}
    assert files.fault_count() == 1 and files.fault_count("status_429") == 0


def test_control_paths_are_reserved_uncounted_and_never_faulted(files: RangeFileServer) -> None:
    (files.root / "_world").mkdir()
    (files.root / "_world" / "health").write_text("a data file must not shadow a control path")
    files.faults = FaultPlan(status_503=1.0)
    status, _, body = request(files, "/_world/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert request(files, "/%5Fworld/health")[0] == 200  # no way around it by quoting
    status, _, body = request(files, "/_world/requests?server=cog")
    assert (status, json.loads(body)) == (200, [])
    assert request(files, "/_world/nope")[0] == 404
    assert request(files, "/_world/requests?server=nope")[0] == 404
    assert files.requests() == []


def test_stop_releases_the_port(tmp_path: Path) -> None:
    server = RangeFileServer(tmp_path).start()
    port = server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/x")
    conn.getresponse().read()  # an idle keep-alive connection must not block stop()
    server.stop()
    conn.close()
    assert _refused(f"http://127.0.0.1:{port}")


# --- Planning (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "pixels"),
    [
        ("tiny", 120),
        ("small", 1098),
        ("full", 10980),
        ("SMALL", 1098),
        (6, 6),
        (606, 606),
        ("60", 60),
    ],
)
def test_resolve_size(size: str | int, pixels: int) -> None:
    assert resolve_size(size) == pixels


@pytest.mark.parametrize("size", [121, 0, -6, 10986, "huge", True, 12.0, "12a"])
def test_resolve_size_rejects_unusable_sizes(size: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"(multiple of 6|World size)"):
        resolve_size(size)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(count=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_plan_scenes_is_deterministic_and_plausible(count: int, seed: int) -> None:
    scenes = plan_scenes(count, size="tiny", seed=seed)
    assert scenes == plan_scenes(count, size="tiny", seed=seed)
    assert len({s.id for s in scenes}) == count
    assert all(ID_PATTERN.match(s.id) for s in scenes)
    assert all(a.datetime < b.datetime for a, b in zip(scenes, scenes[1:], strict=False))
    assert all(0 <= s.cloud_cover <= 100 for s in scenes)
    assert sum(s.cloud_cover < 50 for s in scenes) >= (count + 1) // 2
    assert all(
        s.processing_baseline
        == ("05.11" if s.datetime >= datetime(2024, 7, 23, tzinfo=s.datetime.tzinfo) else "05.10")
        for s in scenes
    )
    assert all(s.platform[-1] == s.id[2].lower() for s in scenes)


def test_plan_scenes_rejects_bad_counts() -> None:
    with pytest.raises(InvalidRequestError, match="Scene count 0"):
        plan_scenes(0)


# --- Generation -----------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_world(tmp_path / "a", scenes=2, seed=7)
    second = generate_world(tmp_path / "b", scenes=2, seed=7)
    other = generate_world(tmp_path / "c", scenes=2, seed=8)
    assert [s.id for s in first.scenes] == [s.id for s in other.scenes]
    for scene in first.scenes:
        for band in ALL_BANDS:
            same = first.band_path(scene.id, band).read_bytes()
            assert same == second.band_path(scene.id, band).read_bytes(), (scene.id, band)
            assert same != other.band_path(scene.id, band).read_bytes(), (scene.id, band)


def test_generation_is_cached_and_repairs_missing_files(tmp_path: Path) -> None:
    manifest = generate_world(tmp_path, scenes=2)
    before = _snapshot(tmp_path)
    assert len(before) == 2 * 13 + 1
    assert generate_world(tmp_path, scenes=2) == manifest
    assert _snapshot(tmp_path) == before  # nothing rewritten
    victim = manifest.band_path(manifest.scenes[1].id, "B8A")
    victim.unlink()
    generate_world(tmp_path, scenes=2)
    assert victim.is_file()
    smaller = generate_world(tmp_path, scenes=1)  # other parameters: regenerated, stale removed
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [smaller.scenes[0].id]


def test_generation_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="multiple of 6"):
        generate_world(tmp_path, size=100)
    assert not (tmp_path / "manifest.json").exists()


def test_every_band_is_a_cog_on_the_item_grid(world: OfflineWorld) -> None:
    assert world.manifest is not None
    for item in world.items:
        for band in ALL_BANDS:
            spec = BAND_SPECS[band]
            asset = item.assets[BAND_ASSETS[band][0]]
            with rasterio.open(world.manifest.band_path(item.id, band)) as ds:
                structure = ds.tags(ns="IMAGE_STRUCTURE")
                assert structure["LAYOUT"] == "COG"
                assert (structure["COMPRESSION"], structure["PREDICTOR"]) == ("DEFLATE", "2")
                assert ds.profile["tiled"] and ds.block_shapes[0][0] < ds.height
                assert ds.overviews(1), (item.id, band)
                assert (ds.nodata, ds.dtypes[0]) == (0, spec.dtype)
                size = 120 * 10 // spec.resolution
                assert ds.shape == (size, size) == tuple(asset.extra_fields["proj:shape"])
                assert list(ds.transform)[:6] == asset.extra_fields["proj:transform"]
                # pystac migrates Earth Search's proj:epsg to proj:code when reading items
                assert f"EPSG:{ds.crs.to_epsg()}" == item.properties["proj:code"]


def test_all_assets_cover_the_same_footprint(world: OfflineWorld) -> None:
    for item in world.items:
        footprints = set()
        for band in ALL_BANDS:
            asset = item.assets[BAND_ASSETS[band][0]]
            res, _, x0, _, neg_res, y0 = asset.extra_fields["proj:transform"]
            rows, cols = asset.extra_fields["proj:shape"]
            footprints.add((x0, y0 + rows * neg_res, x0 + cols * res, y0))
        assert len(footprints) == 1, item.id


def test_pixels_are_plausible_and_consistent_with_the_item(world: OfflineWorld) -> None:
    assert world.manifest is not None
    for scene, item in zip(world.manifest.scenes, world.items, strict=True):
        with rasterio.open(world.manifest.band_path(scene.id, "SCL")) as ds:
            scl = ds.read(1)
        valid = scl != 0
        nodata_share = 100 * (1 - valid.mean())
        assert nodata_share == pytest.approx(item.properties["s2:nodata_pixel_percentage"], abs=3)
        cloudy = 100 * np.isin(scl[valid], [8, 9, 10]).mean()
        assert cloudy == pytest.approx(item.properties["eo:cloud_cover"], abs=5)
        valid_at = {10: np.repeat(np.repeat(valid, 2, 0), 2, 1), 20: valid, 60: valid[1::3, 1::3]}
        for band in ("B02", "B04", "B8A", "B09"):
            with rasterio.open(world.manifest.band_path(scene.id, band)) as ds:
                data = ds.read(1)
            # every band is 0 exactly where SCL is (up to pixels on the swath edge)
            assert ((data != 0) == valid_at[BAND_SPECS[band].resolution]).mean() > 0.97
            values = data[data > 0]
            assert 1000 < np.median(values) < 7000  # +1000 BOA offset of baseline >= 04.00
    assert any(s.nodata_corner for s in world.manifest.scenes)
    assert any(not s.nodata_corner for s in world.manifest.scenes)


def test_pixels_have_the_spatial_and_spectral_structure_of_l2a() -> None:
    # the first scene of the benchmark's small world: clear enough to see land, lakes and fields
    scene = plan_scenes(1, size="small", seed=7)[0]
    synth = SceneSynthesizer(scene)
    rows = scene.shape(20)[0]
    at10 = synth.strip(10, 0, 2 * rows, ["B04", "B08"])
    at20 = synth.strip(20, 0, rows, ["B11", "SCL"])
    red, nir = (at10[b].astype(np.float64) for b in ("B04", "B08"))
    scl = np.repeat(np.repeat(at20["SCL"], 2, 0), 2, 1)
    swir = at20["B11"].astype(np.float64)
    # spatially correlated, neither flat nor noise: neighbours differ by far less than the band
    # spreads, and by far more than the few DN of sensor noise
    dx = np.diff(nir, axis=1)
    assert np.corrcoef(nir[:, :-1].ravel(), nir[:, 1:].ravel())[0, 1] > 0.9
    assert 4 * NOISE_SIGMA[10] < np.std(dx) < 0.5 * np.std(nir)
    # reflectances as over real land cover: NIR well above red on vegetation, water dark in NIR
    # and SWIR, bare soil brighter in red than vegetation
    veg, soil, water = (scl == 4), (scl == 5), (scl == 6)
    assert min(veg.mean(), soil.mean(), water.mean()) > 0.01
    assert np.median(nir[veg]) > 2 * np.median(red[veg])
    assert np.median(red[soil]) > np.median(red[veg]) + 300
    assert np.median(nir[water]) < 1000 + 400 < np.median(nir[veg])
    assert np.median(swir[at20["SCL"] == 6]) < 1000 + 400 < np.median(swir[at20["SCL"] == 5])
    # the classification comes in patches, as SCL does
    assert (at20["SCL"][:, 1:] == at20["SCL"][:, :-1]).mean() > 0.85


# --- Items ----------------------------------------------------------------------------------


def test_items_follow_the_real_earth_search_structure(world: OfflineWorld) -> None:
    real = es_fixture("eodm__es-v1-sentinel-2-l2a__3items.json")["features"][0]
    ours = world.manifest.item_dicts(world.data_url)[0]  # type: ignore[union-attr]
    assert ours["stac_extensions"] == real["stac_extensions"]
    assert ours["collection"] == real["collection"] == "sentinel-2-l2a"
    assert set(ours["properties"]) == set(real["properties"])
    keys = {BAND_ASSETS[b][0] for b in ALL_BANDS}
    assert set(ours["assets"]) == keys and keys <= set(real["assets"])
    for key in keys:
        mine, theirs = ours["assets"][key], real["assets"][key]
        assert set(mine) == set(theirs), key
        for name in ("type", "title", "roles", "eo:bands", "gsd", "raster:bands"):
            assert mine.get(name) == theirs.get(name), (key, name)
        assert mine["href"].startswith(world.data_url)
    assert ours["properties"]["earthsearch:boa_offset_applied"] is True
    assert ID_PATTERN.match(ours["id"])
    pystac.Item.from_dict(ours)  # accepted as a STAC item


def test_full_size_grid_matches_the_real_tile() -> None:
    real = es_fixture("eodm__es-v1-sentinel-2-l2a__3items.json")["features"][0]
    scene = plan_scenes(1, size="full")[0]
    assert scene.tile == "39QTA"
    ours = item_dict(scene, "http://example.invalid")
    for key in (BAND_ASSETS[b][0] for b in ALL_BANDS):
        for name in ("proj:shape", "proj:transform"):
            assert ours["assets"][key][name] == real["assets"][key][name], (key, name)
    assert ours["bbox"] == pytest.approx(real["bbox"], abs=1e-4)


def test_items_are_served_with_reachable_assets(world: OfflineWorld) -> None:
    assert [i.id for i in world.items] == [s.id for s in world.manifest.scenes]  # type: ignore
    for item in world.items:
        for band in ALL_BANDS:
            href = item.assets[BAND_ASSETS[band][0]].href
            assert href == f"{world.data_url}/{item.id}/{band}.tif"
    assert world.http is not None
    status, headers, _ = request(world.http, f"/{world.items[0].id}/SCL.tif", method="HEAD")
    assert status == 200 and headers["Content-Type"] == "image/tiff"


# --- Reading over HTTP ----------------------------------------------------------------------


def test_gdal_reads_cogs_over_http_with_ranges(world: OfflineWorld) -> None:
    server = world.http
    assert server is not None and world.manifest is not None
    scene = world.manifest.scenes[1]
    local = world.manifest.band_path(scene.id, "B04")
    server.reset_stats()
    with rasterio.Env(**GDAL_ENV), rasterio.open(f"{world.data_url}/{scene.id}/B04.tif") as ds:
        window = Window(10, 20, 50, 40)
        remote = ds.read(1, window=window)
        overview = ds.read(1, out_shape=(60, 60))
    with rasterio.open(local) as ds:
        assert np.array_equal(remote, ds.read(1, window=window))
        assert np.array_equal(overview, ds.read(1, out_shape=(60, 60)))
    stats = server.stats()
    assert set(stats) == {f"{scene.id}/B04.tif"}  # no sidecar probes, no other bands
    assert stats[f"{scene.id}/B04.tif"].statuses.get(206, 0) >= 1


def test_odc_stac_load_gives_the_10m_grid(world: OfflineWorld) -> None:
    assert world.manifest is not None
    item = world.items[1]
    scene = world.manifest.scenes[1]
    world.http.reset_stats()  # type: ignore[union-attr]
    with rasterio.Env(**GDAL_ENV):
        data = odc.stac.load([item], bands=["red", "scl"], resolution=10, crs=f"EPSG:{scene.epsg}")
    assert data.red.shape == (1, 120, 120) and data.scl.shape == (1, 120, 120)
    assert float(data.x[0]) == scene.ulx + 5 and float(data.y[0]) == scene.uly - 5
    with rasterio.open(world.manifest.band_path(scene.id, "B04")) as ds:
        assert np.array_equal(data.red.values[0], ds.read(1))
    with rasterio.open(world.manifest.band_path(scene.id, "SCL")) as ds:
        scl = ds.read(1)
    assert np.array_equal(data.scl.values[0], np.repeat(np.repeat(scl, 2, 0), 2, 1))
    fetched = {p for p, s in world.http.stats().items() if s.gets}  # type: ignore[union-attr]
    assert fetched == {f"{scene.id}/B04.tif", f"{scene.id}/SCL.tif"}


# --- The STAC API ---------------------------------------------------------------------------


def test_stac_search_by_bbox_and_datetime(world: OfflineWorld) -> None:
    client = pystac_client.Client.open(world.stac_url)
    first = world.items[0]
    west, south, east, north = first.bbox  # type: ignore[misc]
    bbox = [west + 0.001, south + 0.001, west + 0.002, south + 0.002]
    found = client.search(
        collections=["sentinel-2-l2a"], bbox=bbox, datetime="2024-06-01/2024-06-30"
    ).item_collection()
    same_tile = [i.id for i in world.items if i.properties["grid:code"] == "MGRS-39QTA"]
    assert sorted(i.id for i in found) == sorted(same_tile) and len(same_tile) == 2
    found = client.search(
        collections=["sentinel-2-l2a"], bbox=bbox, datetime="2024-06-05/2024-06-30"
    ).item_collection()
    assert [i.id for i in found] == [same_tile[1]]
    assert not list(client.search(collections=["sentinel-2-l2a"], bbox=[0, 0, 1, 1]).items())


def test_stac_search_pages_through_all_items(world: OfflineWorld) -> None:
    client = pystac_client.Client.open(world.stac_url)
    search = client.search(collections=["sentinel-2-l2a"], limit=1)
    pages = list(search.pages())
    assert len(pages) == len(world.items) == 4
    assert [i.id for page in pages for i in page] == [i.id for i in world.items]


# --- Lifecycle ------------------------------------------------------------------------------


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` has exited (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_world_stops_everything_on_exit_even_after_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), OfflineWorld(tmp_path, scenes=1) as world:
        process = world._process
        assert world.servers is not None
        server_pid = world.servers.pid
        urls = (world.stac_url, world.data_url)
        assert world.is_alive() and server_pid not in (None, os.getpid())
        raise RuntimeError("boom")
    assert process is not None and process.poll() is not None
    assert server_pid is not None and _gone(server_pid, timeout=0)
    assert all(_refused(url) for url in urls)
    assert not any((tmp_path / "serve").iterdir())


def test_servers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    code = (
        "import sys; from scenestore_world import serve_forever; "
        "serve_forever(sys.argv[1], 1, 'tiny', 0, "
        "on_ready=lambda w: print(w.servers.pid, w._process.pid, flush=True))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 2, "serve_forever did not report readiness"
        proc.kill()  # no cleanup runs in the parent: the children must notice by themselves
        proc.wait(timeout=10)
        assert all(_gone(pid) for pid in pids), pids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_forever_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    code = (
        "import sys; from scenestore_world import serve_forever; "
        "serve_forever(sys.argv[1], 1, 'tiny', 0, "
        "on_ready=lambda w: print(w.stac_url, w.data_url, flush=True))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert len(line) == 2, "serve_forever did not report readiness"
        stac_url, data_url = line
        assert pystac_client.Client.open(stac_url).search(max_items=5).item_collection()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert _refused(stac_url) and _refused(data_url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert os.listdir(tmp_path / "serve") == []
