"""A one-year monthly ``backfill`` of a small area beside ``scenestore ingest`` of the same range.

One run, against one offline world (a year of tiny scenes, one every 3 days over three MGRS
tiles; the box covers part of one tile, so a third of them match):

* ingest   - ``scenestore ingest`` over the whole year in one go, in a fresh process;
* backfill - the ``backfill`` flow over the same year in 12 monthly windows, in a fresh
             process, against a ``prefect server`` started for it (SQLite, its own
             PREFECT_HOME) that has served one run before: an untimed one-week backfill
             into another store, in a process of its own, as a server that has been up has
             (``--cold-server``: none; a fresh server builds each API route on its first
             request, up to 0.5 s a route). ``--mode subflows`` (the default) runs the
             windows in that process;
             ``--mode deployments`` also creates the work pool, deploys deployments/ and starts a
             worker, and each window is a run of ``ingest/on-demand`` on that worker.

Each writes into a fresh store. With ``--pairs N`` (default 3) the two run alternately N times
(ingest, backfill, ingest, backfill...; each backfill on a server of its own), and the ratio
given is the median of the pairs' ratios: the speed of a shared machine drifts by 20 % within
minutes, more than one pair of runs can tell apart. Printed side by side: wall time of each
process (imports included), the time of the work itself (the search and downloads, or the flow
call), and the Prefect API calls the backfill process made (HTTP requests to the API, counted
in the process; with ``--mode deployments`` the worker's and the window runs' own calls are not
included). "run reads" are its reads of flow runs: the polls in deployments mode (in subflows
mode, Prefect's own look-up of each subflow run). The last line is one JSON object with the figures.

    uv run --frozen python scripts/bench_backfill.py                  # subflows (default)
    uv run --frozen python scripts/bench_backfill.py --pairs 5        # median of 5 pairs
    uv run --frozen python scripts/bench_backfill.py --mode deployments
    uv run --frozen python scripts/bench_backfill.py --cold-server    # a server fresh from start
    uv run --frozen python scripts/bench_backfill.py --windows-in-flight 2   # vs the default 1
    uv run --frozen python scripts/bench_backfill.py --options '{"quicklooks": false}'
    uv run --frozen python scripts/bench_backfill.py --profile /tmp/stacks.txt  # all threads
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
#: One scene every 3 days from 2024-06-01 for a year (the world's plan).
SCENES = 122
START = date(2024, 6, 1)
END = date(2025, 5, 31)
BANDS = ["B02", "B03", "B04", "B08", "SCL"]


def small_box(world: Any) -> dict[str, float]:
    """A box inside the footprint of the world's first scene (so one tile's scenes match)."""
    west, south, east, north = world.items[0].bbox
    dx, dy = (east - west) / 4, (north - south) / 4
    return {"west": west + dx, "south": south + dy, "east": east - dx, "north": north - dy}


def run_ingest(world: Any, bbox: dict[str, float], store: Path) -> dict[str, Any]:
    """``scenestore ingest`` over the year in a fresh process; wall time and its summary."""
    exe = Path(sys.executable).parent / "scenestore"
    box = ",".join(str(bbox[k]) for k in ("west", "south", "east", "north"))
    cmd = [str(exe), "ingest", "--store", str(store), "--stac-url", world.stac_url,
           "--bbox", box, "--start", START.isoformat(), "--end", END.isoformat(),
           "--bands", ",".join(BANDS)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"scenestore ingest failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, "output": proc.stdout.strip().splitlines()[-1:]}


def run_backfill(world: Any, bbox: dict[str, float], store: Path, mode: str,
                 tmp: Path, profile: str | None = None,
                 in_flight: int | None = None, options: str | None = None,
                 cold_server: bool = False) -> dict[str, Any]:
    """The backfill flow in a fresh process against a ``prefect server`` started for it.

    Unless ``cold_server``, a one-week backfill into another store runs first, in a process
    of its own, so the timed process meets a server that has served a run before.
    """
    sys.path[:0] = [str(ROOT / "tests" / "flows")]
    from prefect_server import running_server

    with running_server(tmp) as server:
        if mode == "deployments":
            server.deploy_with_worker(pool_from_cli=False)
        cmd = [sys.executable, __file__, "--variant", "backfill", "--mode", mode,
               "--store", str(store), "--stac-url", world.stac_url, "--bbox", json.dumps(bbox)]
        if profile:
            cmd += ["--profile", str(Path(profile).resolve())]
        if in_flight:
            cmd += ["--windows-in-flight", str(in_flight)]
        if options:
            cmd += ["--options", options]
        if mode == "subflows" and not cold_server:
            # The server has served a run before, as a running server has (deployments mode:
            # the deploy and the worker's polls). A fresh one builds each API route on its
            # first request, up to 0.5 s a route; that is start-up, not the backfill's cost.
            subprocess.run([*cmd, "--warm-server"], capture_output=True, env=server.env,
                           cwd=ROOT, check=True)
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=server.env, cwd=ROOT,
                              check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"backfill failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}\n{server.tail()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def _count_api_calls(api_url: str) -> Counter[str]:
    """Count this process's HTTP requests to the Prefect API, by ``METHOD /path``."""
    import httpx

    calls: Counter[str] = Counter()

    def key(request: httpx.Request) -> str | None:
        url = str(request.url)
        if not url.startswith(api_url):
            return None
        path = url[len(api_url):].split("?", 1)[0]
        # Collapse ids so the counter groups calls by endpoint.
        parts = ["{id}" if len(p) == 36 and p.count("-") == 4 else p for p in path.split("/")]
        return f"{request.method} {'/'.join(parts)}"

    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if (name := key(request)) is not None:
            calls[name] += 1
        return sync_send(self, request, **kwargs)

    async def asend(self: httpx.AsyncClient, request: httpx.Request,
                    **kwargs: Any) -> httpx.Response:
        if (name := key(request)) is not None:
            calls[name] += 1
        return await async_send(self, request, **kwargs)

    httpx.Client.send = send  # type: ignore[method-assign]
    httpx.AsyncClient.send = asend  # type: ignore[method-assign]
    return calls


