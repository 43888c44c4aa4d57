"""Fault injection in the offline world, and its servers running out of the test process.

Each fault kind is observed from a real client (http.client, requests, pystac-client, GDAL)
against the world's servers in their child process; the decision logic is tested pure.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pystac_client
import pytest
import rasterio
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.errors import RasterioIOError

from scenestore.errors import InvalidRequestError, SourceError
from scenestore_world import (
    FaultKind,
    FaultPlan,
    OfflineWorld,
    StacProxy,
    WorldServers,
    choose_fault,
)
from scenestore_world.faults import FaultInjector

KINDS = list(FaultKind)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineWorld]:
    """A world of its own: these tests change its faults."""
    with OfflineWorld(tmp_path_factory.mktemp("faulty-world"), scenes=2, seed=3) as w:
        yield w


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test of the world starts with no faults and no counted requests."""
    if "world" not in request.fixturenames:
        yield
        return
    w: OfflineWorld = request.getfixturevalue("world")
    w.set_faults(cog=None, stac=None)
    w.http.reset_stats()  # type: ignore[union-attr]
    w.stac_http.reset_stats()  # type: ignore[union-attr]
    yield
    w.set_faults(cog=None, stac=None)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # loopback: never through a proxy from the environment
        yield s


def href(world: OfflineWorld, band: str = "B04", scene: int = 0) -> str:
    return f"{world.data_url}/{world.items[scene].id}/{band}.tif"


def key(world: OfflineWorld, band: str = "B04", scene: int = 0) -> str:
    return f"{world.items[scene].id}/{band}.tif"


def get(world: OfflineWorld, path: str, headers: dict[str, str] | None = None) -> Any:
    """GET on a fresh connection; returns the response with its body unread."""
    assert world.http is not None
    conn = http.client.HTTPConnection(world.http.host, world.http.port, timeout=10)
    conn.request("GET", "/" + path, headers=headers or {})
    return conn.getresponse()


# --- The plan and its decisions (pure) ------------------------------------------------------

fractions = st.floats(0, 1, allow_nan=False)


@st.composite
def plans(draw: st.DrawFn) -> FaultPlan:
    shares = draw(st.lists(fractions, min_size=4, max_size=4))
    total = sum(shares)
    if total > 1:
        shares = [s / total * 0.999 for s in shares]
    return FaultPlan(*shares, seed=draw(st.integers(0, 2**32)))


@given(plan=plans(), draw=st.floats(0, 1, exclude_max=True))
def test_choose_fault_cuts_the_unit_interval_by_the_fractions(plan: FaultPlan, draw: float) -> None:
    edges = np.cumsum([getattr(plan, k.value) for k in KINDS])
    chosen = choose_fault(plan, draw)
    if draw >= edges[-1]:
        assert chosen is None
    else:
        index = int(np.searchsorted(edges, draw, side="right"))
        assert chosen is KINDS[index]
        assert getattr(plan, chosen.value) > 0


@settings(max_examples=25, deadline=None)
@given(plan=plans())
def test_injector_is_deterministic_and_roughly_respects_fractions(plan: FaultPlan) -> None:
    one, two = FaultInjector(plan), FaultInjector(plan)
    first = [one.decide("a.tif").fault for _ in range(2000)]
    assert first == [two.decide("a.tif").fault for _ in range(2000)]
    counts = Counter(first)
    for kind in KINDS:
        assert counts[kind] / 2000 == pytest.approx(getattr(plan, kind.value), abs=0.05), kind
    assert one.injected == sum(counts[k] for k in KINDS)


