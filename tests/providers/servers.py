"""Loopback servers for the provider tests: recorded STAC pages, rustac, and the asset gate.

* :class:`ReplayAPI` answers a STAC API's landing page and search pages from recorded JSON,
  following the recorded paging tokens exactly (POST ``next``/``token`` in the body, GET
  ``token`` in the query); an unknown token is a 400, so a client that mangles a token fails.
* :func:`rustac_api` runs ``rustac serve`` (memory backend) over recorded items.
* :class:`Gate` runs :mod:`providers.gate` in a child process: the SAS- and S3-guarded file
  server the pixel tests read from.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from scenestore_world.remote import stop_process
from scenestore_world.server import free_port, rustac_executable, search_all

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parents[1]


@dataclass
class ReplayAPI:
    """A STAC API that replays recorded responses on 127.0.0.1 (in this process: its clients
    are pystac-client and requests, which release the GIL while they wait).

    Args:
        origins: Recorded URL prefixes (e.g. ``https://earth-search.aws.element84.com``)
            rewritten to this server in every document it serves.
        landing: The recorded landing page (root catalog).
        pages: Recorded pages by the paging token that asks for them; ``None`` is the first.
        end_tokens: Tokens of the page after the last recorded one (answered with an empty
            page: the recording stops there).
        keep_collection: Serve only the features of this collection (the recording searched
            every collection; the replay answers a search restricted to one).
        collections: Recorded collection documents by id.

    Attributes:
        requests: ``(method, path, token, body)`` of every request answered.
    """

    origins: tuple[str, ...]
    landing: dict[str, Any]
    pages: Mapping[str | None, dict[str, Any]]
    end_tokens: tuple[str, ...] = ()
    keep_collection: str | None = None
    collections: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self.base = ""

    def __enter__(self) -> ReplayAPI:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                replay._answer(self, None)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                replay._answer(self, json.loads(self.rfile.read(length) or b"{}"))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def url(self, recorded: str) -> str:
        """The local URL standing for a recorded one."""
        for origin in self.origins:
            if recorded.startswith(origin):
                return self.base + recorded[len(origin) :]
        raise ValueError(f"{recorded!r} starts with none of {self.origins}")

    def _rewrite(self, doc: Any) -> bytes:
        text = json.dumps(doc)
        for origin in self.origins:
            text = text.replace(origin, self.base)
        return text.encode()

    def _answer(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        token = (body or {}).get("next") or (body or {}).get("token") or query.get("token")
        self.requests.append((handler.command, path, token, body))
        status, doc = self._route(path, token)
        data = self._rewrite(doc)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/geo+json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, path: str, token: str | None) -> tuple[int, Any]:
        landing_path = urlsplit(self.url(self.landing_self())).path.rstrip("/")
        if path == landing_path:
            return 200, self.landing
        if path == f"{landing_path}/conformance":
            return 200, {"conformsTo": self.landing.get("conformsTo", [])}
        for cid, doc in self.collections.items():
            if path == f"{landing_path}/collections/{cid}":
                return 200, doc
        if path.endswith("/search") or path.endswith("/items"):
            if token in self.end_tokens:
                return 200, {"type": "FeatureCollection", "features": [], "links": []}
            if token not in self.pages:
                return 400, {"code": "BadRequest", "description": f"unknown token {token!r}"}
            page = dict(self.pages[token])
            if self.keep_collection:
                page["features"] = [
                    f for f in page["features"] if f.get("collection") == self.keep_collection
                ]
            return 200, page
        return 404, {"code": "NotFound", "description": path}

    def landing_self(self) -> str:
        """The recorded URL of the landing page."""
        for link in self.landing.get("links", []):
            if link.get("rel") == "self":
                return str(link["href"])
        return self.origins[0]


@contextlib.contextmanager
def rustac_api(
    directory: Path, collection: dict[str, Any], items: list[dict[str, Any]]
) -> Iterator[str]:
    """Serve recorded items with ``rustac serve`` (memory backend); yields the API root URL."""
    directory.mkdir(parents=True, exist_ok=True)
    collection_file = directory / "collection.json"
    collection_file.write_text(json.dumps(collection))
    items_file = directory / "items.ndjson"
    items_file.write_text("".join(json.dumps(item) + "\n" for item in items))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (directory / "rustac.log").open("wb")
    process = subprocess.Popen(
        [
            str(rustac_executable()),
            "serve",
            "--addr",
            url,
            "--bind",
            f"127.0.0.1:{port}",
            str(collection_file),
            str(items_file),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, delay = time.monotonic() + 30, 0.02
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"rustac serve exited: {(directory / 'rustac.log').read_text()}")
            try:
                if len(search_all(url, {"collections": [collection["id"]]})) == len(
                    {i["id"] for i in items}
                ):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"rustac serve at {url} not ready within 30 s")
            time.sleep(delay)
            delay = min(2 * delay, 0.25)
        yield url
    finally:
        stop_process(process)
        log.close()


class Gate:
    """The guarded asset server (:mod:`providers.gate`) in a child process.

    Args:
        root: Directory to serve.
        s3_key_id: The only S3 access key id it accepts under ``eodata/``.
    """

    def __init__(self, root: Path, *, s3_key_id: str) -> None:
        self.root = Path(root)
        self.log = self.root.parent / f"{self.root.name}.requests.jsonl"
        self.s3_key_id = s3_key_id
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gate:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "providers.gate",
                "--root",
                str(self.root),
                "--log",
                str(self.log),
                "--s3-key-id",
                self.s3_key_id,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        fd = self._process.stdout.fileno()  # type: ignore[union-attr]
        ready, _, _ = select.select([fd], [], [], 30)
        line = self._process.stdout.readline() if ready else b""  # type: ignore[union-attr]
        if not line:
            self.__exit__()
            raise RuntimeError("the asset gate did not report ready within 30 s")
        self.url = json.loads(line)["url"]
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()  # type: ignore[union-attr]  (it exits on EOF)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=5)

    def mark(self) -> int:
        """Position in the request log; :meth:`requests` since it."""
        return len(self.log.read_text().splitlines())

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Requests answered since ``since`` (path, status, sig, se, key_id)."""
        return [json.loads(line) for line in self.log.read_text().splitlines()[since:]]

    def control(self, action: str, document: dict[str, Any]) -> None:
        """POST a control action (``revoke``, ``s3-key``)."""
        import urllib.request

        request = urllib.request.Request(
            f"{self.url}/_world/{action}",
            data=json.dumps(document).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            response.read()
