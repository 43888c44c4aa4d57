"""The offline world served: COGs over a Range-capable HTTP server, items over a real STAC API.

:class:`OfflineWorld` generates the world if needed, then starts a child process
(:class:`~scenestore_world.remote.WorldServers`) that serves ``<directory>/data`` with a
:class:`~scenestore_world.http.RangeFileServer` and runs a faulting
:class:`~scenestore_world.proxy.StacProxy`, and behind that proxy ``rustac serve`` (memory
backend) on a private loopback port, with the items rendered for the file server's URL and
rustac's links for the proxy's. The memory backend answers search by collections, bbox,
datetime, ids and pages (POST ``next`` links); it ignores CQL2 ``filter``.

Faults (:class:`~scenestore_world.faults.FaultPlan`) are off by default; set them at start
(``faults=``, ``stac_faults=``), with :meth:`OfflineWorld.set_faults`, or for a block with
:meth:`OfflineWorld.faulted`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pystac

from scenestore.errors import SourceError
from scenestore.serve import rustac_executable  # shared with `scenestore serve`
from scenestore_world.faults import FaultPlan
from scenestore_world.items import COLLECTION_ID
from scenestore_world.manifest import WorldManifest, generate_world
from scenestore_world.remote import RemoteTraffic, WorldServers, stop_process

# loopback only: never route these requests through a proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller retries if someone takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Keep:
    """Marker for "leave this plan as it is"."""

    def __repr__(self) -> str:
        return "KEEP"


#: Default of :meth:`OfflineWorld.set_faults` arguments: leave that server's plan unchanged.
KEEP: Any = _Keep()


class OfflineWorld:
    """A synthetic Sentinel-2 L2A world served over real HTTP on 127.0.0.1.

    The constructor does no I/O; entering the context generates (or reuses) the world, starts
    the server process and the STAC API and waits until every item is searchable. Leaving it
    stops both, also when the body raised. Both servers run in other processes than the caller,
    as real services do.

    Args:
        directory: World directory (see :func:`~scenestore_world.generate_world`).
        scenes: Number of scenes.
        size: ``"tiny"``, ``"small"``, ``"full"`` or a multiple of 6 pixels.
        seed: World seed.
        faults: Fault plan of the COG file server (none by default).
        stac_faults: Fault plan of the STAC API (its proxy); applied once every item is
            searchable (none by default).
        startup_timeout: Seconds to wait for the servers and the STAC API to serve every item.
        stac_port: Port of the STAC API on 127.0.0.1 (0: any free port, chosen per start).
        data_port: Port of the COG file server on 127.0.0.1 (0: any free port).

    Attributes:
        stac_url: Root URL of the STAC API (the faulting proxy), e.g. ``http://127.0.0.1:40123``.
        data_url: Base URL of the COGs: ``<data_url>/<scene_id>/<BAND>.tif``.
        http: The COG file server's counters and faults (:class:`RemoteTraffic`).
        stac_http: The STAC API proxy's counters and faults (:class:`RemoteTraffic`).
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
        faults: FaultPlan | None = None,
        stac_faults: FaultPlan | None = None,
        startup_timeout: float = 30.0,
        stac_port: int = 0,
        data_port: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.stac_port = stac_port
        self.data_port = data_port
        self.scenes = scenes
        self.size = size
        self.seed = seed
        self.startup_timeout = startup_timeout
        self._faults = faults
        self._stac_faults = stac_faults
        self.stac_url = ""
        self.data_url = ""
        self.http: RemoteTraffic | None = None
        self.stac_http: RemoteTraffic | None = None
        self.manifest: WorldManifest | None = None
        self.items: list[pystac.Item] = []
        self.servers: WorldServers | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> OfflineWorld:
        with contextlib.ExitStack() as stack:
            self.manifest = generate_world(
                self.directory, scenes=self.scenes, size=self.size, seed=self.seed
            )
            servers = WorldServers(
                self.manifest.data_dir,
                faults=self._faults,
                startup_timeout=self.startup_timeout,
                port=self.data_port,
                stac_port=self.stac_port,
            )
            self.servers = servers.start()
            stack.callback(servers.stop)
            self.http, self.stac_http = servers.cog, servers.stac
            if self.http is None or self.stac_http is None:
                raise SourceError("The world's server process reported no URLs; restart it.")
            self.data_url = self.http.url
            serve_dir = self.directory / "serve" / str(self.http.port)
            serve_dir.mkdir(parents=True, exist_ok=True)
            stack.callback(shutil.rmtree, serve_dir, ignore_errors=True)
            hrefs = self._write_documents(serve_dir)
            self._start_api(hrefs, serve_dir / "rustac.log", stack)
            if self._stac_faults is not None:
                self.stac_http.set_faults(self._stac_faults)
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
        """Whether the STAC API and the server process are both still running."""
        return (
            self._process is not None
            and self._process.poll() is None
            and self.servers is not None
            and self.servers.is_alive()
        )

    def coverage(self) -> list[str]:
        """What the world serves, one line per MGRS tile: dates, scene count and bbox.

        Returns:
            Lines such as ``39QTA  2024-06-01..2024-06-11  3 scenes  bbox 48.15,18.92,48.2,18.97``
            (the bbox in degrees, west,south,east,north, ready for ``--bbox``).

        Raises:
            SourceError: If the world is not running.
        """
        if not self.items or self.manifest is None:
            raise SourceError("OfflineWorld is not running; enter the context first.")
        tiles = {scene.id: scene.tile for scene in self.manifest.scenes}
        by_tile: dict[str, list[pystac.Item]] = {}
        for item in self.items:
            by_tile.setdefault(tiles[item.id], []).append(item)
        lines = []
        for tile, items in sorted(by_tile.items()):
            days = sorted(str(i.datetime.date()) for i in items if i.datetime is not None)
            boxes = [i.bbox for i in items if i.bbox]
            w, s, e, n = (min(b[0] for b in boxes), min(b[1] for b in boxes),
                          max(b[2] for b in boxes), max(b[3] for b in boxes))
            lines.append(f"{tile}  {days[0]}..{days[-1]}  {len(items)} scenes  "
                         f"bbox {w:.5f},{s:.5f},{e:.5f},{n:.5f}")
        return lines

    def set_faults(self, *, cog: FaultPlan | None = KEEP, stac: FaultPlan | None = KEEP) -> None:
        """Set the fault plans from the next request on; an omitted server keeps its plan.

        Args:
            cog: Plan of the COG file server, or None for no faults.
            stac: Plan of the STAC API (proxy), or None for no faults.
        """
        for traffic, plan in ((self.http, cog), (self.stac_http, stac)):
            if plan is KEEP:
                continue
            if traffic is None:
                raise SourceError("OfflineWorld is not running; enter the context first.")
            traffic.set_faults(plan)

    def faults(self) -> dict[str, FaultPlan | None]:
        """The fault plans in force: ``{"cog": ..., "stac": ...}``."""
        if self.http is None or self.stac_http is None:
            raise SourceError("OfflineWorld is not running; enter the context first.")
        return {"cog": self.http.faults, "stac": self.stac_http.faults}

    @contextlib.contextmanager
    def faulted(
        self, *, cog: FaultPlan | None = KEEP, stac: FaultPlan | None = KEEP
    ) -> Iterator[OfflineWorld]:
        """Apply fault plans for the ``with`` block, then restore the previous ones.

        Restoring a plan restarts its RNG and ``max_faults`` count. Omitted servers are left
        alone.

        Example:
            ``with world.faulted(cog=FaultPlan(status_503=0.2, seed=1)): ...``
        """
        previous = self.faults()
        self.set_faults(cog=cog, stac=stac)
        try:
            yield self
        finally:
            self.set_faults(
                cog=KEEP if cog is KEEP else previous["cog"],
                stac=KEEP if stac is KEEP else previous["stac"],
            )

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
        if self.servers is None or self.stac_http is None:
            raise SourceError("OfflineWorld has no server process; enter the context first.")
        # rustac writes its links for --addr (the proxy) and listens on --bind (private)
        self.stac_url = self.stac_http.url
        for attempt in range(3):
            port = free_port()
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [
                        str(exe),
                        "serve",
                        "--addr",
                        self.stac_url,
                        "--bind",
                        f"127.0.0.1:{port}",
                        *map(str, hrefs),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self._process = process
            stack.callback(stop_process, process)
            self.servers.adopt(process.pid)  # no orphan rustac if this process is killed
            self.servers.set_upstream(f"http://127.0.0.1:{port}")
            try:
                self.items = self._wait_until_searchable(process, log_path)
            except SourceError:
                log_text = log_path.read_text(errors="replace")
                if attempt == 2 or "in use" not in log_text.lower():
                    raise
                stop_process(process)  # someone took the port in between: try another
            else:
                return

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




def serve_forever(
    directory: Path,
    scenes: int = 4,
    size: str | int = "tiny",
    seed: int = 0,
    on_ready: Callable[[OfflineWorld], None] | None = None,
    *,
    faults: FaultPlan | None = None,
    stac_faults: FaultPlan | None = None,
    stac_port: int = 0,
    data_port: int = 0,
) -> None:
    """Serve an offline world until Ctrl-C or SIGTERM, then stop cleanly.

    Args:
        directory: World directory.
        scenes: Number of scenes.
        size: World size (see :func:`~scenestore_world.resolve_size`).
        seed: World seed.
        on_ready: Called once with the running world (e.g. to print ``world.stac_url``).
        faults: Fault plan of the COG file server (none by default).
        stac_faults: Fault plan of the STAC API (none by default).
        stac_port: Port of the STAC API (0: any free port).
        data_port: Port of the COG file server (0: any free port).

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
        with OfflineWorld(
            directory,
            scenes=scenes,
            size=size,
            seed=seed,
            faults=faults,
            stac_faults=stac_faults,
            stac_port=stac_port,
            data_port=data_port,
        ) as world:
            if on_ready is not None:
                on_ready(world)
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    if not world.is_alive():
                        raise SourceError(
                            f"The offline world (STAC API {world.stac_url!r}, COGs "
                            f"{world.data_url!r}) stopped unexpectedly; restart the world."
                        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = [
    "KEEP",
    "OfflineWorld",
    "free_port",
    "rustac_executable",
    "search_all",
    "serve_forever",
]