def test_injector_cap_glob_and_seed() -> None:
    capped = FaultInjector(FaultPlan(truncate=1.0, max_faults=3, path_glob="*.tif", latency_s=2))
    assert capped.decide("x/README.md") == (None, 0.0, None)  # not matched: no latency either
    decisions = [capped.decide("x/B04.tif") for _ in range(5)]
    assert [d.fault for d in decisions] == [FaultKind.TRUNCATE] * 3 + [None] * 2
    assert {d.latency_s for d in decisions} == {2.0}  # latency continues after the cap
    assert capped.injected == 3
    a, b = (FaultInjector(FaultPlan(status_503=0.5, seed=s)) for s in (1, 2))
    assert [a.decide("p").fault for _ in range(64)] != [b.decide("p").fault for _ in range(64)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status_503": 1.5}, "out of range"),
        ({"status_429": -0.1}, "out of range"),
        ({"truncate": True}, "not a number"),
        ({"status_503": 0.6, "reset_mid_body": 0.6}, "sum to"),
        ({"latency_s": -1}, "latency_s"),
        ({"retry_after": 1.5}, "retry_after"),
        ({"max_faults": -1}, "max_faults"),
        ({"path_glob": ""}, "path_glob"),
    ],
)
def test_fault_plan_rejects_unusable_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        FaultPlan(**kwargs)


@given(plan=plans())
def test_fault_plan_round_trips_through_json(plan: FaultPlan) -> None:
    assert FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_fault_plan_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidRequestError, match=r"Unknown fault plan keys \['status_500'\]"):
        FaultPlan.from_dict({"status_500": 0.1})


# --- The servers run in their own process ---------------------------------------------------


@pytest.mark.timeout(30)
def test_gdal_opens_a_served_cog_with_default_settings_without_deadlock(
    world: OfflineWorld,
) -> None:
    # An in-process server deadlocked here: rasterio holds the GIL while GDAL probes for
    # sidecar files. GDAL_HTTP_TIMEOUT bounds a regression to a failure instead of a hang
    # (pytest-timeout cannot interrupt C code that holds the GIL).
    assert world.servers is not None and world.servers.pid != os.getpid()
    env = {"GDAL_DISABLE_READDIR_ON_OPEN": "FALSE", "GDAL_HTTP_TIMEOUT": "2"}
    start = time.monotonic()
    with rasterio.Env(**env), rasterio.open(href(world, "B8A")) as ds:
        data = ds.read(1)
    elapsed = time.monotonic() - start
    assert elapsed < 5, f"rasterio.open took {elapsed:.1f} s"
    assert data.shape == (60, 60) and data.any()
    probed = set(world.http.stats())  # type: ignore[union-attr]
    assert key(world, "B8A") in probed and len(probed) > 1  # sidecar probes were answered


def test_world_child_is_configured_by_cli_flags_and_reports_startup_errors(
    tmp_path: Path,
) -> None:
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    servers = WorldServers(tmp_path, faults=FaultPlan(status_429=1.0, retry_after=2))
    assert "--faults" in servers.command()
    with servers:
        assert servers.cog is not None and servers.stac is not None
        response = requests.get(f"{servers.cog.url}/f.bin", timeout=5)
        assert (response.status_code, response.headers["Retry-After"]) == (429, "2")
        assert servers.cog.faults == FaultPlan(status_429=1.0, retry_after=2)
        assert requests.get(f"{servers.stac.url}/search", timeout=5).status_code == 502
        pid = servers.pid
    assert not servers.is_alive() and pid is not None
    with pytest.raises(SourceError, match="exited with code 2.*not a directory"):
        WorldServers(tmp_path / "missing").start()


def test_proxy_without_upstream_answers_502() -> None:
    with StacProxy() as proxy:
        response = requests.get(f"{proxy.url}/search", timeout=5)
        assert response.status_code == 502
        assert proxy.stats()["search"].statuses == {502: 1}


# --- Each fault kind, seen by a real client -------------------------------------------------


def test_faults_are_off_by_default(world: OfflineWorld, session: requests.Session) -> None:
    assert world.faults() == {"cog": None, "stac": None}
    for band in ("B02", "B03", "SCL"):
        assert session.get(href(world, band), timeout=5).status_code == 200
    pages = pystac_client.Client.open(world.stac_url).search(max_items=5)
    assert len(list(pages.items())) == 2
    assert world.http.fault_count() == world.stac_http.fault_count() == 0  # type: ignore


