"""The command line as a user runs it: real processes, real world, one-line errors."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: Retries wait 50 ms, not 1 s (SCENESTORE_RETRY_BACKOFF): the tests check what is retried.
ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "SECRET_CANARY": "never-printed",
       "SCENESTORE_RETRY_BACKOFF": "0.05"}


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "scenestore.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
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


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path of the store but its lock files, with size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if ".locks" not in p.relative_to(root).parts
    }


@pytest.fixture(scope="module")
def stocked(world, tmp_path_factory):
    """A store holding band B02 of the first scene, and files for the bad inputs."""
    from scenestore import StacStoreManager

    root = tmp_path_factory.mktemp("cases")
    store = root / "store"
    StacStoreManager(["B02"], store, stac_url=world.stac_url).download_and_store(world.items[0])
    item = world.items[0].to_dict()
    (root / "garbage.geojson").write_text("{not json")
    (root / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (root / "notitem.json").write_text('{"type": "FeatureCollection", "features": []}')
    no_asset = json.loads(json.dumps(item))
    del no_asset["assets"]["green"]
    (root / "noasset.json").write_text(json.dumps(no_asset))
    non_utm = json.loads(json.dumps(item))
    non_utm["properties"].pop("proj:epsg", None)
    non_utm["properties"]["proj:code"] = "EPSG:3413"
    (root / "nonutm.json").write_text(json.dumps(non_utm))
    shifted = json.loads(json.dumps(item))
    for asset in shifted["assets"].values():
        if "proj:transform" in asset:
            asset["proj:transform"][2] += 60  # whole pixels at 10, 20 and 60 m
    (root / "shifted.json").write_text(json.dumps(shifted))
    (root / "afile").write_text("not a directory")
    (root / "empty.txt").write_text("# keep nothing\n")
    return root


def bad_cases(world_url: str) -> list[tuple[str, list[str], str]]:
    search = ["--bbox", "0,0,1,1", "--start", "2024-01-01", "--end", "2024-02-01"]
    ingest = ["ingest", "--store", "{store}", "--stac-url", world_url]
    scene = "es-l2a_{first}"
    return [
        ("unknown band", [*ingest, *search, "--bands", "B13"], "Unknown band 'B13'"),
        ("empty band list", [*ingest, *search, "--bands", ","], "Empty band list"),
        ("identifier ../x", ["info", "--store", "{store}", "../x"], "'../x' is not safe"),
        ("identifier a/b", ["open", "--store", "{store}", "a/b"], "'a/b' is not safe"),
        ("empty identifier", ["info", "--store", "{store}", ""], "'' is empty"),
        (
            "invalid GeoJSON",
            [
                "search",
                "--aoi",
                "{cases}/garbage.geojson",
                "--start",
                "2024-01-01",
                "--end",
                "2024-02-01",
            ],
            "is not valid JSON",
        ),
        (
            "GeoJSON without features",
            [
                "search",
                "--aoi",
                "{cases}/empty.geojson",
                "--start",
                "2024-01-01",
                "--end",
                "2024-02-01",
            ],
            "not valid GeoJSON",
        ),
        (
            "missing AOI file",
            ["search", "--aoi", "/no/such.geojson", "--start", "2024-01-01", "--end", "2024-02-01"],
            "Cannot read AOI file",
        ),
        (
            "bbox W = E (empty)",
            ["search", "--bbox", "1,0,1,1", "--start", "2024-01-01", "--end", "2024-02-01"],
            "empty (W = E",
        ),
        (
            "bbox of 3 numbers",
            ["search", "--bbox", "0,0,1", "--start", "2024-01-01", "--end", "2024-02-01"],
            "3 numbers; expected four",
        ),
        (
            "bbox off the globe",
            ["search", "--bbox", "0,0,1,95", "--start", "2024-01-01", "--end", "2024-02-01"],
            "outside lon -180..180",
        ),
        (
            "end before start",
            ["search", "--bbox", "0,0,1,1", "--start", "2024-02-01", "--end", "2024-01-01"],
            "before start date",
        ),
        (
            "malformed date",
            ["search", "--bbox", "0,0,1,1", "--start", "2024-13-01", "--end", "2024-02-01"],
            "Invalid start date '2024-13-01'",
        ),
        (
            "missing end date",
            [*ingest, "--bbox", "0,0,1,1", "--start", "2024-01-01"],
            "Missing --end",
        ),
        ("cloud cover above 100", ["search", *search, "--max-cloud", "150"], "outside 0-100"),
        ("cloud cover below 0", ["search", *search, "--max-cloud", "-5"], "outside 0-100"),
        (
            "unknown provider",
            ["search", *search, "--profile", "nope"],
            "Unknown provider profile 'nope'",
        ),
        # An unreachable STAC API is a source failure after retries (exit 1): see
        # tests/test_edges_cli.py::test_an_unreachable_stac_api_is_retried_then_one_line_exit_1.
        ("invalid MGRS tile", ["search", *search, "--tiles", "XYZ"], "Invalid MGRS tile 'XYZ'"),
        (
            "item without the asset of a band",
            ["ingest", "--store", "{store}", "--item", "{cases}/noasset.json", "--bands", "B03"],
            "has no asset 'green' for band B03",
        ),
        (
            "item in a non-UTM CRS",
            ["ingest", "--store", "{store}", "--item", "{cases}/nonutm.json"],
            "EPSG:3413; expected a WGS 84 UTM",
        ),
        (
            "item file that is no item",
            ["ingest", "--store", "{store}", "--item", "{cases}/notitem.json"],
            "is not a STAC item",
        ),
        (
            "store path that is a file",
            [
                "ingest",
                "--store",
                "{cases}/afile",
                *search[:2],
                "--start",
                "2024-01-01",
                "--end",
                "2024-02-01",
                "--stac-url",
                world_url,
            ],
            "is a file",
        ),
        (
            "offline open of a missing scene",
            ["open", "--store", "{store}", "es-l2a_nope"],
            "'es-l2a_nope' is not in the store",
        ),
        (
            "offline open of an incomplete scene",
            ["open", "--store", "{store}", scene, "--bands", "B02,B03"],
            "lacks bands ['B03']",
        ),
        ("ls of a missing store", ["ls", "--store", "{store}/missing"], "does not exist"),
        ("scenes in flight below 1", [*ingest, *search, "--parallel", "0"], "--parallel 0"),
        ("unknown world size", ["world", "--size", "huge"], "Unknown world size 'huge'"),
        (
            "--item mixed with a search",
            ["ingest", "--store", "{store}", "--item", "{cases}/noasset.json", "--bbox", "0,0,1,1"],
            "either --item files or a search",
        ),
        (
            "verify of a scene not stored",
            ["verify", "--store", "{store}", "es-l2a_nope"],
            "'es-l2a_nope' is not in the store",
        ),
        (
            "rm of a scene not stored (with one that is)",
            ["rm", "--store", "{store}", scene, "es-l2a_nope", "--yes"],
            "'es-l2a_nope' is not in the store",
        ),
        ("rm of an unsafe identifier", ["rm", "--store", "{store}", "../x"], "'../x' is not safe"),
        ("rm --wait below 0", ["rm", "--store", "{store}", scene, "--wait", "-1", "--yes"],
         "--wait -1 is negative"),
        (
            "prune with a malformed date",
            ["prune", "--store", "{store}", "--before", "2024-13-01", "--yes"],
            "Invalid --before date '2024-13-01'",
        ),
        (
            "prune with a missing keep list",
            ["prune", "--store", "{store}", "--not-in", "/no/such.txt", "--yes"],
            "Cannot read id file '/no/such.txt'",
        ),
        (
            "prune with an empty keep list",
            ["prune", "--store", "{store}", "--not-in", "{cases}/empty.txt", "--yes"],
            "names no scene, so every scene would be pruned",
        ),
        (
            "prune without a selector",
            ["prune", "--store", "{store}", "--yes"],
            "prune got no selection",
        ),
        (
            "prune with both selectors",
            ["prune", "--store", "{store}", "--before", "2030-01-01", "--not-in",
             "{cases}/empty.txt", "--yes"],
            "prune got --before and --not-in",
        ),
        ("prune of a missing store", ["prune", "--store", "{store}/missing", "--before",
                                      "2030-01-01"], "does not exist"),
        (
            "quicklook of a scene without B04/B03",
            ["quicklook", "--store", "{store}", scene, "--out", "{store}/../q.png"],
            "lacks bands ['B04', 'B03'] for a true-colour quicklook",
        ),
        (
            "quicklook of size 0",
            ["quicklook", "--store", "{store}", scene, "--out", "{store}/../q.png", "--size", "0"],
            "Quicklook size 0 is below 1",
        ),
        (
            "catalog over a directory of other files",
            ["catalog", "--store", "{store}", "--out", "{cases}"],
            "holds files but no catalog.json",
        ),
        (
            "catalog written into a scene",
            ["catalog", "--store", "{store}", "--out", "{store}/" + scene + ".zarr/stac"],
            "is the store or inside a scene",
        ),
    ]


CASE_NAMES = [c[0] for c in bad_cases("")]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_user_mistakes_give_one_line_exit_2_and_leave_the_store(world, stocked, tmp_path, name):
    case = {c[0]: c for c in bad_cases(world.stac_url)}[name]
    store = tmp_path / "store"
    shutil.copytree(stocked / "store", store)
    before = snapshot(store)
    fill = {"{store}": str(store), "{cases}": str(stocked), "{first}": world.items[0].id}
    args = [functools.reduce(lambda a, kv: a.replace(*kv), fill.items(), arg) for arg in case[1]]
    proc = run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert case[2] in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(store) == before, "store left exactly as it was"


def test_shifted_item_over_a_stored_scene_fails_alone_and_leaves_it(world, stocked, tmp_path):
    # The shifted item's grid disagrees with its own COG, so the source check refuses it before
    # any pixel is read; the grid check of save_to_store is tested in test_manager.py.
    store = tmp_path / "store"
    shutil.copytree(stocked / "store", store)
    before = snapshot(store)
    proc = run(
        "ingest", "--store", str(store), "--item", str(stocked / "shifted.json"), "--bands", "B03"
    )
    assert proc.returncode == 1
    assert "B03.tif" in proc.stderr and "nothing was committed" in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "failed" in ln]) == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert snapshot(store) == before


def test_read_only_store(world, stocked, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(stocked / "store", store)
    for path in [store, *store.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = snapshot(store)
    cmd = [
        "ingest",
        "--store",
        str(store),
        "--stac-url",
        world.stac_url,
        *aoi_args(world),
        "--bands",
        "B03",
    ]
    # root ignores file modes unless it gives up the capability to override them
    prefix = (
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
            "--",
        ]
        if os.geteuid() == 0
        else []
    )
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "scenestore.cli", *cmd],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    for path in [store, *store.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is not writable" in proc.stderr and str(store) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(store) == before


def test_offline_open_and_verify(world, stocked, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(stocked / "store", store)
    ident = f"es-l2a_{world.items[0].id}"
    out = run("open", "--store", str(store), ident, "--bands", "B02", check=True).stdout
    assert "B02" in out and "uint16" in out
    assert "1 committed bands checked" in run("verify", "--store", str(store), check=True).stdout
    chunk = next((store / f"{ident}.zarr" / "B02" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(chunk.read_bytes()[:-3])  # damage one chunk
    proc = run("verify", "--store", str(store))
    assert proc.returncode == 1 and "checksum" in proc.stdout
    run("verify", "--store", str(store), "--repair", check=True)
    proc = run("open", "--store", str(store), ident, "--bands", "B02")
    assert proc.returncode == 2 and "lacks bands ['B02']" in proc.stderr


def test_secrets_never_reach_the_output_of_a_faulted_run(world, tmp_path):
    """Signed-URL tokens, URL passwords and AWS keys stay out of logs, errors and tables."""
    from scenestore_world import FaultPlan

    # Built at run time so that no secret-shaped literal sits in the repository.
    sig, password, key = "SUPERSECRET" + "SIG0123456789", "hunter2pass", "AKIA" + "ABCDEFGHIJKLMNOP"
    item = world.items[2].to_dict()
    for asset in item["assets"].values():
        asset["href"] += f"?st=2026-11-25&se=2099-01-01&sp=rl&sig={sig}"
    (tmp_path / "signed.json").write_text(json.dumps(item))
    env = {**ENV, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCY"}
    outputs = []
    with world.faulted(cog=FaultPlan(status_503=0.5, reset_mid_body=0.5, seed=3)):
        for args in (
            [
                "-v",
                "ingest",
                "--store",
                str(tmp_path / "s"),
                "--retries",
                "1",
                "--item",
                str(tmp_path / "signed.json"),
            ],
            [
                "-v",
                "search",
                "--stac-url",
                f"http://user:{password}@127.0.0.1:9/?token={sig}",
                *aoi_args(world),
            ],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "scenestore.cli", *args],
                capture_output=True,
                text=True,
                timeout=300,
                env=env,
            )
            assert proc.returncode != 0
            outputs.append(proc.stdout + proc.stderr)
    text = "\n".join(outputs)
    assert "REDACTED" in text and "Cannot reach the STAC API" in text
    for secret in (sig, password, key, "wJalrXUtnFEMIK7MDENGbPxRfiCY"):
        assert secret not in text


def test_world_command_without_the_world_package_says_how_to_install_it(monkeypatch, tmp_path):
    """The library's wheel has no world: `scenestore world` says so in one line, exit 2."""
    from typer.testing import CliRunner

    from scenestore.cli import EXIT_USER_ERROR, app

    monkeypatch.setitem(sys.modules, "scenestore_world", None)  # import fails: not installed
    result = CliRunner().invoke(
        app, ["world", "--dir", str(tmp_path / "w")], env={"COLUMNS": "200"}
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == EXIT_USER_ERROR, result.stderr
    assert lines == [
        "error: The offline world is not installed (package scenestore-world); install it with "
        "`uv sync` in a checkout or `pip install scenestore-world`."
    ]
    assert "Traceback" not in result.output and not (tmp_path / "w").exists()
