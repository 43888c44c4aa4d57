"""A real ingest process for the kill and concurrency tests.

    python tests/writer.py STORE STAC_URL BANDS ITEM_ID [ITEM_ID ...]

Prints one JSON line per scene as it finishes: {"identifier", "fetched", "error"}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from scenestore import StacStoreManager
from scenestore.ingest import ingest_items


def main() -> None:
    store, stac_url, bands, *ids = sys.argv[1:]
    manager = StacStoreManager(bands.split(","), store, stac_url=stac_url)
    items = [manager.get_item(i) for i in ids]
    printing = threading.Lock()  # scenes finish in worker threads: one whole line each

    def report(result) -> None:
        fields = {"identifier": result.identifier, "fetched": list(result.fetched)}
        line = json.dumps({**fields, "error": result.error})
        with printing:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    ingest_items(manager, items, max_workers=2, retries=2, backoff_s=0.05, on_result=report)


def writer_results(*procs: subprocess.Popen, timeout: float = 180) -> list[dict]:
    """Wait for writer processes; return every scene result they printed, in order.

    Raises:
        AssertionError: If a writer exited non-zero or a scene failed.
    """
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"writer {proc.args} exited with {proc.returncode}")
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failed = [r for r in results if r["error"]]
    if failed:
        raise AssertionError(f"scenes failed: {failed}")
    return results


if __name__ == "__main__":
    main()
