"""A read-only HTTP/1.1 file server with byte-range support, request counting and faults.

GDAL reads Cloud-Optimized GeoTIFFs over ``/vsicurl/`` with ``Range`` requests (single and
multiple ranges) on kept-alive connections; Python's ``http.server`` does not answer those, so
this module does. Every request is counted per path, so tests can assert exactly which files a
client fetched, and a :class:`~scenestore_world.faults.FaultPlan` can make a share of them fail.

The handler base here is shared with the STAC proxy (:mod:`scenestore_world.proxy`): quiet,
kept-alive, counted, faultable, and answering the control endpoints under
:data:`CONTROL_PREFIX` (never counted, never faulted) with which another process reads the
counters and sets the faults (:mod:`scenestore_world.remote`).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import socket
import threading
import uuid
from email.utils import formatdate
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from scenestore.errors import StoreError
from scenestore_world.faults import FaultKind, FaultPlan
from scenestore_world.traffic import (
    CONTROL_PREFIX,
    Controls,
    PathStats,
    RequestRecord,
    Traffic,
    TrafficView,
    WorldHandler,
)

_CHUNK = 256 * 1024


class Target(NamedTuple):
    """Where a request path leads.

    Attributes:
        key: Path relative to the served root (the stats key), or the raw request path when it
            is not allowed.
        file: The file to serve, or None (missing, a directory, outside the root).
        is_allowed: False for paths with ``.``/``..``/backslash/NUL segments (answered 400).
    """

    key: str
    file: Path | None
    is_allowed: bool


def parse_range(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """Parse a ``Range`` header against a representation of ``size`` bytes (RFC 9110 14.2).

    Args:
        header: The header value, e.g. ``"bytes=0-99,200-"``, or None.
        size: Length of the file.

    Returns:
        None when the header is absent or malformed (serve the whole file), an empty list when
        no range is satisfiable (answer 416), else inclusive ``(first, last)`` byte positions.
    """
    if header is None:
        return None
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[tuple[int, int]] = []
    for raw in specs.split(","):
        spec = raw.strip()
        if not spec:
            continue
        first, dash, last = spec.partition("-")
        if not dash or not (first or last):
            return None
        if (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:  # suffix range: the last N bytes
            count = int(last)
            if count > 0 and size > 0:
                ranges.append((max(0, size - count), size - 1))
            continue
        start = int(first)
        if last and int(last) < start:
            return None
        if start < size:
            ranges.append((start, min(int(last), size - 1) if last else size - 1))
    return ranges


class _FileHandler(WorldHandler):
    server: _Server

    def request_key(self) -> str:
        return self.server.owner.resolve(self.path).key

    def respond(self, key: str, head: bool, body: bytes) -> None:
        if self.command not in ("GET", "HEAD"):
            self.send_text(405, f"Method {self.command} not allowed", head, {"Allow": "GET, HEAD"})
            return
        target = self.server.owner.resolve(self.path)
        if not target.is_allowed:
            self.send_text(400, "Bad path: no '..', '.' or '\\' segments", head)
        elif target.file is None:
            self.send_text(404, "Not found", head)
        else:
            self._send_file(target.file, self.headers.get("Range"), head)

    def _send_file(self, file: Path, range_header: str | None, head: bool) -> None:
        with open(file, "rb") as fh:
            info = os.fstat(fh.fileno())
            size = info.st_size
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            common = {
                "Accept-Ranges": "bytes",
                "Last-Modified": formatdate(info.st_mtime, usegmt=True),
                "ETag": f'"{info.st_mtime_ns:x}-{size:x}"',
            }
            ranges = parse_range(range_header, size)
            if ranges == []:
                common["Content-Range"] = f"bytes */{size}"
                self.send_text(416, "Range not satisfiable", head, common)
                return
            if ranges is None:
                self.send_head(200, {"Content-Type": ctype, **common}, size)
                if not head:
                    self._copy(fh, 0, size)
                return
            if len(ranges) == 1:
                first, last = ranges[0]
                common["Content-Range"] = f"bytes {first}-{last}/{size}"
                self.send_head(206, {"Content-Type": ctype, **common}, last - first + 1)
                if not head:
                    self._copy(fh, first, last - first + 1)
                return
            boundary = uuid.uuid4().hex
            heads = [
                (
                    f"--{boundary}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n"
                ).encode()
                for a, b in ranges
            ]
            tail = f"--{boundary}--\r\n".encode()
            length = sum(len(h) + (b - a + 1) + 2 for h, (a, b) in zip(heads, ranges, strict=True))
            ctype = f"multipart/byteranges; boundary={boundary}"
            self.send_head(206, {"Content-Type": ctype, **common}, length + len(tail))
            if head:
                return
            for part_head, (a, b) in zip(heads, ranges, strict=True):
                self.write_body(part_head)
                self._copy(fh, a, b - a + 1)
                self.write_body(b"\r\n")
            self.write_body(tail)

    def _copy(self, fh: Any, offset: int, length: int) -> None:
        fh.seek(offset)
        left = length
        while left > 0:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                break
            self.write_body(chunk)
            left -= len(chunk)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive clients must not block shutdown

    def __init__(self, address: tuple[str, int], owner: Any, handler: type[WorldHandler]) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Drop the connection quietly: a client hanging up is not a server error."""

    def close_connections(self) -> None:
        with self._connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LoopbackServer(TrafficView):
    """Base of the world's in-process HTTP servers: lifecycle, counters, faults, controls.

    The constructor does no I/O; :meth:`start` binds (``port`` 0 picks a free one) and serves
    from daemon threads. Use it as a context manager to stop it reliably.

    Args:
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        faults: Fault plan applied to the requests (none by default).
        name: Name of this server's counters at the control endpoints (``"cog"``, ``"stac"``).

    Attributes:
        traffic: The request log and fault injector.
        controls: What the control endpoints under :data:`CONTROL_PREFIX` reach; by default
            only this server's own traffic, under ``name``.
    """

    _handler: type[WorldHandler]

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        name: str = "cog",
    ) -> None:
        self.host = host
        self.traffic = Traffic(faults)
        self.controls = Controls({name: self.traffic})
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            StoreError: If the server is not running.
        """
        if self._server is None:
            raise StoreError(
                f"{type(self).__name__} is not started; call start() or use it as a "
                "context manager."
            )
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def faults(self) -> FaultPlan | None:
        """The fault plan in force; setting one restarts its RNG and fault count."""
        return self.traffic.plan

    @faults.setter
    def faults(self, plan: FaultPlan | None) -> None:
        self.traffic.plan = plan

    def start(self) -> LoopbackServer:
        """Bind and start serving in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        self._prepare()
        self._server = _Server((self.host, self._port), self, self._handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def _prepare(self) -> None:
        """Check the configuration before binding (subclasses)."""

    def stop(self) -> None:
        """Stop serving, close open connections and release the port. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self) -> list[RequestRecord]:
        """Every request answered since start or the last :meth:`reset_stats`, in order."""
        return self.traffic.requests()

    def reset_stats(self) -> None:
        """Forget every request counted so far."""
        self.traffic.reset()


class RangeFileServer(LoopbackServer):
    """Serve a directory read-only over HTTP/1.1 on loopback, counting every request.

    Runs in the calling process (threads). Clients in the same process that hold the GIL while
    doing HTTP (GDAL under rasterio) can deadlock against it; :class:`~scenestore_world.
    OfflineWorld` therefore runs it in a child process (:mod:`scenestore_world.remote`).

    Args:
        root: Directory to serve. Paths outside it (``..``, symlinks out) are never served;
            directories are never listed; paths under :data:`CONTROL_PREFIX` are reserved.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        faults: Fault plan applied to file requests (none by default).
    """

    _handler = _FileHandler

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults, name="cog")
        self.root = Path(root)
        self._root_resolved = self.root.resolve()

    def _prepare(self) -> None:
        if not self.root.is_dir():
            raise StoreError(
                f"Cannot serve {str(self.root)!r}: not a directory; "
                "expected an existing directory of files."
            )
        self._root_resolved = self.root.resolve()

    def start(self) -> RangeFileServer:
        """Bind and start serving in a daemon thread; returns ``self``."""
        super().start()
        return self

    def __enter__(self) -> RangeFileServer:
        return self.start()

    def resolve(self, request_path: str) -> Target:
        """Map a request target to a file under the root; never leaves the root."""
        path = unquote(urlsplit(request_path).path)
        segments = path.split("/")
        if (
            not path.startswith("/")
            or "\x00" in path
            or "\\" in path
            or any(s in (".", "..") for s in segments)
        ):
            return Target(request_path, None, is_allowed=False)
        parts = [s for s in segments if s]
        key = "/".join(parts)
        candidate = self._root_resolved.joinpath(*parts).resolve()
        # resolve() follows symlinks, so a link pointing outside the root is refused too
        if not candidate.is_relative_to(self._root_resolved) or not candidate.is_file():
            return Target(key, None, is_allowed=True)
        return Target(key, candidate, is_allowed=True)


__all__ = [
    "CONTROL_PREFIX",
    "FaultKind",
    "LoopbackServer",
    "PathStats",
    "RangeFileServer",
    "RequestRecord",
    "Target",
    "parse_range",
]
