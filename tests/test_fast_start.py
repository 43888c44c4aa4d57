"""Commands that read no pixels start without the pixel stack (issue #16, point 5).

Each command runs in its own interpreter, as users start it; at exit the process prints which
of dask, odc (odc.stac, odc.geo, odc.loader) and rasterio it imported. Behaviour only: the
start-up times are measured by ``scripts/bench_start.py``, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Top-level packages a command that reads no pixels must not import.
PIXEL_STACK = ("dask", "odc", "rasterio")

# Runs the CLI as `python -m scenestore.cli` does, then reports the pixel-stack modules loaded
# by then (atexit: also after typer's SystemExit, whatever the exit code).
PROBE = """
import atexit, json, sys
def report():
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"dask", "odc", "rasterio"})
    sys.stderr.write("LOADED=" + json.dumps(loaded) + "\\n")
atexit.register(report)
sys.argv = ["scenestore", *sys.argv[1:]]
from scenestore.cli import app
app()
"""

ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "SCENESTORE_RETRY_BACKOFF": "0.05"}


def loaded_by(*args: str) -> tuple[list[str], subprocess.CompletedProcess]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("LOADED=")]
    assert lines, f"exit {proc.returncode}, no report\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("LOADED=") :]), proc


@pytest.fixture(scope="module")
def small_store(world, tmp_path_factory):
    """A store holding band B02 of two scenes."""
    from scenestore import StacStoreManager

    store = tmp_path_factory.mktemp("fast") / "store"
    manager = StacStoreManager(["B02"], store, stac_url=world.stac_url)
    for item in world.items[:2]:
        manager.download_and_store(item)
    return store


def commands(world, store) -> dict[str, list[str]]:
    first, second = (f"es-l2a_{item.id}" for item in world.items[:2])
    w, s, e, n = world.items[0].bbox
    return {
        "help": ["--help"],
        "ls": ["ls", "--store", str(store)],
        "ls --json": ["ls", "--store", str(store), "--json"],
        "info": ["info", "--store", str(store), first],
        "verify": ["verify", "--store", str(store)],
        "rm (dry run)": ["rm", "--store", str(store), first],
        "rm --yes": ["rm", "--store", str(store), second, "--yes"],
        "search": [
            "search",
            "--stac-url",
            world.stac_url,
            "--bbox",
            f"{w},{s},{e},{n}",
            "--start",
            "2024-01-01",
            "--end",
            "2025-12-31",
        ],
    }


@pytest.mark.parametrize(
    "name", ["help", "ls", "ls --json", "info", "verify", "rm (dry run)", "rm --yes", "search"]
)
def test_commands_that_read_no_pixels_skip_the_pixel_stack(world, small_store, name):
    loaded, proc = loaded_by(*commands(world, small_store)[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert loaded == [], f"scenestore {name} imported {loaded}"


def test_ingest_does_load_the_pixel_stack(world, tmp_path):
    """The probe sees the imports: an ingest, which reads pixels, reports all three."""
    w, s, e, n = world.items[0].bbox
    loaded, proc = loaded_by(
        "ingest",
        "--store",
        str(tmp_path / "store"),
        "--stac-url",
        world.stac_url,
        "--bbox",
        f"{w},{s},{e},{n}",
        "--start",
        "2024-01-01",
        "--end",
        "2025-12-31",
        "--bands",
        "B02",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert loaded == sorted(PIXEL_STACK)
