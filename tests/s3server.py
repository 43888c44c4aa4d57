"""A real S3-compatible server for the tests: moto's server mode, in its own process.

It listens on a free 127.0.0.1 port, answers real S3 HTTP (SigV4, conditional writes), keeps
objects in memory and is stopped at the end of the session. Nothing is mocked in-process: the
code under test talks HTTP to it exactly as it would to S3.
"""

from __future__ import annotations

import secrets
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scenestore_world.remote import stop_process
from scenestore_world.server import free_port

BUCKET = "scenes"


def fake_credentials() -> dict[str, str]:
    """AWS-shaped keys made at run time (the redaction tests look for them in output)."""
    alphabet = string.ascii_uppercase + string.digits
    key_id = "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    return {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}


class MotoServer:
    """``moto_server`` on 127.0.0.1 with one bucket; use as a context manager."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.credentials = fake_credentials()
        self._process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The environment a client of this server needs (endpoint, region, keys)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", **self.credentials}

    def __enter__(self) -> MotoServer:
        binary = Path(sys.executable).parent / "moto_server"
        self._process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"moto_server did not start on {self.endpoint}") from None
                time.sleep(0.05)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None
