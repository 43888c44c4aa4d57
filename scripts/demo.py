"""`make demo`: start the offline Sentinel-2 world and ingest an AOI into ./demo-store.

Runs the real CLI (`scenestore ingest`) against the world's real STAC API and COG server on
127.0.0.1. Run it twice: the second run finds every band stored and downloads nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scenestore_world import OfflineWorld

ROOT = Path(__file__).resolve().parent.parent
WORLD_DIR = ROOT / ".world" / "demo"
STORE = ROOT / "demo-store"


def main() -> int:
    """Serve the world, ingest every scene over June 2024 of its first tile's AOI, print ls."""
    with OfflineWorld(WORLD_DIR, scenes=6, size="tiny", seed=0) as world:
        first = world.items[0]
        w, s, e, n = first.bbox
        bbox = f"{w:.5f},{s:.5f},{e:.5f},{n:.5f}"
        print(f"Offline world: STAC API {world.stac_url}, COGs {world.data_url}")
        print(f"Ingesting AOI {bbox}, 2024-06-01..2024-07-31, all 13 bands into {STORE}\n")
        cli = [sys.executable, "-m", "scenestore.cli"]
        ingest = subprocess.run(
            [
                *cli,
                "ingest",
                "--store",
                str(STORE),
                "--stac-url",
                world.stac_url,
                "--bbox",
                bbox,
                "--start",
                "2024-06-01",
                "--end",
                "2024-07-31",
            ],
            check=False,
        )
        if ingest.returncode != 0:
            return ingest.returncode
        requests = sum(s.requests for s in world.http.stats().values())
        print(f"\nThe COG server answered {requests} requests in this run.")
        subprocess.run([*cli, "ls", "--store", str(STORE)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
