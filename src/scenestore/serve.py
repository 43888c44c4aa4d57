"""A STAC API over a store, on loopback: what is stored, searchable offline by any STAC client.

On a compute node without internet, ``scenestore serve --store PATH`` (or :func:`start`)
serves every stored scene as a STAC item in one collection (:data:`COLLECTION_ID`) with
``rustac serve``, so pystac-client, QGIS's STAC source or a notebook can ask "which stored
scenes cover this area in this season?" the way they ask Earth Search, and read the answer
from the store itself: each item (:func:`~scenestore.store.catalog.build_item`) has one
asset per committed band whose href is the band's zarr v3 array (a ``file://`` URL for a
local store, ``s3://...`` for an object store) and a ``zarr`` asset for the scene's group::

    from pystac_client import Client
    import xarray as xr
    import zarr

    api = Client.open("http://127.0.0.1:7822")
    items = api.search(collections=["scenestore"], bbox=[12.3, 41.8, 12.6, 42.0],
                       datetime="2024-06-01/2024-08-31").item_collection()
    clear = [i for i in items if i.properties.get("eo:cloud_cover", 100) <= 20]
    red = zarr.open_array(clear[0].assets["B04"].href, mode="r")[...]   # one band, as stored
    scene = xr.open_zarr(clear[0].assets["zarr"].href)                  # the scene's group

Local hrefs are ``file://`` URLs, not bare paths: pystac's ``Asset.get_absolute_href()``
(which odc-stac and most tools call) would resolve a bare ``/data/...`` against the item's
HTTP link, to ``http://127.0.0.1:7822/data/...``. zarr and xarray open ``file://`` URLs.

What the server can and cannot answer: it is rustac's in-memory backend, which searches by
``collections``, ``bbox``, ``intersects``, ``datetime`` and ``ids``, with paging (``next``
links). It does **not** evaluate CQL2 ``filter`` (a filter silently matches nothing, and
``/conformance`` does not list it: pystac-client warns "does not conform to FILTER"), and it
ignores ``sortby`` (items come in identifier order). Filter cloud cover and other properties
client-side, as above.

Reading the pixels needs a zarr v3 reader (zarr-python, xarray): GDAL-based readers
(rasterio, QGIS's raster layers, odc-stac's loader) do not decode these arrays (GDAL 3.10.3
answers "Unsupported codec: bytes"), and odc-stac 0.5 does not take ``application/vnd.zarr``
assets for bands.

The server answers with what the store held when it started (restart it after an ingest),
listens on 127.0.0.1 unless told otherwise, and serves metadata only: the band arrays are
read by the client straight from the store, so the client needs the store's file system or,
for an object store, its credentials. rustac is not a dependency of scenestore itself:
install it with ``pip install rustac`` (or the ``serve`` extra,
``pip install 'scenestore[serve]'``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenestore.errors import (
    DamagedSceneError,
    InvalidRequestError,
    SourceError,
)

if TYPE_CHECKING:
    from scenestore.store import StoreLocation
    from scenestore.store.inventory import SceneInfo
    from scenestore.store.scenes import SceneStore

logger = logging.getLogger(__name__)

#: The one collection every served item belongs to.
COLLECTION_ID = "scenestore"
#: Default address: loopback only (the API lists the store to whoever can reach it).
DEFAULT_HOST = "127.0.0.1"
#: rustac's own default port; 0 picks a free one.
DEFAULT_PORT = 7822
#: What to tell a user who has no rustac.
INSTALL_HINT = "install it with `pip install rustac` (or `pip install 'scenestore[serve]'`)"

# loopback only: never route the readiness probes through a proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RustacMissingError(SourceError):
    """No ``rustac`` executable is installed (``scenestore serve`` needs it)."""


def rustac_executable() -> Path:
    """The ``rustac`` CLI installed next to the running Python, else the one on ``PATH``.

    Next to the interpreter comes first: a virtual environment's ``bin`` is often not on
    ``PATH`` (``.venv/bin/python -m ...``), and its rustac is the one installed with it.

    Raises:
        RustacMissingError: If no ``rustac`` executable can be found (a :class:`SourceError`).
    """
    beside = Path(sys.executable).parent / "rustac"
    if beside.is_file():
        return beside
    found = shutil.which("rustac")
    if found:
        return Path(found)
    raise RustacMissingError(
        f"No 'rustac' executable next to {sys.executable!r} or on PATH; {INSTALL_HINT}."
    )


def store_items(scenes: SceneStore) -> list[dict[str, Any]]:
    """The STAC items of every stored scene with at least one committed band, as dicts.

    One item per scene (:func:`~scenestore.store.catalog.build_item`), in the collection
    :data:`COLLECTION_ID`, asset hrefs absolute (``file://`` URLs for a local store), no
    links (the server writes its own). A scene that is damaged, records no sensing time or
    is removed while it is read is left out with a warning: the API serves only what a
    client can read.

    Raises:
        StoreError: If the store is missing or cannot be read.
    """
    from scenestore.store.inventory import list_scenes

    infos = []
    # The one place the scenes are listed. From the commit records and array metadata (scan),
    # not the index: a scene whose band metadata was damaged after it was indexed is not served.
    for info in list_scenes(scenes, scan=True):
        if not info.bands:
            continue
        if info.damaged:
            logger.warning(
                "Not serving scene %s: %s; run `scenestore verify --repair` on it.",
                info.identifier,
                "; ".join(info.damaged),
            )
            continue
        infos.append(info)
    local = scenes.client.local_root() is not None
    # One scene after another: 8 threads were no faster on 500 scenes (zarr's metadata
    # decoding and the footprint's reprojection hold the GIL).
    built = (_item_dict(scenes, info, local=local) for info in infos)
    return [doc for doc in built if doc is not None]


def _item_dict(scenes: SceneStore, info: SceneInfo, *, local: bool) -> dict[str, Any] | None:
    """One scene's item as a dict, or None (with a log line) when it cannot be served."""
    from scenestore.store.catalog import build_item

    try:
        item = build_item(scenes, info)
    except (FileNotFoundError, KeyError):  # removed (rm/prune) since it was listed
        logger.info("Scene %s was removed while it was read", info.identifier)
        return None
    except (DamagedSceneError, InvalidRequestError) as err:
        logger.warning("Not serving scene %s: %s", info.identifier, err)
        return None
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    doc["collection"] = COLLECTION_ID
    doc["links"] = []
    if local:
        for asset in doc["assets"].values():
            asset["href"] = _file_url(asset["href"])
    return doc


def _file_url(href: str) -> str:
    """A local path as a ``file://`` URL, so no client resolves it against the API's URL.

    pystac's ``Asset.get_absolute_href()`` (which odc-stac and most tools call) takes a bare
    path as relative to the item's HTTP self link: ``/data/s.zarr/B04`` becomes
    ``http://127.0.0.1:7822/data/s.zarr/B04``. Not percent-encoded: fsspec, through which
    zarr and xarray open ``file://`` URLs, does not decode it.
    """
    path = Path(href)
    return f"file://{path.as_posix()}" if path.is_absolute() else href


def collection_dict(
    items: list[dict[str, Any]], *, title: str | None = None, instance: str | None = None
) -> dict[str, Any]:
    """The collection document of ``items``: spatial and temporal extent computed from them.

    An empty list gives the whole world and an open interval (a valid, empty collection).
    ``instance`` (a random token) becomes ``scenestore:instance``, so that a readiness probe
    knows it reached this server and not another one on the same port.
    """
    boxes = [i["bbox"] for i in items if i.get("bbox")]
    bbox = (
        [
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ]
        if boxes
        else [-180.0, -90.0, 180.0, 90.0]
    )
    times = sorted(
        datetime.fromisoformat(str(t).replace("Z", "+00:00"))
        for t in (i.get("properties", {}).get("datetime") for i in items)
        if t
    )
    interval = [_iso(times[0]), _iso(times[-1])] if times else [None, None]
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": COLLECTION_ID,
        "title": title or "Scenes in a scenestore store",
        "description": "Sentinel-2 L2A scenes stored by scenestore; each band asset is the "
        "band's zarr v3 array in the store (open with zarr.open_array, or the 'zarr' asset "
        "with xarray.open_zarr).",
        "license": "proprietary",
        "links": [
            {
                "rel": "license",
                "href": "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice",
                "title": "Copernicus Sentinel data terms",
            }
        ],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        **({"scenestore:instance": instance} if instance else {}),
    }