@pytest.mark.parametrize(("kind", "status"), [("status_503", 503), ("status_429", 429)])
def test_status_faults_carry_retry_after(
    world: OfflineWorld, session: requests.Session, kind: str, status: int
) -> None:
    world.set_faults(cog=FaultPlan(**{kind: 1.0}, retry_after=1))
    response = session.get(href(world), headers={"Range": "bytes=0-99"}, timeout=5)
    assert response.status_code == status
    assert response.headers["Retry-After"] == "1"
    head = session.head(href(world, "SCL"), timeout=5)
    assert head.status_code == status and head.content == b""
    stats = world.http.stats()  # type: ignore[union-attr]
    assert stats[key(world)].statuses == {status: 1}
    assert stats[key(world)].faults == {kind: 1}
    assert world.http.fault_count(kind) == 2  # type: ignore[union-attr]


def test_reset_mid_body_is_a_connection_error(world: OfflineWorld) -> None:
    world.set_faults(cog=FaultPlan(reset_mid_body=1.0))
    response = get(world, key(world))
    declared = int(response.getheader("Content-Length"))
    assert response.status == 200 and declared > 1000
    with pytest.raises(ConnectionResetError):
        response.read()
    with (
        pytest.raises(requests.exceptions.ChunkedEncodingError, match="reset by peer"),
        requests.Session() as s,
    ):
        s.trust_env = False
        s.get(href(world, "SCL"), timeout=5)
    records = world.http.requests()  # type: ignore[union-attr]
    assert [r.fault for r in records] == ["reset_mid_body"] * 2
    assert records[0].bytes_sent == declared // 2


def test_truncated_body_is_an_incomplete_read(world: OfflineWorld) -> None:
    world.set_faults(cog=FaultPlan(truncate=1.0))
    response = get(world, key(world), headers={"Range": "bytes=100-1099"})
    assert response.status == 206 and response.getheader("Content-Length") == "1000"
    with pytest.raises(http.client.IncompleteRead) as caught:
        response.read()
    assert len(caught.value.partial) == 500
    record = world.http.requests()[0]  # type: ignore[union-attr]
    assert (record.status, record.bytes_sent, record.fault) == (206, 500, "truncate")


def test_gdal_sees_body_faults_as_read_errors(world: OfflineWorld) -> None:
    env = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "0"}
    with (
        world.faulted(cog=FaultPlan(truncate=1.0)),
        pytest.raises(RasterioIOError),
        rasterio.Env(**env),
        rasterio.open(href(world, "B05", scene=1)) as ds,
    ):
        ds.read(1)
    assert world.http.fault_count("truncate") >= 1  # type: ignore[union-attr]


def test_gdal_retries_503_by_itself(world: OfflineWorld) -> None:
    env = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "0.01",
    }
    assert world.manifest is not None
    local = world.manifest.band_path(world.items[1].id, "B06")
    with (
        world.faulted(cog=FaultPlan(status_503=1.0, max_faults=2, retry_after=None)),
        rasterio.Env(**env),
        rasterio.open(href(world, "B06", scene=1)) as ds,
    ):
        remote = ds.read(1)
    with rasterio.open(local) as ds:
        assert np.array_equal(remote, ds.read(1))
    assert world.http.stats()[key(world, "B06", 1)].statuses[503] == 2  # type: ignore


def test_latency_is_added_to_every_matching_request(world: OfflineWorld) -> None:
    world.set_faults(cog=FaultPlan(latency_s=0.3, path_glob="*/B04.tif"))
    start = time.monotonic()
    assert get(world, key(world)).read()
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    assert get(world, key(world, "B03")).read()
    assert time.monotonic() - start < 0.3
    assert world.http.fault_count() == 0  # type: ignore[union-attr]  (latency is no fault)


def _statuses(world: OfflineWorld, count: int) -> list[int]:
    assert world.http is not None
    conn = http.client.HTTPConnection(world.http.host, world.http.port, timeout=10)
    statuses = []
    try:
        for _ in range(count):
            conn.request("HEAD", "/" + key(world))
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    return statuses