def variant_backfill(args: argparse.Namespace) -> None:
    """In the child process: run the flow, print its figures as one JSON line."""
    sys.path.insert(0, str(ROOT))
    calls = _count_api_calls(os.environ["PREFECT_API_URL"])
    from flows.backfill import backfill

    if args.warm_server:  # not timed: the server's first requests (see run_backfill)
        backfill(store=args.store + "-warm", start=START, end=START + timedelta(days=6),
                 bbox=json.loads(args.bbox), bands=BANDS, stac_url=args.stac_url,
                 mode=args.mode, return_state=True)
        return
    started = time.perf_counter()
    extra: dict[str, Any] = {"options": json.loads(args.options)} if args.options else {}
    if args.windows_in_flight:
        extra["max_windows_in_flight"] = args.windows_in_flight
    state = backfill(
        store=args.store, start=START, end=END, bbox=json.loads(args.bbox), bands=BANDS,
        stac_url=args.stac_url, mode=args.mode, return_state=True, **extra,
    )
    flow_s = time.perf_counter() - started
    if not state.is_completed():
        raise SystemExit(f"backfill ended {state.name}: {state.message}")
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # the batched log posts belong to the run's cost
    # Reads of flow runs: the polls in deployments mode (in subflows mode Prefect's own
    # look-up of each subflow run, one per window).
    reads = sum(n for k, n in calls.items() if k == "POST /flow_runs/filter")
    print(json.dumps({"flow_s": flow_s, "api_calls": sum(calls.values()), "run_reads": reads,
                      "windows": len(state.result()["windows"]),
                      "calls_by_endpoint": dict(calls.most_common())}))


@contextmanager
def _sampling(out: Path, interval: float = 0.005) -> Iterator[None]:
    """Sample every thread's stack (wall clock, like py-spy) and write the hottest frames.

    cProfile sees only the main thread; the windows and the scene tasks run in others.
    ``out`` gets inclusive sample counts per function and the most frequent stacks.
    """
    import threading
    import traceback

    inclusive: Counter[str] = Counter()
    stacks: Counter[str] = Counter()
    stop = threading.Event()
    me = threading.get_ident()
    samples = 0

    def sample() -> None:
        nonlocal samples
        while not stop.wait(interval):
            samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                names = [f"{Path(f.filename).name}:{f.name}"
                         for f in traceback.extract_stack(frame)]
                for name in set(names):
                    inclusive[name] += 1
                stacks[" > ".join(names[-12:])] += 1

    me_thread = threading.Thread(target=sample, daemon=True)
    me_thread.start()
    me = me_thread.ident or 0
    try:
        yield
    finally:
        stop.set()
        me_thread.join()
        lines = [f"{samples} samples every {interval * 1000:.0f} ms (all threads)", "",
                 "inclusive samples per function:"]
        lines += [f"{n:8d}  {name}" for name, n in inclusive.most_common(150)]
        lines += ["", "stacks (last 12 frames):"]
        lines += [f"{n:8d}  {stack}" for stack, n in stacks.most_common(60)]
        out.write_text("\n".join(lines) + "\n")


