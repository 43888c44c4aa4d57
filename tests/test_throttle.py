"""One request budget per provider (issue #15, point 7), against the offline world's throttling.

The world answers 429 with ``Retry-After`` above ``FaultPlan.max_rps`` (a sliding one-second
window over all clients). What a user checks: runs complete, the server saw no 429 while the
budget was below its limit, and a 429 stopped every thread until its ``Retry-After``. Timing is
only asserted where the budget guarantees it (lower bounds, counts per window), never as a
run time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scenestore.errors import InvalidRequestError
from scenestore.profiles import get_profile
from scenestore.search import build_query, search_scenes
from scenestore.throttle import (
    CONCURRENCY_ENV,
    RATE_ENV,
    SHARED_DIR_ENV,
    Limits,
    Throttle,
    budget,
    limits_of,
    reset_budgets,
    retry_after_seconds,
    set_fleet_gate,
)
from scenestore_world import FaultPlan, OfflineWorld
from scenestore_world.traffic import most_in_window

BBOX = "-180,-80,180,80"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineWorld]:
    """A world of its own (these tests throttle it): 3 tiny scenes."""
    with OfflineWorld(tmp_path_factory.mktemp("throttled-world"), scenes=3, seed=5) as w:
        yield w


@pytest.fixture(autouse=True)
def fresh_budgets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test makes its budgets from its own settings, with no cross-process gate."""
    for name in (RATE_ENV, CONCURRENCY_ENV, SHARED_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    reset_budgets()
    previous = set_fleet_gate(None)
    yield
    reset_budgets()
    set_fleet_gate(previous)


@pytest.fixture
def throttled(world: OfflineWorld) -> Iterator[OfflineWorld]:
    """The world with no faults and no counted requests before and after the test."""
    world.set_faults(cog=None, stac=None)
    world.http.reset_stats()  # type: ignore[union-attr]
    world.stac_http.reset_stats()  # type: ignore[union-attr]
    yield world
    world.set_faults(cog=None, stac=None)


def search_all(world: OfflineWorld) -> list[str]:
    query = build_query(start="2024-01-01", end="2025-12-31", bbox=BBOX)
    return [item.id for item in search_scenes(query, stac_url=world.stac_url)]


def in_threads(count: int, work: Any) -> list[Any]:
    """Run ``work()`` in ``count`` threads started together; their results (or errors)."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work()
        except Exception as err:  # the test asserts on it
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


# -- settings -----------------------------------------------------------------------------------


def test_cdse_has_a_budget_by_default_and_the_environment_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert limits_of(get_profile("cdse")) == Limits(rate=4.0, concurrency=4)
    assert limits_of(get_profile("earth-search")) == Limits()
    monkeypatch.setenv(RATE_ENV, "cdse=2.5,earth-search=20")
    monkeypatch.setenv(CONCURRENCY_ENV, "3")
    assert limits_of(get_profile("cdse")) == Limits(rate=2.5, concurrency=3)
    assert limits_of(get_profile("earth-search")) == Limits(rate=20.0, concurrency=3)
    monkeypatch.setenv(RATE_ENV, "none")
    assert limits_of(get_profile("cdse")).rate is None
    monkeypatch.setenv(RATE_ENV, "cdse=fast")
    with pytest.raises(InvalidRequestError, match="SCENESTORE_RATE_LIMIT.*'fast'.*cdse=4"):
        limits_of(get_profile("cdse"))


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == 5.0


# -- the limiter itself -------------------------------------------------------------------------


def test_many_threads_keep_the_rate_and_the_concurrency_cap() -> None:
    throttle = Throttle("test", Limits(rate=40.0, concurrency=3))
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            with throttle.slot(), lock:
                granted.append(time.monotonic())

    in_threads(16, work)
    stats = throttle.stats()
    assert stats.requests == len(granted) == 80
    assert stats.max_in_flight <= 3
    # A token bucket of rate r and size 1 grants at most r + 1 per second; +2 for the
    # scheduling gap between a grant and its timestamp.
    assert most_in_window(granted) <= 40 + 1 + 2


# -- STAC API requests --------------------------------------------------------------------------


def test_threads_searching_at_once_stay_under_the_providers_rate(
    throttled: OfflineWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 threads search at once with a budget of 5/s against a server allowing 8/s: no 429."""
    monkeypatch.setenv(RATE_ENV, "5")
    throttled.set_faults(stac=FaultPlan(max_rps=8))
    expected = sorted(item.id for item in throttled.items)
    results = in_threads(12, lambda: search_all(throttled))
    assert all(sorted(r) == expected for r in results), results
    records = throttled.stac_http.requests()  # type: ignore[union-attr]
    assert [r.status for r in records if r.status == 429] == []
    assert most_in_window([r.at for r in records]) <= 8
    assert budget("earth-search").stats().requests == len(records)


def test_without_a_budget_the_world_throttles_and_the_pauses_still_complete_the_searches(
    throttled: OfflineWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: no rate set, the same threads meet 429s, pause on them and finish."""
    throttled.set_faults(stac=FaultPlan(max_rps=8))
    expected = sorted(item.id for item in throttled.items)
    results = in_threads(12, lambda: search_all(throttled))
    assert all(sorted(r) == expected for r in results), results
    statuses = [r.status for r in throttled.stac_http.requests()]  # type: ignore[union-attr]
    assert statuses.count(429) > 0
    assert budget("earth-search").stats().pauses > 0


def test_a_429_with_retry_after_pauses_every_thread(
    throttled: OfflineWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request is answered 429, Retry-After 2: no thread sends anything for 2 s."""
    monkeypatch.setenv(RATE_ENV, "4")  # the 429 arrives before a second token is due
    throttled.set_faults(stac=FaultPlan(status_429=1.0, max_faults=1, retry_after=2))
    expected = sorted(item.id for item in throttled.items)
    results = in_threads(6, lambda: search_all(throttled))
    assert all(sorted(r) == expected for r in results), results
    records = sorted(throttled.stac_http.requests(), key=lambda r: r.at)  # type: ignore[union-attr]
    first, rest = records[0], records[1:]
    assert first.status == 429
    during_pause = [r for r in rest if r.at < first.at + 2.0]
    assert during_pause == []
    assert budget("earth-search").stats().pauses == 1


# -- two processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ingest_processes_sharing_a_budget_stay_under_the_limit(
    throttled: OfflineWorld, tmp_path: Path
) -> None:
    """Two ``scenestore ingest`` at once, one budget (SCENESTORE_THROTTLE_DIR): both complete.

    The world allows 6 requests/s on each server; the budget is 4 requests/s for both
    processes together. Each process stores every scene into its own store.
    """
    plan = FaultPlan(max_rps=6)
    throttled.set_faults(cog=plan, stac=plan)
    env = {
        **os.environ,
        RATE_ENV: "4",
        SHARED_DIR_ENV: str(tmp_path / "budgets"),
        "COLUMNS": "200",
    }
    command = [
        sys.executable, "-m", "scenestore.cli", "ingest", "--stac-url", throttled.stac_url,
        "--bbox", BBOX, "--start", "2024-01-01", "--end", "2025-12-31", "--bands", "B04,SCL",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*command, "--store", str(tmp_path / f"store{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for name in ("store0", "store1"):
        stored = sorted(p.name for p in (tmp_path / name).iterdir() if p.name.startswith("es-l2a"))
        assert len(stored) == len(throttled.items), (name, stored)
    for server in (throttled.http, throttled.stac_http):
        records = server.requests()  # type: ignore[union-attr]
        assert [r.path for r in records if r.status == 429] == []
        assert most_in_window([r.at for r in records]) <= 6


def test_a_pause_in_one_process_holds_the_others_sharing_the_directory(tmp_path: Path) -> None:
    """Two FileGates on one directory stand for two processes: a pause in one holds both."""
    from scenestore.throttle import FileGate

    one, other = FileGate(tmp_path), FileGate(tmp_path)
    throttle = Throttle("test-shared", Limits(rate=100.0))
    one.pause(throttle, 1.0)
    started = time.monotonic()
    other.acquire(throttle, 1)
    assert time.monotonic() - started >= 0.9
