"""`make bench`: scenestore's ingest beside the original algorithm, a peer and the hardware's limit.

One run prints, side by side, on the same scenes of the offline world (COGs served over real
HTTP on 127.0.0.1 by a separate process):

* baseline   - the original algorithm: eager odc-stac load of all bands, one ``to_zarr`` with
               the original encodings (4096 px chunks, _FillValue 0), an xarray open per
               missing-band check;
* peer       - what a competent user writes instead: lazy ``odc.stac.load`` with dask chunks
               of the edge scenestore stores at 10 m (computed as scenestore computes it, from
               the COGs' tile heights), ``to_zarr(zarr_format=3)`` with scenestore's codec
               (Blosc zstd 3), every band on the 10 m grid, all scenes' writes in one
               ``dask.compute``;
* limit      - the same COG bytes downloaded whole, decoded with rasterio, resampled to 10 m
               (nearest) and written with the same zarr codec in chunks that fit, spread over
               both cores (two processes);
* scenestore - ``StacStoreManager.download_and_store`` of the same scenes (layout 2: 20 m and
               60 m bands at their native resolution);
* s3         - the same, with the store on an S3-compatible server (moto_server on 127.0.0.1,
               started here, in its own process);
* dask       - the ``ingest`` flow's per-scene part (``store-scene`` tasks) on an existing
               Dask cluster: ``dask scheduler`` and two ``dask worker`` processes started here,
               against a Prefect test server, into a local-disk store.

Each variant runs in a fresh process (no shared GDAL cache), its peak RSS sampled over its
whole process tree. For each ingest variant the table also gives what the world's COG server
served it (body bytes and requests, from the server's own request log, reset before the
variant starts: the variants run one after another against the same server) and the MB its
store takes on disk (apparent bytes: the sum of its files' sizes, as ``du -b``; none for the
object store). The last line printed is one JSON object with the figures, among them
``source_bytes_vs_baseline`` (bytes served to scenestore / to the baseline),
``disk_vs_baseline`` (scenestore's store bytes / the baseline's) and ``ingest_vs_peer``
(peer seconds / scenestore seconds: above 1, scenestore is faster).

Then ``scripts/bench_index.py`` (the store index, #17) prints its tables in its own process:
``ls`` of 5,000 and 50,000 stored scenes beside ``ls --scan``, offline search over 50,000
indexed scenes, and what index upkeep adds to an ingest beside ``SCENESTORE_INDEX=off``; its
figures (``ls_5k_s``, ``ls_50k_s``, ``ls_5k_vs_scan``, ``search_50k_ms``,
``index_overhead_pct``...) join the JSON line.

    python scripts/bench.py                           # small scenes (1098 px), a few minutes
    python scripts/bench.py --full                    # one real-size 10980 px tile
    python scripts/bench.py --only peer,scenestore    # some ingest variants, the table only
    python scripts/bench.py --only index              # the store index's figures only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scenestore_world import OfflineWorld

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
ALL_BANDS = [
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
    "SCL",
]
CHECK_SCENES = 500
#: The ingest variants, in the order they run and are printed.
INGEST_VARIANTS = ("baseline", "peer", "limit", "scenestore", "s3", "dask")


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (user + system).

    Beside wall time, the CPU an ingest costs is a figure that other load on the machine
    inflates far less: on 2 cores, wall time alone mostly measures who else is running.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- measuring ------------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run_variant(name: str, args: list[str]) -> dict:
    """Run one variant in a fresh process; return its JSON result plus wall time and peak RSS."""
    cmd = [sys.executable, __file__, "--variant", name, *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=wall, peak_rss_mb=peak / 1e6)
    return result


# -- the variants (each runs in its own process) ---------------------------------------------


def variant_baseline(items: list[dict], store: Path) -> dict:
    """The original algorithm: eager load of every band, one to_zarr per scene."""
    import odc.stac
    import pystac
    from zarr.codecs import BloscCodec

    from scenestore.profiles import PROFILES

    keys = PROFILES["earth-search"].asset_keys
    started, cpu = time.perf_counter(), cpu_seconds()
    for doc in items:
        item = pystac.Item.from_dict(doc)
        ds = odc.stac.load(
            [item],
            bands=[keys[b] for b in ALL_BANDS],
            crs="utm",
            resolution=10,
            resampling="nearest",
        )
        ds = ds.rename({keys[b]: b for b in ALL_BANDS}).isel(time=0).drop_vars("time")
        ds["SCL"] = ds["SCL"].astype("uint8")
        enc = {
            b: {
                "dtype": "uint16",
                "chunks": (4096, 4096),
                "_FillValue": 0,
                "compressors": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
            }
            for b in ALL_BANDS
        }
        enc["SCL"]["dtype"] = "uint8"
        ds.to_zarr(store / f"{item.id}.zarr", encoding=enc, consolidated=False, mode="w")
        del ds
    return {"ingest_s": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu}


def _limit_band(task: tuple[str, str, str, int]) -> int:
    """Download one COG whole, decode, resample to 10 m by repetition, write one zarr array."""
    import urllib.request

    import numpy as np
    import zarr
    from rasterio.io import MemoryFile

    from scenestore.store.codec import band_codec
    from scenestore.store.layout import choose_chunk

    href, target, band, size = task
    with urllib.request.urlopen(href) as resp:
        payload = resp.read()
    with MemoryFile(payload) as mem, mem.open() as src:
        data = src.read(1)
    factor = size // data.shape[0]
    if factor > 1:
        data = np.repeat(np.repeat(data, factor, axis=0), factor, axis=1)
    chunk = choose_chunk(size)
    arr = zarr.create_array(
        store=target,
        name=band,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(chunk, chunk),
        fill_value=0,
        compressors=[band_codec(data.dtype)],  # scenestore's codec
        overwrite=True,
        # No empty-chunk test before each write: zarr's costs ~10 ms per uint16 chunk under
        # numpy 2.4 (see scenestore.store.arrays._IntegerNDBuffer), and a limit pays no such tax.
        config={"write_empty_chunks": True},
    )
    arr[...] = data
    return len(payload)


def variant_peer(items: list[dict], store: Path, chunk: int) -> dict:
    """What a competent user writes instead: lazy odc-stac load in store-aligned dask chunks,
    ``to_zarr`` (zarr v3, Blosc zstd), every scene's write computed in one dask graph."""
    import dask
    import odc.stac
    import pystac

    from scenestore.profiles import PROFILES
    from scenestore.store.codec import band_codec

    keys = PROFILES["earth-search"].asset_keys
    started, cpu = time.perf_counter(), cpu_seconds()
    writes = []
    for doc in items:
        item = pystac.Item.from_dict(doc)
        ds = odc.stac.load(
            [item],
            bands=[keys[b] for b in ALL_BANDS],
            crs="utm",
            resolution=10,
            resampling="nearest",
            # The edge scenestore stores at 10 m: each dask block is one zarr chunk.
            chunks={"x": chunk, "y": chunk},
        )
        ds = ds.rename({keys[b]: b for b in ALL_BANDS}).isel(time=0).drop_vars("time")
        ds["SCL"] = ds["SCL"].astype("uint8")
        enc = {
            b: {
                "dtype": "uint8" if b == "SCL" else "uint16",
                "chunks": (chunk, chunk),
                "_FillValue": 0,
                "compressors": [band_codec("uint8" if b == "SCL" else "uint16")],
            }
            for b in ALL_BANDS
        }
        writes.append(
            ds.to_zarr(
                store / f"{item.id}.zarr",
                encoding=enc,
                zarr_format=3,
                consolidated=False,
                mode="w",
                compute=False,
            )
        )
    # One compute over all scenes: dask's threads keep both cores busy on small scenes too.
    dask.compute(*writes)
    return {"ingest_s": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu}