def stored_scenes(store: Path) -> int:
    """Scenes in a store (directories of scenes)."""
    return sum(1 for _ in store.glob("*.zarr")) if store.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("subflows", "deployments"), default="subflows",
                        help="how the backfill runs its windows")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--warm-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--stac-url", help=argparse.SUPPRESS)
    parser.add_argument("--bbox", help=argparse.SUPPRESS)
    parser.add_argument("--windows-in-flight", type=int, default=None, metavar="N",
                        help="the backfill's max_windows_in_flight (the flow's default if unset)")
    parser.add_argument("--options", metavar="JSON",
                        help='the backfill\'s run options, e.g. \'{"quicklooks": false}\'')
    parser.add_argument("--cold-server", action="store_true",
                        help="time the backfill on a server that has served nothing yet "
                             "(by default a one-week backfill runs on it first, untimed)")
    parser.add_argument("--pairs", type=int, default=3, metavar="N",
                        help="ingest/backfill pairs run alternately; the median ratio is given")
    parser.add_argument("--profile", metavar="FILE",
                        help="also sample every thread's stack in the backfill process every "
                             "5 ms and write the hottest functions and stacks to FILE")
    args = parser.parse_args()
    if args.variant == "backfill":
        if args.profile:
            with _sampling(Path(args.profile)):
                variant_backfill(args)
        else:
            variant_backfill(args)
        return

    from scenestore_world import OfflineWorld

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    BENCH_DIR.mkdir(exist_ok=True)
    world_dir = BENCH_DIR / f"world-tiny-{SCENES}"
    print(f"Offline world: {SCENES} tiny scenes in {world_dir} (generated once, then cached)")
    with (
        OfflineWorld(world_dir, scenes=SCENES, size="tiny", seed=7) as world,
        tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="backfill-") as tmp_dir,
    ):
        tmp = Path(tmp_dir)
        bbox = small_box(world)
        last = START + timedelta(days=3 * (SCENES - 1))
        print(f"Range {START}..{END} (scenes to {last}), box {bbox}, bands {','.join(BANDS)}")
        pairs = []
        for n in range(max(1, args.pairs)):
            run = tmp / f"pair-{n}"
            (run / "prefect").mkdir(parents=True)
            ingest = run_ingest(world, bbox, run / "ingest-store")
            backfill = run_backfill(world, bbox, run / "backfill-store", args.mode,
                                    run / "prefect", args.profile, args.windows_in_flight,
                                    args.options, args.cold_server)
            scenes = {name: stored_scenes(run / f"{name}-store") for name in ("ingest", "backfill")}
            if scenes["ingest"] != scenes["backfill"] or not scenes["ingest"]:
                raise SystemExit(f"the two stores differ: {scenes}")
            pairs.append((ingest, backfill))
            print(f"pair {n + 1}: ingest {ingest['wall_s']:.1f} s, backfill "
                  f"{backfill['wall_s']:.1f} s (flow {backfill['flow_s']:.1f} s): "
                  f"{backfill['wall_s'] / ingest['wall_s']:.2f}x", flush=True)
    ratios = sorted(b["wall_s"] / i["wall_s"] for i, b in pairs)
    ratio = statistics.median(ratios)
    backfill = pairs[-1][1]  # its window count and calls by endpoint are printed
    med = {key: statistics.median(b[key] for _, b in pairs)
           for key in ("wall_s", "flow_s", "api_calls", "run_reads")}
    ingest_wall = statistics.median(i["wall_s"] for i, _ in pairs)
    # Deployments mode: the deploy and the worker have used the server before the backfill.
    server = "cold" if args.cold_server and args.mode == "subflows" else "warm"
    print(f"\nmedians of {len(pairs)} pairs{'':<8}{'wall s':>9}{'flow s':>9}{'API calls':>11}"
          f"{'run reads':>11}")
    print(f"{'scenestore ingest':<26}{ingest_wall:>9.1f}{'':>9}{'-':>11}{'-':>11}")
    print(f"{'backfill (' + args.mode + ', ' + server + ')':<26}{med['wall_s']:>9.1f}"
          f"{med['flow_s']:>9.1f}{med['api_calls']:>11.0f}{med['run_reads']:>11.0f}")
    print(f"\n{scenes['ingest']} scenes stored by each, {backfill['windows']} windows; "
          f"backfill / ingest: {ratio:.2f}x, median of {', '.join(f'{r:.2f}' for r in ratios)}"
          " (target: 2x or less)")
    print(f"API calls by endpoint (last pair): {backfill['calls_by_endpoint']}")
    print(json.dumps({
        "mode": args.mode, "scenes": scenes["ingest"], "windows": backfill["windows"],
        "pairs": len(pairs), "server": server,
        "ingest_wall_s": round(ingest_wall, 2),
        "backfill_wall_s": round(med["wall_s"], 2),
        "backfill_flow_s": round(med["flow_s"], 2),
        "backfill_vs_ingest": round(ratio, 2),
        "backfill_vs_ingest_each": [round(r, 2) for r in ratios],
        "backfill_api_calls": round(med["api_calls"]),
        "backfill_run_reads": round(med["run_reads"]),
    }))


if __name__ == "__main__":
    main()
