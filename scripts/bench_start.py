"""Start-up figures of the CLI (issue #16, point 5): how long a command takes before it works.

Prints, on the offline world (tiny scenes, STAC API and COG server on 127.0.0.1):

- ``scenestore --help``: the whole command, wall time;
- ``scenestore ls`` on a store of 500 scenes: the whole command, wall time;
- ``scenestore ingest``: from process start to its first request at the world's STAC API
  (the server's own receive timestamp, :attr:`RequestRecord.at`);

each as min and median of several runs, then one JSON line (``scripts/bench.py`` reads it).

The 500-scene store is built cheaply: one scene is ingested, then its directory is copied
under new valid identifiers (the store keeps no index, so a copy is a scene).

Usage: ``uv run --frozen python scripts/bench_start.py [--runs 5] [--scenes 500]``.
Timings on a shared 2-core machine are noisy: compare medians of runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The CLI as users start it: a fresh interpreter running the console entry point.
CLI = [sys.executable, "-m", "scenestore.cli"]
ENV = {**os.environ, "COLUMNS": "200"}


def run_cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run one CLI command; return its wall time (whole command) and the finished process."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=300, env=ENV, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"scenestore {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, proc


def figures(samples: list[float]) -> dict[str, float]:
    """Min and median of some timings, in seconds rounded to the millisecond."""
    return {"min_s": round(min(samples), 3), "median_s": round(statistics.median(samples), 3)}


def ingest_args(world: Any, store: Path) -> list[str]:
    """An ingest of the world's first scene (one band) into ``store``."""
    w, s, e, n = world.items[0].bbox
    return [
        "ingest",
        "--store",
        str(store),
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
    ]


def first_request_delay(world: Any, store: Path) -> float:
    """Seconds from starting an ingest process to the STAC API receiving its first request."""
    world.stac_http.reset_stats()
    start = time.time()
    proc = subprocess.run(
        [*CLI, *ingest_args(world, store)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"scenestore ingest failed ({proc.returncode}):\n{proc.stderr}")
    seen = [r.at for r in world.stac_http.requests()]
    if not seen:
        raise SystemExit("The ingest made no request at the STAC API; nothing to time.")
    return min(seen) - start


def fill_store(store: Path, scenes: int) -> list[str]:
    """Copy the store's one scene under ``scenes - 1`` new identifiers; return all identifiers."""
    (source,) = [p for p in store.iterdir() if p.name.endswith(".zarr")]
    stem = source.name[: -len(".zarr")]
    names = [stem]
    for i in range(1, scenes):
        name = f"{stem}-copy{i:04d}"
        shutil.copytree(source, store / f"{name}.zarr", symlinks=True)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    """Measure, print a table and a final JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--scenes", type=int, default=500, help="scenes in the ls store")
    args = parser.parse_args(argv)

    from scenestore_world import OfflineWorld

    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        root = Path(tmp)
        with OfflineWorld(root / "world", scenes=1, size="tiny", seed=0) as world:
            first = [first_request_delay(world, root / f"ingest-{i}") for i in range(args.runs)]
        store = root / "ingest-0"
        names = fill_store(store, args.scenes)
        help_times = [run_cli("--help")[0] for _ in range(args.runs)]
        ls_times = []
        for _ in range(args.runs):
            elapsed, proc = run_cli("ls", "--store", str(store))
            ls_times.append(elapsed)
        missing = [n for n in (names[0], names[-1]) if n not in proc.stdout]
        if missing:
            raise SystemExit(f"scenestore ls did not list {missing}:\n{proc.stdout[:2000]}")

    result = {
        "help": figures(help_times),
        f"ls_{args.scenes}": figures(ls_times),
        "ingest_first_request": figures(first),
        "runs": args.runs,
    }
    print(f"{'command':<34} {'min s':>8} {'median s':>9}")
    rows = [
        ("scenestore --help", help_times),
        (f"scenestore ls ({args.scenes} scenes)", ls_times),
        ("ingest: start -> first request", first),
    ]
    for label, samples in rows:
        f = figures(samples)
        print(f"{label:<34} {f['min_s']:>8.3f} {f['median_s']:>9.3f}")
    print(json.dumps({"bench_start": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
