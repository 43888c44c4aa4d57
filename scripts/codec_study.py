"""Lossless codecs for the stored bands, measured on the offline world's pixels (issue #16).

Each band is written to a real zarr v3 array on disk with the chunk edge the store picks
(:func:`scenestore.store.layout.choose_chunk` of the band's native grid), once per codec, then
read back and compared value for value. Throughput is raw megabytes per CPU second of this
process with Blosc and zarr held to one thread, so it stands for one core and suffers less from
other work on the machine than wall time would (it is still noisy on a shared machine).

Usage::

    uv run --frozen python scripts/codec_study.py                  # 2 small scenes, all bands
    uv run --frozen python scripts/codec_study.py --full           # + one full-tile band per res
    uv run --frozen --with pcodec python scripts/codec_study.py    # pcodec too

Prints one Markdown table per data set and a JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.blosc
import numpy as np
import rasterio
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from scenestore.bands import ALL_BANDS
from scenestore.store.layout import choose_chunk
from scenestore_world import generate_world

#: Where generated worlds are cached between runs (next to the benchmark's).
CACHE_DIR = Path(".bench") / "codec-study"

MIB = 1 << 20

#: Bands of the full tile measured: one per native resolution, and SCL.
FULL_BANDS = ("B04", "B11", "B09", "SCL")


@dataclass
class Codec:
    """One candidate: a name and the zarr ``filters`` / ``serializer`` / ``compressors``."""

    name: str
    make: Callable[[np.dtype[Any]], dict[str, Any]]


def _blosc(
    cname: str, clevel: int, shuffle: str, blocksize: int = 0
) -> Callable[[np.dtype[Any]], dict[str, Any]]:
    return lambda dtype: {
        "compressors": [
            BloscCodec(
                cname=cname, clevel=clevel, shuffle=BloscShuffle[shuffle], blocksize=blocksize
            )
        ]
    }


def _delta_zstd(clevel: int, shuffle: str) -> Callable[[np.dtype[Any]], dict[str, Any]]:
    from zarr.codecs.numcodecs import Delta

    # differences wrap around in the band's own dtype, so decoding restores every value
    return lambda dtype: {
        "filters": [Delta(dtype=dtype.str)],
        "compressors": [BloscCodec(cname="zstd", clevel=clevel, shuffle=BloscShuffle[shuffle])],
    }


def _pcodec(level: int) -> Callable[[np.dtype[Any]], dict[str, Any]]:
    from zarr.codecs.numcodecs import PCodec

    def make(dtype: np.dtype[Any]) -> dict[str, Any]:
        if dtype.itemsize == 1:  # pco refuses 8-bit types; SCL keeps today's codec
            return _blosc("zstd", 3, "bitshuffle")(dtype)
        return {"serializer": PCodec(level=level), "compressors": []}

    return make


def candidates() -> tuple[list[Codec], list[str]]:
    """The codecs to compare, and notes on those that cannot run here."""
    codecs = [Codec("none (raw bytes)", lambda dtype: {"compressors": []})]
    codecs += [
        Codec(f"blosc zstd {level} {shuffle}", _blosc("zstd", level, shuffle))
        for shuffle in ("shuffle", "bitshuffle", "noshuffle")
        for level in (1, 3, 5, 9)
    ]
    # Blosc splits a chunk into blocks it compresses one by one; its own choice for zstd at
    # levels 1-3 is 64-256 KB, which costs zstd both matches and speed.
    codecs += [
        Codec(f"blosc zstd {level} shuffle, 1 MiB blocks", _blosc("zstd", level, "shuffle", MIB))
        for level in (1, 2, 3)
    ]
    codecs += [
        Codec("blosc zstd 2 shuffle", _blosc("zstd", 2, "shuffle")),
        Codec("blosc lz4 5 shuffle", _blosc("lz4", 5, "shuffle")),
        Codec("blosc lz4hc 5 shuffle", _blosc("lz4hc", 5, "shuffle")),
        Codec("blosc lz4hc 9 shuffle", _blosc("lz4hc", 9, "shuffle")),
        Codec("zstd 1", lambda dtype: {"compressors": [ZstdCodec(level=1)]}),
        Codec("zstd 3", lambda dtype: {"compressors": [ZstdCodec(level=3)]}),
        Codec("delta + blosc zstd 1 shuffle", _delta_zstd(1, "shuffle")),
        Codec("delta + blosc zstd 3 shuffle", _delta_zstd(3, "shuffle")),
        Codec("delta + blosc zstd 3 bitshuffle", _delta_zstd(3, "bitshuffle")),
    ]
    notes = []
    try:
        import pcodec  # noqa: F401
    except ImportError:
        notes.append(
            "pcodec: not installed (numcodecs.PCodec needs the `pcodec` package); run with "
            "`uv run --frozen --with pcodec` to include it"
        )
    else:
        codecs += [
            Codec(f"pcodec {level} (SCL: blosc zstd 3 bitshuffle)", _pcodec(level))
            for level in (4, 8)
        ]
    return codecs, notes


@dataclass
class Totals:
    """Sums over the bands of one data set for one codec."""

    raw: int = 0
    stored: int = 0
    encode_cpu: float = 0.0
    decode_cpu: float = 0.0
    lossless: bool = True
    per_band: dict[str, float] = field(default_factory=dict)


def stored_bytes(path: Path) -> int:
    """Bytes of the chunk files under an array directory (metadata excluded)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")