def test_fractions_are_respected_and_seeded(world: OfflineWorld) -> None:
    world.set_faults(cog=FaultPlan(status_503=0.25, status_429=0.1, seed=7))
    first = _statuses(world, 400)
    counts = Counter(first)
    assert counts[503] / 400 == pytest.approx(0.25, abs=0.07)
    assert counts[429] / 400 == pytest.approx(0.1, abs=0.05)
    assert world.http.stats()[key(world)].statuses == dict(counts)  # type: ignore[union-attr]
    world.set_faults(cog=FaultPlan(status_503=0.25, status_429=0.1, seed=7))  # RNG restarts
    assert _statuses(world, 400) == first
    world.set_faults(cog=FaultPlan(status_503=0.25, status_429=0.1, seed=8))
    assert _statuses(world, 400) != first


def test_path_glob_and_max_faults_restrict_the_faults(
    world: OfflineWorld, session: requests.Session
) -> None:
    flaky = world.items[1].id
    world.set_faults(cog=FaultPlan(status_503=1.0, path_glob=f"{flaky}/*", max_faults=2))
    assert session.get(href(world, "B04", scene=0), timeout=5).status_code == 200
    got = [session.head(href(world, b, scene=1), timeout=5).status_code for b in ("B04", "B05")]
    got += [session.head(href(world, "B04", scene=1), timeout=5).status_code]
    assert got == [503, 503, 200]
    assert world.http.fault_count() == 2  # type: ignore[union-attr]


# --- The STAC API path ----------------------------------------------------------------------


def test_stac_api_faults_through_the_proxy(world: OfflineWorld, session: requests.Session) -> None:
    world.set_faults(stac=FaultPlan(status_503=1.0, retry_after=1, path_glob="search"))
    response = session.post(f"{world.stac_url}/search", json={"limit": 1}, timeout=5)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert session.get(f"{world.stac_url}/collections", timeout=5).status_code == 200
    world.set_faults(stac=FaultPlan(truncate=1.0))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        session.post(f"{world.stac_url}/search", json={"limit": 1}, timeout=5)
    world.set_faults(stac=FaultPlan(reset_mid_body=1.0))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="reset by peer"):
        session.get(f"{world.stac_url}/collections/sentinel-2-l2a", timeout=5)
    stats = world.stac_http.stats()  # type: ignore[union-attr]
    assert stats["search"].faults == {"status_503": 1, "truncate": 1}
    assert stats["collections/sentinel-2-l2a"].faults == {"reset_mid_body": 1}
    assert world.http.requests() == []  # type: ignore[union-attr]  (the COG path untouched)


def test_stac_paging_through_the_proxy_and_pystac_client_sees_faults(
    world: OfflineWorld,
) -> None:
    client = pystac_client.Client.open(world.stac_url)
    pages = list(client.search(collections=["sentinel-2-l2a"], limit=1).pages())
    assert [i.id for page in pages for i in page] == [i.id for i in world.items]
    assert world.stac_http.stats()["search"].statuses == {200: 2}  # type: ignore[union-attr]
    with (
        world.faulted(stac=FaultPlan(status_429=1.0, path_glob="search", retry_after=None)),
        pytest.raises(pystac_client.exceptions.APIError),
    ):
        list(client.search(collections=["sentinel-2-l2a"], limit=1).pages())


# --- Switching faults -----------------------------------------------------------------------


def test_faulted_restores_the_previous_plans_also_after_an_error(world: OfflineWorld) -> None:
    base = FaultPlan(latency_s=0.01)
    world.set_faults(cog=base)
    outage = FaultPlan(status_503=0.2, seed=1)
    with pytest.raises(RuntimeError, match="inside"), world.faulted(cog=outage):
        assert world.faults() == {"cog": outage, "stac": None}
        with world.faulted(stac=FaultPlan(truncate=1.0)):
            assert world.faults()["cog"] == outage
        assert world.faults()["stac"] is None
        raise RuntimeError("inside")
    assert world.faults() == {"cog": base, "stac": None}
    world.set_faults(stac=FaultPlan(status_429=0.5))  # an omitted server keeps its plan
    assert world.faults() == {"cog": base, "stac": FaultPlan(status_429=0.5)}


def test_only_fault_plans_reach_the_server(world: OfflineWorld) -> None:
    class Hook:
        def intercept(self, *args: object) -> None:
            return None

    with pytest.raises(TypeError, match="not a FaultPlan"):
        world.http.faults = Hook()  # type: ignore[union-attr,assignment]
    assert world.faults()["cog"] is None