@dataclass
class StacServer:
    """A running ``rustac serve`` over a store's items (from :func:`start`).

    Use it as a context manager, or call :meth:`stop`; it is also stopped when garbage
    collected or when the interpreter exits, so no rustac outlives its caller by accident.

    Attributes:
        url: Root URL of the STAC API, e.g. ``http://127.0.0.1:7822``.
        items: Number of items served.
        collection: The collection id (:data:`COLLECTION_ID`).
        bbox: The served items' overall bbox (west, south, east, north), None when empty.
        process: The rustac process.
    """

    url: str
    items: int
    process: subprocess.Popen[bytes]
    workdir: Path
    collection: str = COLLECTION_ID
    bbox: list[float] | None = None
    _finalizer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _shutdown, self.process, self.workdir)

    def stop(self) -> None:
        """Stop rustac (SIGTERM, then SIGKILL after 5 s) and remove its files. Idempotent."""
        self._finalizer()

    def is_alive(self) -> bool:
        """Whether rustac is still running."""
        return self.process.poll() is None

    def __enter__(self) -> StacServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    scenes: SceneStore | StoreLocation,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    startup_timeout: float = 30.0,
) -> StacServer:
    """Serve a store's scenes as a STAC API with ``rustac serve`` (memory backend).

    The items (:func:`store_items`) and their collection are written as JSON into a private
    temporary directory (never into the store, which may be read-only) and loaded by rustac;
    this returns once the API answers with every item.

    Args:
        scenes: The store (a :class:`~scenestore.store.scenes.SceneStore` or its location).
        host: Address to listen on; 127.0.0.1 (default) serves this machine only.
        port: Port to listen on; 0 picks a free one.
        startup_timeout: Seconds to wait for the API to answer.

    Returns:
        The running server; :attr:`StacServer.url` is its root URL.

    Raises:
        RustacMissingError: If rustac is not installed.
        InvalidRequestError: If the port is out of range or already in use.
        StoreError: If the store is missing or cannot be read.
        SourceError: If rustac exits or does not answer within ``startup_timeout``.
    """
    from scenestore.store import open_store

    if not 0 <= port <= 65535:
        raise InvalidRequestError(
            f"Port {port} is out of range; expected 1-65535, or 0 for any free port."
        )
    if not host.strip():
        raise InvalidRequestError("Host '' is empty; expected an address such as 127.0.0.1.")
    exe = rustac_executable()  # before reading the store: a missing rustac is said first
    _probe_port(host, port)  # and a bad host or a taken port, before a long listing
    store = open_store(scenes)
    items = store_items(store)
    workdir = Path(tempfile.mkdtemp(prefix="scenestore-serve-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        instance = uuid.uuid4().hex
        hrefs = _write_documents(workdir, items, instance)
        for attempt in range(3):
            chosen = _probe_port(host, port)
            log_path = workdir / "rustac.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [str(exe), "serve", "--addr", f"{_url_host(host)}:{chosen}", *map(str, hrefs)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session: Ctrl-C in a terminal reaches only the caller, which then
                    # stops rustac itself (no race between the two over who exits first).
                    start_new_session=True,
                )
            url = f"http://{_probe_host(host)}:{chosen}"
            try:
                _wait_until_ready(process, url, items, instance, log_path, startup_timeout)
            except SourceError:
                stop_process(process)
                in_use = "in use" in log_path.read_text(errors="replace").lower()
                if port or attempt == 2 or not in_use:
                    raise
                continue  # someone took the free port in between: pick another
            bbox = collection_dict(items)["extent"]["spatial"]["bbox"][0] if items else None
            return StacServer(
                url=url, items=len(items), process=process, workdir=workdir, bbox=bbox
            )
    except BaseException:  # also Ctrl-C while waiting: no rustac is left behind
        if process is not None:
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    raise SourceError("rustac serve did not start; expected it to after three ports.")


def usage_example(server: StacServer) -> str:
    """A ready-to-paste pystac-client snippet that searches ``server`` and reads one band."""
    bbox = ", ".join(f"{v:.4f}" for v in server.bbox) if server.bbox else "-180, -90, 180, 90"
    return "\n".join(
        [
            "from pystac_client import Client",
            "import zarr",
            f'api = Client.open("{server.url}")',
            f'items = api.search(collections=["{server.collection}"], bbox=[{bbox}],',
            '                    datetime="2015-01-01/2100-01-01").item_collection()',
            "# no CQL2 filter here: filter cloud cover client-side",
            'clear = [i for i in items if i.properties.get("eo:cloud_cover", 100) <= 20]',
            'red = zarr.open_array(clear[0].assets["B04"].href, mode="r")[...]',
        ]
    )


def _write_documents(workdir: Path, items: list[dict[str, Any]], instance: str) -> list[Path]:
    collection = workdir / "collection.json"
    collection.write_text(json.dumps(collection_dict(items, instance=instance)))
    if not items:
        return [collection]  # an empty store: the collection alone, no empty NDJSON file
    path = workdir / "items.ndjson"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return [collection, path]


def _wait_until_ready(
    process: subprocess.Popen[bytes],
    url: str,
    items: list[dict[str, Any]],
    instance: str,
    log_path: Path,
    timeout: float,
) -> None:
    """Poll the API until it serves this collection and the last item; no fixed sleep.

    rustac loads the items in file order and reports no ``numberMatched``: the last one
    found means all of them are. The collection's ``scenestore:instance`` proves the
    answer comes from this rustac, not from another server that held the port first.
    """
    body: dict[str, Any] = {"collections": [COLLECTION_ID], "limit": 1}
    if items:
        body["ids"] = [items[-1]["id"]]
    deadline = time.monotonic() + timeout
    delay = 0.02
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise SourceError(
                f"rustac serve exited with code {process.returncode} before serving {url!r}; "
                f"its output was: {tail!r}"
            )
        try:
            ours = _fetch_json(f"{url}/collections/{COLLECTION_ID}").get("scenestore:instance")
            found = len(_fetch_json(f"{url}/search", body).get("features", []))
        except (OSError, ValueError) as err:  # not listening yet, or half-started
            last = str(err)
        else:
            if ours != instance:  # rustac failed to bind and someone else answers
                stop_process(process)
                raise InvalidRequestError(
                    f"Another server answers at {url!r}; pass another --port, or --port 0 for "
                    "any free one."
                )
            if found == (1 if items else 0):
                return
            last = "the items are not searchable yet"
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    stop_process(process)
    raise SourceError(
        f"rustac serve at {url!r} did not answer within {timeout:g} s ({last}); expected it "
        f"to serve {len(items)} items."
    )


def _fetch_json(
    url: str, body: dict[str, Any] | None = None, timeout: float = 2.0
) -> dict[str, Any]:
    """GET ``url`` (POST ``body`` as JSON when given) and return the JSON object answered."""
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with _OPENER.open(request, timeout=timeout) as response:
        doc = json.loads(response.read())
    return doc if isinstance(doc, dict) else {}  # not a STAC answer: the probe goes on


def _probe_port(host: str, port: int) -> int:
    """Bind ``host:port`` for a moment: the port, or a free one for 0, as rustac will find it.

    rustac says a port is taken only after a readiness probe may have reached whoever holds
    it; this says it first. A free port can be taken again before rustac binds it (the
    caller retries then).

    Raises:
        InvalidRequestError: If the port is in use, or ``host`` is no address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as rustac binds: a port in TIME_WAIT after a previous serve is free to it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InvalidRequestError(
                    f"Port {port} on {host} is already in use; pass another --port, or "
                    "--port 0 for any free one."
                ) from err
            raise InvalidRequestError(
                f"Cannot listen on {host}:{port} ({err.strerror or err}); expected an address "
                "of this machine, e.g. 127.0.0.1."
            ) from err
        return int(sock.getsockname()[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _probe_host(host: str) -> str:
    """Where this machine reaches a server listening on ``host`` (any address: loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return _url_host(host)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def stop_process(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _shutdown(process: subprocess.Popen[bytes], workdir: Path) -> None:
    with contextlib.suppress(OSError):
        stop_process(process)
    shutil.rmtree(workdir, ignore_errors=True)


__all__ = [
    "COLLECTION_ID",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "RustacMissingError",
    "StacServer",
    "collection_dict",
    "rustac_executable",
    "start",
    "stop_process",
    "store_items",
    "usage_example",
]
