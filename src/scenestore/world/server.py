"""The offline world served: COGs over a Range-capable HTTP server, items over a real STAC API.

:class:`OfflineWorld` generates the world if needed, serves ``<directory>/data`` with
:class:`~scenestore.world.http.RangeFileServer` and runs ``rustac serve`` (memory backend) on a
free loopback port with the items rendered for that server's URL. The memory backend answers
search by collections, bbox, datetime, ids and pages (POST ``next`` links); it ignores CQL2
``filter``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pystac

from scenestore.errors import SourceError
from scenestore.world.http import FaultPolicy, RangeFileServer
from scenestore.world.items import COLLECTION_ID
from scenestore.world.manifest import WorldManifest, generate_world

# loopback only: never route these requests through a proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def rustac_executable() -> Path:
    """The ``rustac`` CLI installed next to the running Python, else the one on ``PATH``.

    Raises:
        SourceError: If no ``rustac`` executable can be found.
    """
    beside = Path(sys.executable).parent / "rustac"
    if beside.is_file():
        return beside
    found = shutil.which("rustac")
    if found:
        return Path(found)
    raise SourceError(
        f"No 'rustac' executable next to {sys.executable!r} or on PATH; "
        "install the 'rustac' package into this environment."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller retries if someone takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class OfflineWorld:
    """A synthetic Sentinel-2 L2A world served over real HTTP on 127.0.0.1.

    The constructor does no I/O; entering the context generates (or reuses) the world, starts
    both servers and waits until every item is searchable. Leaving it stops both, also when the
    body raised.

    Args:
        directory: World directory (see :func:`~scenestore.world.generate_world`).
        scenes: Number of scenes.
        size: ``"tiny"``, ``"small"``, ``"full"`` or a multiple of 6 pixels.
        seed: World seed.
        faults: Fault hook for the file server (none by default).
        startup_timeout: Seconds to wait for the STAC API to serve every item.

    Attributes:
        stac_url: Root URL of the STAC API, e.g. ``http://127.0.0.1:40123``.
        data_url: Base URL of the COGs: ``<data_url>/<scene_id>/<BAND>.tif``.
        http: The file server (request counters live there).
        manifest: What was generated.
        items: The items as the STAC API serves them, in acquisition order.
    """

    def __init__(
        self,
        directory: Path,
        *,
        scenes: int = 4,
        size: str | int = "tiny",
        seed: int = 0,
        faults: FaultPolicy | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.scenes = scenes
        self.size = size
        self.seed = seed
        self.startup_timeout = startup_timeout
        self._faults = faults
        self.stac_url = ""
        self.data_url = ""
        self.http: RangeFileServer | None = None
        self.manifest: WorldManifest | None = None
        self.items: list[pystac.Item] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> OfflineWorld:
        with contextlib.ExitStack() as stack:
            self.manifest = generate_world(
                self.directory, scenes=self.scenes, size=self.size, seed=self.seed
            )
            self.http = RangeFileServer(self.manifest.data_dir, faults=self._faults).start()
            stack.callback(self.http.stop)
            self.data_url = self.http.url
            serve_dir = self.directory / "serve" / str(self.http.port)
            serve_dir.mkdir(parents=True, exist_ok=True)
            stack.callback(shutil.rmtree, serve_dir, ignore_errors=True)
            hrefs = self._write_documents(serve_dir)
            self._start_api(hrefs, serve_dir / "rustac.log", stack)
            self._stack = stack.pop_all()  # success: keep everything running until __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the STAC API and the file server. Idempotent."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def is_alive(self) -> bool:
        """Whether the STAC API process is still running."""
        return self._process is not None and self._process.poll() is None

    def _write_documents(self, serve_dir: Path) -> list[Path]:
        if self.manifest is None:
            raise SourceError("OfflineWorld has no manifest; enter the context first.")
        collection = serve_dir / "collection.json"
        collection.write_text(json.dumps(self.manifest.collection_dict()))
        items = serve_dir / "items.ndjson"
        lines = (json.dumps(item) for item in self.manifest.item_dicts(self.data_url))
        items.write_text("\n".join(lines) + "\n")
        return [collection, items]

    def _start_api(self, hrefs: list[Path], log_path: Path, stack: contextlib.ExitStack) -> None:
        exe = rustac_executable()
        for attempt in range(3):
            port = free_port()
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [str(exe), "serve", "--addr", f"127.0.0.1:{port}", *map(str, hrefs)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self._process = process
            stack.callback(_stop_process, process)
            self.stac_url = f"http://127.0.0.1:{port}"
            try:
                self.items = self._wait_until_searchable(process, log_path)
                return
            except SourceError:
                log_text = log_path.read_text(errors="replace")
                if attempt == 2 or "in use" not in log_text.lower():
                    raise
                _stop_process(process)  # someone took the port in between: try another

    def _wait_until_searchable(
        self, process: subprocess.Popen[bytes], log_path: Path
    ) -> list[pystac.Item]:
        expected = [s.id for s in self.manifest.scenes] if self.manifest else []
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SourceError(
                    f"rustac serve exited with code {process.returncode} before serving "
                    f"{self.stac_url!r}; its output was: {tail!r}",
                    status=None,
                )
            try:
                features = search_all(self.stac_url, {"collections": [COLLECTION_ID]})
                by_id = {f["id"]: f for f in features}
                if all(i in by_id for i in expected):
                    return [pystac.Item.from_dict(by_id[i]) for i in expected]
                last_error = f"{len(by_id)} of {len(expected)} items searchable"
            except (OSError, ValueError) as err:  # not listening yet, or half-started
                last_error = str(err)
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        raise SourceError(
            f"STAC API at {self.stac_url!r} not ready after {self.startup_timeout} s "
            f"({last_error}); expected all {len(expected)} items to be searchable."
        )


def search_all(
    stac_url: str, body: dict[str, Any], *, limit: int = 100, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """POST ``/search`` and follow ``next`` links; returns every matching feature dict."""
    request: dict[str, Any] | None = {
        "href": f"{stac_url}/search",
        "method": "POST",
        "body": {"limit": limit, **body},
    }
    features: list[dict[str, Any]] = []
    while request is not None:
        page = _fetch_json(request, timeout)
        features.extend(page.get("features", []))
        request = next((link for link in page.get("links", []) if link.get("rel") == "next"), None)
    return features


def _fetch_json(link: dict[str, Any], timeout: float) -> dict[str, Any]:
    method = link.get("method", "GET")
    data = json.dumps(link.get("body", {})).encode() if method == "POST" else None
    req = urllib.request.Request(
        link["href"], data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise SourceError(
            f"STAC API answered {err.code} to {method} {link['href']!r}; expected 200.",
            status=err.code,
        ) from err


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def serve_forever(
    directory: Path,
    scenes: int = 4,
    size: str | int = "tiny",
    seed: int = 0,
    on_ready: Callable[[OfflineWorld], None] | None = None,
) -> None:
    """Serve an offline world until Ctrl-C or SIGTERM, then stop cleanly.

    Args:
        directory: World directory.
        scenes: Number of scenes.
        size: World size (see :func:`~scenestore.world.resolve_size`).
        seed: World seed.
        on_ready: Called once with the running world (e.g. to print ``world.stac_url``).

    Raises:
        SourceError: If the STAC API cannot start or dies while serving.
    """
    stop = threading.Event()
    previous: Any = None
    if threading.current_thread() is threading.main_thread():

        def _on_sigterm(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with OfflineWorld(directory, scenes=scenes, size=size, seed=seed) as world:
            if on_ready is not None:
                on_ready(world)
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    if not world.is_alive():
                        raise SourceError(
                            f"The STAC API at {world.stac_url!r} stopped "
                            "unexpectedly; restart the world."
                        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["OfflineWorld", "free_port", "rustac_executable", "search_all", "serve_forever"]
