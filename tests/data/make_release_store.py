"""Make the release-0.1.0 store fixture (run once, with release 0.1.0's code; not by the tests).

It writes the scene of ``tests/release_scene.py`` through ``StoreManager.save_to_store`` into
a local store and into an S3 bucket on a moto server, and dumps the bucket's objects as files
(object key -> file path) so a test can upload them again::

    mkdir -p /tmp/old-release && git archive <release commit> | tar -x -C /tmp/old-release
    cd /tmp/old-release && PYTHONPATH=/tmp/old-release/src:/tmp/old-release/tests \\
        /work/main/.venv/bin/python tests/data/make_release_store.py OUT_DIR

``OUT_DIR`` (default ``tests/data/release-0.1.0``) gets ``local/<scene>.zarr/...`` and
``s3/<keys...>``; lock files (``.locks``) are left out. Copy it into the repo's ``tests/data``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3

import scenestore
from release_scene import BANDS, CHUNK, IDENTIFIER, release_dataset
from s3server import MotoServer
from scenestore import StacStoreManager

#: The prefix inside the bucket; the test uploads the dumped keys under a prefix of its own.
PREFIX = "release"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/release-0.1.0").resolve()
    if out.exists():
        shutil.rmtree(out)
    local = out / "local"
    StacStoreManager(BANDS, local, chunk_size=CHUNK).save_to_store(
        release_dataset(BANDS), IDENTIFIER
    )
    shutil.rmtree(local / ".locks", ignore_errors=True)

    with MotoServer() as server:
        os.environ.update(server.env())
        url = f"s3://{server.bucket}/{PREFIX}"
        StacStoreManager(BANDS, url, chunk_size=CHUNK).save_to_store(
            release_dataset(BANDS), IDENTIFIER
        )
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=server.bucket, Prefix=f"{PREFIX}/"
        )
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"][len(PREFIX) + 1 :]
                if key.startswith(".locks/"):
                    continue
                body = client.get_object(Bucket=server.bucket, Key=obj["Key"])["Body"].read()
                path = out / "s3" / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
    commit = subprocess.run(
        ["git", "-C", "/work/main", "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"wrote {out} with scenestore {scenestore.__version__} from {scenestore.__file__}")
    print(f"git HEAD of /work/main: {commit}")


if __name__ == "__main__":
    main()
