"""The command line as a user runs it: real processes, real world, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "scenestore.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def aoi_args(world) -> list[str]:
    w, s, e, n = world.items[0].bbox
    return ["--bbox", f"{w},{s},{e},{n}", "--start", "2024-01-01", "--end", "2025-12-31"]


def test_search_prints_a_table(world):
    out = run("search", "--stac-url", world.stac_url, *aoi_args(world), check=True).stdout
    assert world.items[0].id in out and "cloud %" in out


def test_ingest_twice_then_ls_and_info(world, tmp_path):
    store = tmp_path / "store"
    first = run(
        "ingest",
        "--store",
        str(store),
        "--stac-url",
        world.stac_url,
        *aoi_args(world),
        "--bands",
        "B02,B03,B04",
        check=True,
    )
    assert "ingest summary" in first.stdout and "fetched" in first.stdout
    second = run(
        "ingest",
        "--store",
        str(store),
        "--stac-url",
        world.stac_url,
        *aoi_args(world),
        "--bands",
        "B02,B03,B04",
        check=True,
    )
    assert "Nothing to download" in second.stdout and "0 bands" in second.stdout
    ls = run("ls", "--store", str(store), check=True).stdout
    ident = f"es-l2a_{world.items[0].id}"
    assert ident in ls and "B02,B03,B04" in ls, ls
    info = run("info", "--store", str(store), ident, check=True).stdout
    assert "120 x 120 px at 10 m" in info and "EPSG:" in info and "blosc" in info


BAD = [
    (
        [
            "ingest",
            "--store",
            "{store}",
            "--bbox",
            "0,0,1,1",
            "--start",
            "2024-01-01",
            "--end",
            "2024-02-01",
            "--bands",
            "B13",
        ],
        "Unknown band 'B13'",
    ),
    (
        [
            "ingest",
            "--store",
            "{store}",
            "--bbox",
            "0,0,1,1",
            "--start",
            "2024-01-01",
            "--end",
            "2024-02-01",
            "--bands",
            ",",
        ],
        "Empty band list",
    ),
    (["search", "--bbox", "3,0,1,1", "--start", "2024-01-01", "--end", "2024-02-01"], "bbox"),
    (
        ["search", "--bbox", "0,0,1,1", "--start", "2024-02-01", "--end", "2024-01-01"],
        "before start date",
    ),
    (
        [
            "search",
            "--bbox",
            "0,0,1,1",
            "--start",
            "2024-01-01",
            "--end",
            "2024-02-01",
            "--max-cloud",
            "150",
        ],
        "outside 0-100",
    ),
    (
        [
            "search",
            "--bbox",
            "0,0,1,1",
            "--start",
            "2024-01-01",
            "--end",
            "2024-02-01",
            "--profile",
            "nope",
        ],
        "Unknown provider profile 'nope'",
    ),
    (
        ["search", "--aoi", "/no/such.geojson", "--start", "2024-01-01", "--end", "2024-02-01"],
        "Cannot read AOI file",
    ),
    (
        [
            "search",
            "--bbox",
            "0,0,1,1",
            "--start",
            "2024-01-01",
            "--end",
            "2024-02-01",
            "--stac-url",
            "http://127.0.0.1:9/",
        ],
        "Cannot reach the STAC API",
    ),
    (["info", "--store", "{store}", "../x"], "Scene identifier '../x' is not safe"),
    (["ls", "--store", "{store}/missing"], "does not exist"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m for _, m in BAD])
def test_user_mistakes_give_one_line_and_exit_2(tmp_path, args, message):
    store = tmp_path / "store"
    store.mkdir()
    (store / "keep.txt").write_text("unchanged")
    proc = run(*[a.replace("{store}", str(store)) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in store.iterdir()) == ["keep.txt"], "store left as it was"
