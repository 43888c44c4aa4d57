"""Bytes and requests the COG server serves for one scenestore ingest of one scene.

Usage: ``uv run --frozen python scripts/bench_reads.py [--full] [--chunk N]``. The world is
the one ``scripts/bench.py`` caches (``.bench/world-<size>-1``); the ingest runs in a fresh
process (no GDAL cache shared with a previous run) into a temporary store. Prints one JSON
line: requests, bytes served, the sum of the 13 COG files' sizes, their ratio, per-band
figures, and the MB the store holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
ALL_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
ALL_BANDS.append("SCL")


def _child(item_file: str, store: str, chunk: int | None, ten: bool) -> None:
    import pystac

    from scenestore import StacStoreManager

    class TenMetre(StacStoreManager):
        """Every band stored at 10 m (the layout before native-resolution bands)."""

        def download_for_store(self, item: Any, bands: list[str]) -> Any:
            return self.download_scene_from_source(item, bands)

    cls = TenMetre if ten else StacStoreManager
    item = pystac.Item.from_dict(json.loads(Path(item_file).read_text()))
    cls(ALL_BANDS, store, chunk_size=chunk).download_and_store(item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="one real-size 10980 px tile")
    parser.add_argument("--chunk", type=int, default=None, help="stored chunk edge (10 m px)")
    parser.add_argument("--ten", action="store_true", help="store every band at 10 m")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.chunk, args.ten)
        return
    from scenestore_world import OfflineWorld

    size = "full" if args.full else "small"
    with (
        OfflineWorld(BENCH_DIR / f"world-{size}-1", scenes=1, size=size, seed=7) as world,
        tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="reads-") as tmp,
    ):
        item = world.items[0]
        item_file = Path(tmp) / "item.json"
        item_file.write_text(json.dumps(item.to_dict(transform_hrefs=False)))
        sizes = {b: world.manifest.band_path(item.id, b).stat().st_size for b in ALL_BANDS}
        world.http.reset_stats()
        cmd = [sys.executable, __file__, "--child", str(item_file), str(Path(tmp) / "store")]
        if args.chunk:
            cmd += ["--chunk", str(args.chunk)]
        if args.ten:
            cmd.append("--ten")
        subprocess.run(cmd, check=True)
        per_band: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        ranges: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for req in world.http.requests():
            band = Path(req.path).stem
            per_band[band][0] += 1
            per_band[band][1] += req.bytes_sent
            if req.range and req.range.startswith("bytes="):
                for part in req.range[len("bytes=") :].split(","):
                    start, _, end = part.strip().partition("-")
                    if start and end:
                        ranges[band].append((int(start), int(end) + 1))
        unique = {b: _union(r) for b, r in ranges.items()}
        needed = {b: _tile_bytes(world.manifest.band_path(item.id, b)) for b in ALL_BANDS}
        store_bytes = sum(p.stat().st_size for p in (Path(tmp) / "store").rglob("*") if p.is_file())
    served = sum(v[1] for v in per_band.values())
    total = sum(sizes.values())
    print(
        json.dumps(
            {
                "size": size,
                "layout": "10m" if args.ten else "native",
                "requests": sum(v[0] for v in per_band.values()),
                "served_mb": round(served / 1e6, 2),
                "cog_mb": round(total / 1e6, 2),
                "served_vs_cogs": round(served / total, 3),
                "store_mb": round(store_bytes / 1e6, 2),
                "full_res_tiles_mb": round(sum(needed.values()) / 1e6, 2),
                "unique_ranges_mb": round(sum(unique.values()) / 1e6, 2),
                "served_vs_full_res_tiles": round(served / sum(needed.values()), 3),
                "bands": {
                    b: {
                        "requests": v[0],
                        "vs_cog": round(v[1] / sizes[b], 2),
                        "vs_tiles": round(v[1] / needed[b], 2),
                    }
                    for b, v in sorted(per_band.items())
                    if b in sizes
                },
            }
        )
    )


def _union(spans: list[tuple[int, int]]) -> int:
    """Bytes covered by half-open byte ranges, each counted once."""
    total, end = 0, -1
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _tile_bytes(path: Path) -> int:
    """Compressed bytes of the full-resolution level's tiles: what a reader must fetch."""
    import rasterio

    total = 0
    with rasterio.open(path) as src:
        rows, cols = src.block_shapes[0]
        for i in range(-(-src.height // rows)):
            for j in range(-(-src.width // cols)):
                size = src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1)
                total += int(size or 0)
    return total


if __name__ == "__main__":
    main()
