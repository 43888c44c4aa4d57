"""A read-only HTTP/1.1 file server with byte-range support, request counting and a fault hook.

GDAL reads Cloud-Optimized GeoTIFFs over ``/vsicurl/`` with ``Range`` requests (single and
multiple ranges) on kept-alive connections; Python's ``http.server`` does not answer those, so
this module does. Every request is counted per path, so tests can assert exactly which files a
client fetched.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

from scenestore.errors import StoreError

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered.

    Attributes:
        method: HTTP method, ``"GET"`` or ``"HEAD"``.
        path: Path relative to the served root (``"<scene>/<BAND>.tif"``), or the raw request
            path when it could not be mapped into the root.
        status: Status code sent.
        range: The ``Range`` header as received, or None.
        bytes_sent: Body bytes written (0 for HEAD).
    """

    method: str
    path: str
    status: int
    range: str | None
    bytes_sent: int


@dataclass(frozen=True)
class PathStats:
    """Counters of the requests for one path.

    Attributes:
        requests: All requests, any method.
        gets: GET requests.
        heads: HEAD requests.
        range_requests: Requests that carried a ``Range`` header.
        bytes_sent: Body bytes sent.
        statuses: Count of each status code sent.
    """

    requests: int = 0
    gets: int = 0
    heads: int = 0
    range_requests: int = 0
    bytes_sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


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


class FaultPolicy(Protocol):
    """Hook consulted before every request is served (for fault injection in tests)."""

    def intercept(self, method: str, path: str, handler: BaseHTTPRequestHandler) -> int | None:
        """Optionally take over the response.

        Args:
            method: The HTTP method.
            path: The path relative to the served root (as in :class:`RequestRecord`).
            handler: The live request handler; write a response to it or drop its connection.

        Returns:
            None to let the server answer normally, or the status code the hook sent itself.
        """
        ...


class NoFaults:
    """The default :class:`FaultPolicy`: never interferes."""

    def intercept(self, method: str, path: str, handler: BaseHTTPRequestHandler) -> int | None:
        """Serve normally."""
        return None


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so GDAL reuses its connections
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    # headers and body go out in separate writes; with Nagle on, each small range request
    # would wait ~40 ms for the client's delayed ACK
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        """Stay quiet: requests are counted, not logged."""

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        """Serve a file or byte ranges of it."""
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802 (stdlib naming)
        """Serve the headers a GET would get."""
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        owner = self.server.owner
        range_header = self.headers.get("Range")
        target = owner.resolve(self.path)
        key, file = target.key, target.file
        status, sent = 500, 0
        try:
            hooked = owner.faults.intercept(self.command, key, self)
            if hooked is not None:
                status = hooked
            elif not target.is_allowed:
                status = 400
                sent = self._send_text(status, "Bad path: no '..', '.' or '\\' segments", head)
            elif file is None:
                status = 404
                sent = self._send_text(status, "Not found", head)
            else:
                status, sent = self._send_file(file, range_header, head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        finally:
            owner.record(RequestRecord(self.command, key, status, range_header, sent))

    def _send_text(
        self, status: int, text: str, head: bool, headers: dict[str, str] | None = None
    ) -> int:
        body = f"{text}\n".encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return 0
        self.wfile.write(body)
        return len(body)

    def _send_file(self, file: Path, range_header: str | None, head: bool) -> tuple[int, int]:
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
                return 416, self._send_text(416, "Range not satisfiable", head, common)
            if ranges is None:
                self._start(200, ctype, size, common)
                return 200, 0 if head else self._copy(fh, 0, size)
            if len(ranges) == 1:
                first, last = ranges[0]
                common["Content-Range"] = f"bytes {first}-{last}/{size}"
                self._start(206, ctype, last - first + 1, common)
                return 206, 0 if head else self._copy(fh, first, last - first + 1)
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
            self._start(
                206, f"multipart/byteranges; boundary={boundary}", length + len(tail), common
            )
            if head:
                return 206, 0
            sent = 0
            for part_head, (a, b) in zip(heads, ranges, strict=True):
                self.wfile.write(part_head)
                sent += len(part_head) + self._copy(fh, a, b - a + 1)
                self.wfile.write(b"\r\n")
                sent += 2
            self.wfile.write(tail)
            return 206, sent + len(tail)

    def _start(self, status: int, ctype: str, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _copy(self, fh: Any, offset: int, length: int) -> int:
        fh.seek(offset)
        sent = 0
        while sent < length:
            chunk = fh.read(min(_CHUNK, length - sent))
            if not chunk:
                break
            self.wfile.write(chunk)
            sent += len(chunk)
        return sent


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive clients must not block shutdown

    def __init__(self, address: tuple[str, int], owner: RangeFileServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

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


class RangeFileServer:
    """Serve a directory read-only over HTTP/1.1 on loopback, counting every request.

    The constructor does no I/O; :meth:`start` binds an ephemeral port (or ``port``) and serves
    from a daemon thread. Use it as a context manager to stop it reliably.

    Args:
        root: Directory to serve. Paths outside it (``..``, symlinks out) are never served;
            directories are never listed.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        faults: Hook consulted before each request; :class:`NoFaults` by default.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPolicy | None = None,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.faults: FaultPolicy = faults or NoFaults()
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            StoreError: If the server is not running.
        """
        if self._server is None:
            raise StoreError(
                f"RangeFileServer for {str(self.root)!r} is not started; "
                "call start() or use it as a context manager."
            )
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> RangeFileServer:
        """Bind and start serving in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        if not self.root.is_dir():
            raise StoreError(
                f"Cannot serve {str(self.root)!r}: not a directory; "
                "expected an existing directory of files."
            )
        self._root_resolved = self.root.resolve()
        self._server = _Server((self.host, self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name=f"range-file-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

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

    def __enter__(self) -> RangeFileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    def record(self, entry: RequestRecord) -> None:
        """Count one answered request (called by the handler threads)."""
        with self._lock:
            self._log.append(entry)

    def requests(self) -> list[RequestRecord]:
        """Every request answered since start or the last :meth:`reset_stats`, in order."""
        with self._lock:
            return list(self._log)

    def stats(self) -> dict[str, PathStats]:
        """Per-path counters since start or the last :meth:`reset_stats`."""
        grouped: dict[str, list[RequestRecord]] = {}
        for rec in self.requests():
            grouped.setdefault(rec.path, []).append(rec)
        return {path: _summarise(records) for path, records in grouped.items()}

    def reset_stats(self) -> None:
        """Forget every request counted so far."""
        with self._lock:
            self._log.clear()


def _summarise(records: list[RequestRecord]) -> PathStats:
    return PathStats(
        requests=len(records),
        gets=sum(r.method == "GET" for r in records),
        heads=sum(r.method == "HEAD" for r in records),
        range_requests=sum(r.range is not None for r in records),
        bytes_sent=sum(r.bytes_sent for r in records),
        statuses=dict(Counter(r.status for r in records)),
    )


__all__ = [
    "FaultPolicy",
    "NoFaults",
    "PathStats",
    "RangeFileServer",
    "RequestRecord",
    "Target",
    "parse_range",
]