def measure(data: np.ndarray, codec: Codec, scratch: Path) -> tuple[int, float, float, bool]:
    """Write ``data`` with ``codec``, read it back: (stored bytes, encode s, decode s, equal)."""
    chunk = choose_chunk(data.shape[0])
    path = scratch / "array.zarr"
    shutil.rmtree(path, ignore_errors=True)
    arr = zarr.create_array(
        store=str(path),
        shape=data.shape,
        chunks=(chunk, chunk),
        dtype=data.dtype,
        fill_value=0,
        **codec.make(data.dtype),
    )
    start = time.process_time()
    arr[...] = data
    encode = time.process_time() - start
    start = time.process_time()
    back = zarr.open_array(str(path), mode="r")[...]
    decode = time.process_time() - start
    return stored_bytes(path), encode, decode, bool(np.array_equal(back, data))


def study(
    bands: dict[str, list[np.ndarray]], codecs: list[Codec], scratch: Path
) -> dict[str, Totals]:
    """Measure every codec on every array of ``bands`` (band name to arrays)."""
    results: dict[str, Totals] = {}
    for codec in codecs:
        totals = Totals()
        for band, arrays in bands.items():
            band_raw = band_stored = 0
            for data in arrays:
                size, encode, decode, equal = measure(data, codec, scratch)
                totals.raw += data.nbytes
                totals.stored += size
                totals.encode_cpu += encode
                totals.decode_cpu += decode
                totals.lossless &= equal
                band_raw += data.nbytes
                band_stored += size
            totals.per_band[band] = round(band_stored / band_raw, 4)
        results[codec.name] = totals
        print(f"  {codec.name}: {totals.stored / totals.raw:.3f}", flush=True)
    return results


def table(title: str, results: dict[str, Totals]) -> str:
    """A Markdown table of one data set, sorted by stored size."""
    bands = list(next(iter(results.values())).per_band)
    raw_mb = next(iter(results.values())).raw / 1e6
    lines = [
        f"### {title} ({raw_mb:.0f} MB raw)",
        "",
        "| codec | MB stored | of raw | encode MB/s | decode MB/s | lossless | "
        + " | ".join(bands)
        + " |",
        "|---|---:|---:|---:|---:|---|" + "---:|" * len(bands),
    ]
    for name, t in sorted(results.items(), key=lambda kv: kv[1].stored):
        lines.append(
            f"| {name} | {t.stored / 1e6:.1f} | {t.stored / t.raw:.3f} | "
            f"{t.raw / 1e6 / max(t.encode_cpu, 1e-9):.0f} | "
            f"{t.raw / 1e6 / max(t.decode_cpu, 1e-9):.0f} | {'yes' if t.lossless else 'NO'} | "
            + " | ".join(f"{t.per_band[b]:.3f}" for b in bands)
            + " |"
        )
    return "\n".join(lines)


def read_band(scene_dir: Path, band: str) -> np.ndarray:
    """The full-resolution level of one band COG."""
    with rasterio.open(scene_dir / f"{band}.tif") as src:
        return src.read(1)


def _add_small(datasets: dict[str, dict[str, list[np.ndarray]]], scenes: int, seed: int) -> None:
    small = CACHE_DIR / f"world-small-{scenes}-{seed}"
    manifest = generate_world(small, scenes=scenes, size="small", seed=seed)
    datasets[f"{scenes} small scenes, all 13 bands"] = {
        band: [read_band(manifest.data_dir / s.id, band) for s in manifest.scenes]
        for band in ALL_BANDS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2, help="small scenes (default 2, 0: none)")
    parser.add_argument("--full", action="store_true", help="also one full-tile band per res")
    parser.add_argument("--full-world", type=Path, help="existing data dir of a full scene")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--all-on-full", action="store_true", help="also the level 9 codecs on the full tile"
    )
    parser.add_argument("--only", help="measure only the codecs whose name contains this text")
    args = parser.parse_args()

    # one core: no Blosc threads, one zarr worker
    numcodecs.blosc.use_threads = False
    numcodecs.blosc.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 1})

    # numcodecs adapters warn that they are outside the zarr v3 spec: that is the point here
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
    codecs, notes = candidates()
    if args.only:
        codecs = [c for c in codecs if args.only in c.name]
    datasets: dict[str, dict[str, list[np.ndarray]]] = {}
    if args.scenes > 0:
        _add_small(datasets, args.scenes, args.seed)
    if args.full or args.full_world:
        if args.full_world:
            scene_dir = args.full_world
        else:
            full = generate_world(
                CACHE_DIR / f"world-full-1-{args.seed}", scenes=1, size="full", seed=args.seed
            )
            scene_dir = full.data_dir / full.scenes[0].id
        datasets["full tile, one band per resolution"] = {
            band: [read_band(scene_dir, band)] for band in FULL_BANDS
        }

    report: dict[str, Any] = {"notes": notes, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="codec-study-") as tmp:
        for title, bands in datasets.items():
            shapes = {
                b: f"{a[0].shape[0]} px, chunk {choose_chunk(a[0].shape[0])}"
                for b, a in bands.items()
            }
            print(f"{title}: {shapes}", flush=True)
            chosen = codecs
            if title.startswith("full") and not args.all_on_full:
                # level 9 encodes at 2-6 MB/s: minutes per codec on a full band, no contender
                chosen = [c for c in codecs if " 9 " not in c.name]
            results = study(bands, chosen, Path(tmp))
            print(table(title, results) + "\n", flush=True)
            report["datasets"][title] = {
                name: {
                    "stored_bytes": t.stored,
                    "raw_bytes": t.raw,
                    "ratio": round(t.stored / t.raw, 4),
                    "encode_mb_s": round(t.raw / 1e6 / max(t.encode_cpu, 1e-9), 1),
                    "decode_mb_s": round(t.raw / 1e6 / max(t.decode_cpu, 1e-9), 1),
                    "lossless": t.lossless,
                    "per_band_ratio": t.per_band,
                }
                for name, t in results.items()
            }
    for note in notes:
        print(f"note: {note}")
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
