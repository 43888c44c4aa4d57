"""A guarded asset server for the provider tests: files over HTTP Range, behind SAS and S3 checks.

Runs in a child process (GDAL under rasterio holds the GIL while it does HTTP, so a server
thread in the test process could deadlock against it)::

    python -m providers.gate --root DIR --log FILE

and prints one JSON line ``{"url": ..., "pid": ...}`` when it serves. It exits when its stdin
closes. What it guards, by request path (relative to ``DIR``):

* ``eodata/...``: the CDSE bucket, path-style S3. A request must carry a SigV4
  ``Authorization`` header whose ``Credential=`` names the access key id given with
  ``--s3-key-id``; otherwise 403 with an S3 XML error that echoes the key id it got (as real
  S3 does). Signatures are not verified: this proves that credentials reached the request,
  not that they are right.
* any path with a ``sentinel2-l2`` segment: the Planetary Computer container. A request must
  carry a SAS token (``sig`` and ``se``) whose ``se`` is in the future and whose ``sig`` is not
  revoked; otherwise 403 ``AuthenticationFailed`` as Azure answers.
* anything else: public.

Every request is appended to ``--log`` as one JSON line (path, status, sig, se, key id), written
before the answer, so a test reads it right after its reads.
Control endpoints (``POST /_world/revoke`` with ``{"sig": ...}``, ``POST /_world/s3-key``
with ``{"key_id": ...}``) change the rules while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from scenestore_world.http import RangeFileServer, _FileHandler
from scenestore_world.traffic import Controls

_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/")


class GateHandler(_FileHandler):
    """The file handler with the SAS and S3 checks in front of it."""

    def respond(self, key: str, head: bool, body: bytes) -> None:
        gate: GateServer = self.server.owner
        query = parse_qs(urlsplit(self.path).query)
        sig = (query.get("sig") or [None])[0]
        se = (query.get("se") or [None])[0]
        match = _CREDENTIAL_RE.search(self.headers.get("Authorization", ""))
        key_id = match.group(1) if match else None
        status, message = 200, ""
        if key.split("/", 1)[0] == "eodata":
            if key_id is None or key_id != gate.s3_key_id:
                status, message = 403, _s3_error(key_id)
        elif "sentinel2-l2" in key.split("/"):
            status, message = _sas_verdict(sig, se, gate.revoked)
        gate.append_log(
            {
                "method": self.command,
                "path": key,
                "status": status,
                "sig": sig,
                "se": se,
                "key_id": key_id,
            }
        )
        if status == 200:
            super().respond(key, head, body)
            return
        data = message.encode()
        self.send_head(403, {"Content-Type": "application/xml"}, len(data))
        if not head:
            self.write_body(data)


def _sas_verdict(sig: str | None, se: str | None, revoked: set[str]) -> tuple[int, str]:
    if not sig or not se:
        return 403, _azure_error("Signature or expiry not present in the query string.")
    try:
        expiry = datetime.fromisoformat(se.replace("Z", "+00:00"))
    except ValueError:
        return 403, _azure_error(f"Expiry {se!r} is not a time.")
    if expiry <= datetime.now(UTC):
        return 403, _azure_error("Signed expiry time must be after signed start time.")
    if sig in revoked:
        return 403, _azure_error("Signature not valid in the specified time frame.")
    return 200, ""


def _azure_error(detail: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
        "<Message>Server failed to authenticate the request. Make sure the value of "
        f"Authorization header is formed correctly including the signature.</Message>"
        f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail></Error>"
    )


def _s3_error(key_id: str | None) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
        "<Message>The AWS Access Key Id you provided does not exist in our records.</Message>"
        f"<AWSAccessKeyId>{key_id or ''}</AWSAccessKeyId></Error>"
    )


class GateServer(RangeFileServer):
    """A :class:`RangeFileServer` whose handler checks SAS tokens and S3 credentials."""

    _handler = GateHandler

    def __init__(self, root: Path, *, log: Path, s3_key_id: str, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.log = Path(log)
        self.s3_key_id = s3_key_id
        self.revoked: set[str] = set()
        self._log_lock = threading.Lock()
        self.controls = Controls(
            {"cog": self.traffic},
            actions={
                "revoke": lambda doc: self.revoked.add(str(doc["sig"])),
                "s3-key": lambda doc: setattr(self, "s3_key_id", str(doc["key_id"])),
            },
        )

    def append_log(self, entry: dict[str, Any]) -> None:
        """Append one request to the log file."""
        with self._log_lock, self.log.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Serve until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m providers.gate")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--s3-key-id", required=True)
    args = parser.parse_args(argv)
    with GateServer(args.root, log=args.log, s3_key_id=args.s3_key_id) as server:
        sys.stdout.write(json.dumps({"url": server.url}) + "\n")
        sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