def variant_limit(items: list[dict], store: Path) -> dict:
    """The same bytes, the same codec, no framework: both cores, two processes."""
    from concurrent.futures import ProcessPoolExecutor

    from scenestore.profiles import PROFILES

    keys = PROFILES["earth-search"].asset_keys
    tasks = []
    for doc in items:
        size = doc["assets"]["red"]["proj:shape"][0]
        for band in ALL_BANDS:
            target = str(store / f"{doc['id']}.zarr")
            tasks.append((doc["assets"][keys[band]]["href"], target, band, size))
    # Largest first so the two processes finish together.
    tasks.sort(key=lambda t: -int(t[3] / {"B01": 6, "B09": 6}.get(t[2], 1)))
    started, cpu = time.perf_counter(), cpu_seconds()
    with ProcessPoolExecutor(max_workers=2) as pool:
        fetched = sum(pool.map(_limit_band, tasks))
    # The pool's processes have exited here, so their CPU is counted as children's.
    return {
        "ingest_s": time.perf_counter() - started,
        "cpu_s": cpu_seconds() - cpu,
        "fetched_bytes": fetched,
    }


def variant_scenestore(items: list[dict], store: Path) -> dict:
    """scenestore's ingest of the same scenes."""
    import odc.stac  # noqa: F401  (imported before the clock starts, as in the baseline)
    import pystac

    from scenestore import StacStoreManager
    from scenestore.ingest import ingest_items

    manager = StacStoreManager(ALL_BANDS, store)
    started, cpu = time.perf_counter(), cpu_seconds()
    results = ingest_items(manager, [pystac.Item.from_dict(doc) for doc in items])
    if any(r.error for r in results):
        raise SystemExit(f"scenestore ingest failed: {[r.error for r in results if r.error]}")
    return {"ingest_s": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu}


def variant_s3(items: list[dict], store: str) -> dict:
    """scenestore's ingest of the same scenes into the object store at ``store`` (s3://)."""
    return variant_scenestore(items, store)


def _warm_worker() -> None:
    """Pay the imports a scene needs before the clock starts, as the local variants do."""
    import flows.tasks  # noqa: F401
    import odc.stac  # noqa: F401
    import prefect.task_engine  # noqa: F401

    import scenestore.stac  # noqa: F401


def variant_dask(items: list[dict], store: Path) -> dict:
    """The flow's per-scene part on a 2-worker Dask cluster (scheduler + workers started here)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # flows/ and the test cluster helper
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from distributed import Client
    from flows.ingest import ingest_items as ingest_flow_items
    from flows.params import RunOptions, make_store_spec
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from dask_cluster import DaskCluster

    @flow(name="bench-dask-ingest")
    def run(docs: list[dict], address: str) -> dict:
        spec = make_store_spec(str(store), ALL_BANDS, stac_url="http://127.0.0.1:9")
        # No quicklooks: the local and S3 runs do not render them either.
        options = RunOptions(max_in_flight=2, dask_address=address, quicklooks=False)
        return ingest_flow_items(docs, spec, options, label="bench")

    with (
        prefect_test_harness(server_startup_timeout=120),
        DaskCluster(workers=2) as cluster,
        Client(cluster.address) as client,
    ):
        client.run(_warm_worker)
        started = time.perf_counter()
        summary = run(items, cluster.address)
        elapsed = time.perf_counter() - started
    if summary.get("failed") or summary.get("stored") != len(items):
        raise SystemExit(f"dask ingest failed: {summary}")
    return {"ingest_s": elapsed}


def variant_incremental(items: list[dict], store: Path) -> dict:
    """4 bands, then all 13: time, and whether any stored chunk of the 4 was rewritten."""
    import pystac

    from scenestore import StacStoreManager

    four = ["B02", "B03", "B04", "B08"]
    # Warm up imports and GDAL on another scene so both timings below are steady-state.
    StacStoreManager(["B01"], store / "warm").download_and_store(pystac.Item.from_dict(items[-1]))
    item = pystac.Item.from_dict(items[0])
    started = time.perf_counter()
    StacStoreManager(four, store).download_and_store(item)
    first = time.perf_counter() - started
    scene = next(store.glob("*.zarr"))
    before = {str(p): p.stat().st_mtime_ns for b in four for p in (scene / b).rglob("*")}
    started = time.perf_counter()
    StacStoreManager(ALL_BANDS, store).download_and_store(item)
    second = time.perf_counter() - started
    after = {str(p): p.stat().st_mtime_ns for b in four for p in (scene / b).rglob("*")}
    started = time.perf_counter()
    StacStoreManager(ALL_BANDS, store / "at-once").download_and_store(item)
    at_once = time.perf_counter() - started
    return {
        "four_s": first,
        "then_13_s": second,
        "at_once_13_s": at_once,
        "rewrote_stored_chunks": before != after,
    }


def variant_open(items: list[dict], store: Path) -> dict:
    """Open a stored scene lazily, then eagerly: times and dtypes."""
    from scenestore import StacStoreManager

    manager = StacStoreManager(ALL_BANDS, store)
    ident = manager.identifier(items[0]["id"])
    manager.open(manager.identifier(items[-1]["id"]))  # first open pays xarray's backend set-up
    times = []
    for _ in range(5):
        started = time.perf_counter()
        lazy = manager.open(ident)
        times.append(time.perf_counter() - started)
    open_ms = sorted(times)[len(times) // 2] * 1000
    is_lazy = all(lazy[b].chunks is not None for b in ALL_BANDS)
    started = time.perf_counter()
    eager = manager.open(ident, eager=True)
    load_s = time.perf_counter() - started
    dtypes = sorted({str(eager[b].dtype) for b in ALL_BANDS})
    return {
        "open_ms": open_ms,
        "lazy": is_lazy,
        "eager_load_s": load_s,
        "eager_dtypes": dtypes,
        "eager_gb": sum(eager[b].nbytes for b in ALL_BANDS) / 1e9,
    }


def variant_integrity(items: list[dict], store: Path) -> dict:
    """What the crc32c chunk checksums cost: writing and reading the stored scene's 13 bands
    with and without them (same Blosc codec, real zarr), and ``open(verify=True)``."""
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    from scenestore import StacStoreManager

    manager = StacStoreManager(ALL_BANDS, store)
    ident = manager.identifier(items[0]["id"])
    scene = store / f"{ident}.zarr"
    data = {b: zarr.open_array(scene / b, mode="r")[...] for b in ALL_BANDS}
    out = Path(tempfile.mkdtemp(dir=store.parent, prefix="integrity-"))
    timing = {}
    for label, extra in (("plain", []), ("crc32c", [Crc32cCodec()])):
        started = time.perf_counter()
        for band, values in data.items():
            meta = json.loads((scene / band / "zarr.json").read_text())
            blosc = BloscCodec.from_dict(next(c for c in meta["codecs"] if c["name"] == "blosc"))
            array = zarr.create_array(
                store=out / label / f"{ident}.zarr" / band,
                shape=values.shape,
                dtype=values.dtype,
                chunks=tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
                fill_value=0,
                compressors=[blosc, *extra],
                zarr_format=3,
            )
            array[...] = values
        timing[f"{label}_write_s"] = time.perf_counter() - started
    reads = {"plain": [], "crc32c": []}
    for _ in range(3):
        for label in reads:
            started = time.perf_counter()
            for band in ALL_BANDS:
                values = zarr.open_array(out / label / f"{ident}.zarr" / band, mode="r")[...]
                assert np.array_equal(values, data[band])
            reads[label].append(time.perf_counter() - started)
    plain_read, crc_read = min(reads["plain"]), min(reads["crc32c"])
    # scenestore's own read path (zarr's crc32c codec plus the CheckedStore's check) beside
    # xarray's plain one, each the best of three after a warm-up open.
    import xarray as xr

    manager.open(ident, eager=True)
    checked, unchecked = [], []
    for _ in range(3):
        started = time.perf_counter()
        manager.open(ident, eager=True)
        checked.append(time.perf_counter() - started)
        started = time.perf_counter()
        xr.open_zarr(scene, consolidated=False, chunks={}, mask_and_scale=False)[ALL_BANDS].load()
        unchecked.append(time.perf_counter() - started)
    checked_read, unchecked_read = min(checked), min(unchecked)
    opens = {False: [], True: []}
    for _ in range(5):
        for verify in opens:
            started = time.perf_counter()
            manager.open(ident, verify=verify)
            opens[verify].append(time.perf_counter() - started)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "crc32c_write_overhead": timing["crc32c_write_s"] / timing["plain_write_s"] - 1,
        "crc32c_read_overhead": crc_read / plain_read - 1,
        "plain_read_s": plain_read,
        "crc32c_read_s": crc_read,
        "checked_open_eager_s": checked_read,
        "unchecked_open_eager_s": unchecked_read,
        "open_ms": sorted(opens[False])[2] * 1000,
        "open_verify_ms": sorted(opens[True])[2] * 1000,
    }


def variant_check(items: list[dict], store: Path, how: str) -> dict:
    """Per-scene cost of the missing-band check over a store of CHECK_SCENES scenes."""
    scenes = sorted(store.glob("*.zarr"))
    if how == "baseline":
        import xarray as xr

        started = time.perf_counter()
        for path in scenes:
            present = set(xr.open_zarr(path, consolidated=False).data_vars)
            _ = [b for b in ALL_BANDS if b not in present]
    else:
        from scenestore import StacStoreManager
        from scenestore.store.layout import identifier_of

        manager = StacStoreManager(ALL_BANDS, store)
        started = time.perf_counter()
        for path in scenes:
            manager.missing_bands(identifier_of(path))
    elapsed = time.perf_counter() - started
    return {"check_ms_per_scene": elapsed * 1000 / len(scenes), "scenes": len(scenes)}


# -- orchestration ---------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    items = json.loads(Path(args.items).read_text())
    store = args.store if args.store.startswith("s3://") else Path(args.store)
    if args.variant.startswith("check-"):
        result = variant_check(items, store, args.variant.split("-", 1)[1])
    elif args.variant == "peer":
        result = variant_peer(items, store, args.chunk)
    else:
        result = globals()[f"variant_{args.variant}"](items, store)
    print(json.dumps(result))


def _source_bytes(world: OfflineWorld, items: list[dict]) -> int:
    from scenestore.profiles import PROFILES

    assert world.manifest is not None  # entered: the world exists
    keys = PROFILES["earth-search"].asset_keys
    total = 0
    for doc in items:
        for band in ALL_BANDS:
            total += world.manifest.band_path(doc["id"], band).stat().st_size
            assert doc["assets"][keys[band]]["href"]
    return total


def _store_chunk(world: OfflineWorld, items: list[dict]) -> int:
    """The chunk edge scenestore stores at 10 m for these scenes (the peer's dask chunks).

    Computed as scenestore computes it (from the COGs' tile heights), but from the world's
    files on disk, so that the server counts no request for it.
    """
    import rasterio

    from scenestore.stac import tile_aligned_chunk

    assert world.manifest is not None  # entered: the world exists
    tiles = set()
    for doc in items:
        for band in ALL_BANDS:
            with rasterio.open(world.manifest.band_path(doc["id"], band)) as src:
                tiles.add(int(src.block_shapes[0][0]))
    return tile_aligned_chunk(int(items[0]["assets"]["red"]["proj:shape"][0]), sorted(tiles))


def _disk_bytes(store: Path) -> int:
    """Apparent bytes of the files under ``store`` (sum of file sizes, like ``du -b``)."""
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def _served(world: OfflineWorld) -> dict:
    """Body bytes and requests the COG server answered since its counters were last reset."""
    assert world.http is not None  # entered: the server runs
    records = world.http.requests()
    return {
        "served_bytes": sum(r.bytes_sent for r in records),
        "requests": len(records),
    }


def _check_store(src_scene: Path, target: Path) -> None:
    """CHECK_SCENES copies of one stored scene (hard links: the check reads metadata only)."""
    target.mkdir(parents=True)
    for i in range(CHECK_SCENES):
        shutil.copytree(src_scene, target / f"es-l2a_copy{i:04d}.zarr", copy_function=os.link)


def run_s3(items_file: Path) -> dict:
    """The s3 variant against a moto_server started (and stopped) for it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from s3server import MotoServer

    saved = dict(os.environ)
    with MotoServer() as server:
        os.environ.update(server.env())  # the variant's process inherits endpoint and keys
        try:
            url = f"s3://{server.bucket}/bench"
            return run_variant("s3", ["--items", str(items_file), "--store", url])
        finally:
            os.environ.clear()
            os.environ.update(saved)


def run_index_bench() -> dict:
    """scripts/bench_index.py in its own process: its tables printed as they come, its JSON
    line returned."""
    script = str(Path(__file__).with_name("bench_index.py"))
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None  # piped
    last = ""
    for line in proc.stdout:
        last = line
        if not line.startswith("{"):
            print(line, end="", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"bench_index.py failed with exit code {proc.returncode}")
    return json.loads(last)


def _cpu(result: dict) -> str:
    """CPU seconds of a variant, or '-' where the work ran in processes it did not start."""
    return f"{result['cpu_s']:.2f}" if "cpu_s" in result else "-"


def _print_table(results: dict[str, dict], chunk: int) -> None:
    """The ingest variants side by side: time, CPU, memory, bytes served and stored."""
    print(
        f"{'variant':<12}{'ingest s':>10}{'wall s':>9}{'cpu s':>8}{'MB/s':>9}{'peak RSS MB':>13}"
        f"{'served MB':>11}{'requests':>10}{'disk MB':>9}"
    )
    for name, r in results.items():
        disk = "-" if r["disk_bytes"] is None else f"{r['disk_bytes'] / 1e6:.1f}"
        print(
            f"{name:<12}{r['ingest_s']:>10.2f}{r['wall_s']:>9.2f}{_cpu(r):>8}"
            f"{r['mb_s']:>9.1f}{r['peak_rss_mb']:>13.0f}"
            f"{r['served_bytes'] / 1e6:>11.1f}{r['requests']:>10}{disk:>9}"
        )
    print(
        f"(served: body bytes the COG server sent the variant's process tree; disk: apparent "
        f"bytes of the files of its store; peer dask chunks {chunk} px)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="one real-size 10980 px tile")
    parser.add_argument("--scenes", type=int, default=None, help="number of scenes")
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="instead: a one-year monthly backfill beside scenestore ingest (bench_backfill.py)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated ingest variants to run (e.g. peer,scenestore): table only; "
        "index: the store index's figures (bench_index.py)",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--items", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backfill:
        script = str(Path(__file__).with_name("bench_backfill.py"))
        os.execv(sys.executable, [sys.executable, script])
    if args.variant:
        _child(args)
        return

    wanted = args.only.split(",") if args.only else list(INGEST_VARIANTS)
    unknown = sorted(set(wanted) - {*INGEST_VARIANTS, "index"})
    if unknown:
        raise SystemExit(
            f"--only: unknown variant(s) {unknown}; pick from {(*INGEST_VARIANTS, 'index')}"
        )
    if wanted == ["index"]:
        print(json.dumps(run_index_bench()))
        return

    from scenestore_world import OfflineWorld

    size = "full" if args.full else "small"
    n = args.scenes or (1 if args.full else 4)
    world_dir = BENCH_DIR / f"world-{size}-{n}"
    print(f"Offline world: {n} {size} scene(s) in {world_dir} (generated once, then cached)")
    with (
        OfflineWorld(world_dir, scenes=n, size=size, seed=7) as world,
        tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="run-") as tmp,
    ):
        items = [item.to_dict(transform_hrefs=False) for item in world.items]
        items_file = Path(tmp) / "items.json"
        items_file.write_text(json.dumps(items))
        source = _source_bytes(world, items)
        px = items[0]["assets"]["red"]["proj:shape"][0]
        print(f"{len(items)} scenes x 13 bands, {px} px at 10 m, {source / 1e6:.1f} MB of COGs\n")

        chunk = _store_chunk(world, items)
        traffic = world.http
        assert traffic is not None  # entered: the server runs

        def run(name: str, store_name: str | None = None, extra: tuple[str, ...] = ()) -> dict:
            store = Path(tmp) / (store_name or name)
            store.mkdir(exist_ok=True)
            result = run_variant(name, ["--items", str(items_file), "--store", str(store), *extra])
            result["mb_s"] = source / 1e6 / result["ingest_s"] if "ingest_s" in result else None
            return result

        def ingest(name: str) -> dict:
            """One ingest variant, with what the COG server served it and what it stored."""
            traffic.reset_stats()
            if name == "s3":
                result = run_s3(items_file)
                result["mb_s"] = source / 1e6 / result["ingest_s"]
            else:
                result = run(name, extra=("--chunk", str(chunk)) if name == "peer" else ())
            result.update(_served(world))
            # An object store's bytes are not files here: no disk figure for s3.
            result["disk_bytes"] = None if name == "s3" else _disk_bytes(Path(tmp) / name)
            return result

        results = {name: ingest(name) for name in INGEST_VARIANTS if name in wanted}
        if "scenestore" in results:
            stored = json.loads(
                next((Path(tmp) / "scenestore").glob("*.zarr/B02/zarr.json")).read_text()
            )
            edge = stored["chunk_grid"]["configuration"]["chunk_shape"][-1]
            if edge != chunk:
                print(f"note: scenestore stored {edge} px chunks at 10 m, the peer used {chunk}")
        if args.only:
            _print_table(results, chunk)
            if "index" in wanted:
                print()
                print(json.dumps(run_index_bench()))
            return
        incremental = run("incremental")
        opened = run("open", "scenestore")
        integrity = run("integrity", "scenestore")
        first = next((Path(tmp) / "scenestore").glob("*.zarr"))
        _check_store(first, Path(tmp) / "check")
        checks = {how: run(f"check-{how}", "check") for how in ("baseline", "scenestore")}

    _print_table(results, chunk)
    s, b, lim = results["scenestore"], results["baseline"], results["limit"]
    peer = results["peer"]
    s3, dsk = results["s3"], results["dask"]
    print(
        f"\nscenestore / baseline throughput: {b['ingest_s'] / s['ingest_s']:.2f}x"
        f"   scenestore / limit: {lim['ingest_s'] / s['ingest_s']:.2f}x"
    )
    print(
        f"S3 store vs local disk: {s['ingest_s'] / s3['ingest_s']:.2f}x   2-worker Dask vs "
        f"local: {s['ingest_s'] / dsk['ingest_s']:.2f}x (above 1: faster than local disk)"
    )
    print(
        f"one scene: 4 bands {incremental['four_s']:.2f} s, then asking for 13 "
        f"{incremental['then_13_s']:.2f} s, vs 13 at once {incremental['at_once_13_s']:.2f} s; "
        f"stored chunks rewritten: {incremental['rewrote_stored_chunks']}"
    )
    print(
        f"cached open: {opened['open_ms']:.1f} ms, lazy={opened['lazy']}; eager load "
        f"{opened['eager_load_s']:.2f} s, {opened['eager_gb']:.2f} GB, "
        f"dtypes {opened['eager_dtypes']}"
    )
    print(
        f"crc32c chunk checksums: write +{integrity['crc32c_write_overhead'] * 100:.1f} %, "
        f"read +{integrity['crc32c_read_overhead'] * 100:.1f} % ({integrity['plain_read_s']:.2f}"
        f" -> {integrity['crc32c_read_s']:.2f} s for 13 bands; eager open "
        f"{integrity['checked_open_eager_s']:.2f} s, xarray alone "
        f"{integrity['unchecked_open_eager_s']:.2f} s); open {integrity['open_ms']:.1f} ms, with "
        f"verify=True {integrity['open_verify_ms']:.1f} ms"
    )
    cb, cs = checks["baseline"], checks["scenestore"]
    print(
        f"missing-band check over {cs['scenes']} scenes: baseline {cb['check_ms_per_scene']:.2f} ms"
        f"/scene, scenestore {cs['check_ms_per_scene']:.3f} ms/scene "
        f"({cb['check_ms_per_scene'] / cs['check_ms_per_scene']:.0f}x cheaper)"
    )
    print()
    indexed = run_index_bench()
    summary = {
        "size": size,
        "scenes": n,
        "source_mb": round(source / 1e6, 1),
        "baseline_s": round(b["ingest_s"], 2),
        "limit_s": round(lim["ingest_s"], 2),
        "scenestore_s": round(s["ingest_s"], 2),
        "ingest_vs_baseline": round(b["ingest_s"] / s["ingest_s"], 2),
        "ingest_vs_limit": round(lim["ingest_s"] / s["ingest_s"], 2),
        "peer_s": round(peer["ingest_s"], 2),
        "ingest_vs_peer": round(peer["ingest_s"] / s["ingest_s"], 2),
        "peer_cpu_s": round(peer["cpu_s"], 2),
        "peer_peak_rss_mb": round(peer["peak_rss_mb"]),
        "peer_chunk_px": chunk,
        "source_bytes_vs_baseline": round(s["served_bytes"] / b["served_bytes"], 3),
        "disk_vs_baseline": round(s["disk_bytes"] / b["disk_bytes"], 3),
        **{
            f"{name}_{key}": value
            for name, r in results.items()
            for key, value in (
                ("served_mb", round(r["served_bytes"] / 1e6, 1)),
                ("requests", r["requests"]),
                ("disk_mb", None if r["disk_bytes"] is None else round(r["disk_bytes"] / 1e6, 1)),
            )
        },
        "s3_s": round(s3["ingest_s"], 2),
        "dask_s": round(dsk["ingest_s"], 2),
        "s3_ingest_vs_local": round(s["ingest_s"] / s3["ingest_s"], 2),
        "dask_ingest_vs_local": round(s["ingest_s"] / dsk["ingest_s"], 2),
        "s3_peak_rss_mb": round(s3["peak_rss_mb"]),
        "peak_rss_mb": round(s["peak_rss_mb"]),
        "baseline_peak_rss_mb": round(b["peak_rss_mb"]),
        "limit_peak_rss_mb": round(lim["peak_rss_mb"]),
        "baseline_cpu_s": round(b["cpu_s"], 2),
        "limit_cpu_s": round(lim["cpu_s"], 2),
        "scenestore_cpu_s": round(s["cpu_s"], 2),
        "then_13_after_4_s": round(incremental["then_13_s"], 2),
        "at_once_13_s": round(incremental["at_once_13_s"], 2),
        "incremental_rewrote_stored_chunks": incremental["rewrote_stored_chunks"],
        "open_ms": round(opened["open_ms"], 1),
        "open_is_lazy": opened["lazy"],
        "eager_dtypes": opened["eager_dtypes"],
        "crc32c_write_overhead": round(integrity["crc32c_write_overhead"], 3),
        "crc32c_read_overhead": round(integrity["crc32c_read_overhead"], 3),
        "checked_open_eager_s": round(integrity["checked_open_eager_s"], 3),
        "open_verify_ms": round(integrity["open_verify_ms"], 1),
        "check_ms_per_scene": round(cs["check_ms_per_scene"], 4),
        "baseline_check_ms_per_scene": round(cb["check_ms_per_scene"], 3),
        **indexed,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
