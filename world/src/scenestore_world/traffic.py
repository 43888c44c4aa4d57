"""What the world's HTTP servers share: request records, fault handling and control endpoints.

:class:`WorldHandler` is the request handler base of the file server and the STAC proxy: it
reads the request, answers control requests under :data:`CONTROL_PREFIX` (uncounted and never
faulted), applies the fault plan to every other request, lets the subclass answer, and records
the outcome in a :class:`Traffic`. :class:`TrafficView` is the read side tests use, the same
for a server in this process and one in a child process.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from scenestore.errors import InvalidRequestError
from scenestore_world.faults import NO_FAULT, Decision, FaultInjector, FaultKind, FaultPlan

#: Request paths under this prefix reach the control endpoints, never data.
CONTROL_PREFIX = "/_world/"

_STATUS_FAULTS = {FaultKind.STATUS_503: 503, FaultKind.STATUS_429: 429}
_BODY_FAULTS = (FaultKind.RESET_MID_BODY, FaultKind.TRUNCATE)


@dataclass(frozen=True)
class RequestRecord:
    """One request a server answered.

    Attributes:
        method: HTTP method, e.g. ``"GET"`` or ``"HEAD"``.
        path: Path without the leading ``/`` and the query (for the file server: relative to
            the served root, ``"<scene>/<BAND>.tif"``), or the raw request path when it could
            not be mapped into the root.
        status: Status code sent (for a body fault: the status of the interrupted answer).
        range: The ``Range`` header as received, or None.
        bytes_sent: Body bytes written (0 for HEAD).
        fault: The injected :class:`~scenestore_world.faults.FaultKind` value, or None.
        at: When the request was received (``time.time()``), to measure request rates.
    """

    method: str
    path: str
    status: int
    range: str | None
    bytes_sent: int
    fault: str | None = None
    at: float = 0.0


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
        faults: Count of each injected fault kind (``"status_503"``, ``"truncate"``...).
    """

    requests: int = 0
    gets: int = 0
    heads: int = 0
    range_requests: int = 0
    bytes_sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)


def summarise(records: Iterable[RequestRecord]) -> dict[str, PathStats]:
    """Per-path counters of ``records``."""
    grouped: dict[str, list[RequestRecord]] = {}
    for rec in records:
        grouped.setdefault(rec.path, []).append(rec)
    return {
        path: PathStats(
            requests=len(recs),
            gets=sum(r.method == "GET" for r in recs),
            heads=sum(r.method == "HEAD" for r in recs),
            range_requests=sum(r.range is not None for r in recs),
            bytes_sent=sum(r.bytes_sent for r in recs),
            statuses=dict(Counter(r.status for r in recs)),
            faults=dict(Counter(r.fault for r in recs if r.fault is not None)),
        )
        for path, recs in grouped.items()
    }


def most_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most timestamps (e.g. :attr:`RequestRecord.at`) in any half-open ``window`` seconds."""
    ordered, first, best = sorted(times), 0, 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - window:
            first += 1
        best = max(best, last - first + 1)
    return best


class TrafficView(abc.ABC):
    """Read side of a server's request counters: derived views over :meth:`requests`."""

    @abc.abstractmethod
    def requests(self) -> list[RequestRecord]:
        """Every request answered since start or the last :meth:`reset_stats`, in order."""

    @abc.abstractmethod
    def reset_stats(self) -> None:
        """Forget every request counted so far."""

    def stats(self) -> dict[str, PathStats]:
        """Per-path counters since start or the last :meth:`reset_stats`."""
        return summarise(self.requests())

    def fault_count(self, kind: FaultKind | str | None = None) -> int:
        """Faults injected since start or the last :meth:`reset_stats` (of one kind, or all)."""
        wanted = None if kind is None else FaultKind(kind).value
        return sum(
            r.fault is not None and (wanted is None or r.fault == wanted) for r in self.requests()
        )


class Traffic:
    """One server's request log and fault injector; thread-safe.

    Reads (:meth:`requests`, :meth:`reset`) first wait briefly for requests in flight to be
    recorded: a client has the whole answer before the handler thread records it, and a test
    that reads the counters right after a read must see that read.

    Args:
        plan: Fault plan to start with (none by default).
    """

    def __init__(self, plan: FaultPlan | None = None, *, settle_s: float = 2.0) -> None:
        self._injector = FaultInjector(plan)
        self._log: list[RequestRecord] = []
        self._in_flight = 0
        self._settle_s = settle_s
        self._cond = threading.Condition()

    @property
    def plan(self) -> FaultPlan | None:
        """The fault plan in force; setting one (or None) restarts its RNG and fault cap."""
        return self._injector.plan

    @plan.setter
    def plan(self, plan: FaultPlan | None) -> None:
        if plan is not None and not isinstance(plan, FaultPlan):
            raise TypeError(
                f"Fault plan {plan!r} is not a FaultPlan; expected a FaultPlan or None."
            )
        self._injector = FaultInjector(plan)

    def decide(self, key: str) -> Decision:
        """The fault decision for the next request for ``key``."""
        return self._injector.decide(key)

    def begin(self) -> None:
        """Note a request in flight (called once its headers are read)."""
        with self._cond:
            self._in_flight += 1

    def record(self, entry: RequestRecord) -> None:
        """Count one answered request and end it in flight."""
        with self._cond:
            self._log.append(entry)
            self._in_flight -= 1
            self._cond.notify_all()

    def requests(self) -> list[RequestRecord]:
        """Every request answered since start or the last :meth:`reset`, in order."""
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight <= 0, timeout=self._settle_s)
            return list(self._log)

    def reset(self) -> None:
        """Forget every request counted so far."""
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight <= 0, timeout=self._settle_s)
            self._log.clear()


class Controls:
    """The control endpoints under :data:`CONTROL_PREFIX`, over the traffic of named servers.

    ``GET health``; ``GET requests?server=NAME`` (JSON list of records); ``POST
    reset?server=NAME``; ``GET faults?server=NAME`` and ``POST faults?server=NAME`` with a
    plan object or ``null``; ``POST <action>`` with a JSON document for each action given.
    ``server`` defaults to the first name.

    Args:
        traffic: Traffic per server name (``"cog"``, ``"stac"``).
        actions: Further ``POST`` endpoints: name to a function of the posted document.
    """

    def __init__(
        self,
        traffic: Mapping[str, Traffic],
        *,
        actions: Mapping[str, Callable[[Any], None]] | None = None,
    ) -> None:
        self.traffic = dict(traffic)
        self.actions = dict(actions or {})

    def answer(self, handler: WorldHandler, body: bytes) -> None:
        """Answer one control request on ``handler``."""
        parts = urlsplit(handler.path)
        endpoint = unquote(parts.path)[len(CONTROL_PREFIX) :]
        query = parse_qs(parts.query)
        name = query.get("server", [next(iter(self.traffic), "")])[0]
        method = handler.command
        try:
            if endpoint == "health" and method == "GET":
                handler.send_json(
                    200, {"status": "ok", "pid": os.getpid(), "servers": sorted(self.traffic)}
                )
                return
            if endpoint in self.actions and method == "POST":
                self.actions[endpoint](_load(body))
                handler.send_json(200, {"status": "ok"})
                return
            traffic = self.traffic.get(name)
            if traffic is None:
                handler.send_json(
                    404,
                    {
                        "error": f"Unknown server {name!r}; expected one of "
                        f"{sorted(self.traffic)!r}."
                    },
                )
            elif endpoint == "requests" and method == "GET":
                handler.send_json(200, [dataclasses.asdict(r) for r in traffic.requests()])
            elif endpoint == "reset" and method == "POST":
                traffic.reset()
                handler.send_json(200, {"status": "ok"})
            elif endpoint == "faults" and method == "GET":
                plan = traffic.plan
                handler.send_json(200, {"plan": plan.to_dict() if plan else None})
            elif endpoint == "faults" and method == "POST":
                data = _load(body)
                traffic.plan = None if data is None else FaultPlan.from_dict(data)
                handler.send_json(200, {"status": "ok"})
            else:
                handler.send_json(404, {"error": f"No control endpoint {method} {parts.path!r}."})
        except (InvalidRequestError, KeyError, TypeError, ValueError) as err:
            handler.send_json(400, {"error": str(err)})


def _load(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except json.JSONDecodeError as err:
        raise InvalidRequestError(
            f"Control request body {body[:80]!r} is not JSON; expected a JSON document."
        ) from err


class _BodyCut(Exception):
    """The body budget of a faulted answer is spent: stop writing."""


class WorldHandler(BaseHTTPRequestHandler):
    """Request handler base: quiet, kept-alive, counted, faultable, with control endpoints.

    Subclasses implement :meth:`request_key` and :meth:`respond`, and write their answer with
    :meth:`send_head`, :meth:`write_body` and :meth:`send_text`, which carry out body faults.
    ``self.server.owner`` must have ``traffic`` (:class:`Traffic`) and ``controls``
    (:class:`Controls`).
    """

    protocol_version = "HTTP/1.1"  # keep-alive, so GDAL reuses its connections
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    # headers and body go out in separate writes; with Nagle on, each small range request
    # would wait ~40 ms for the client's delayed ACK
    disable_nagle_algorithm = True
    server: Any

    _status = 0
    _sent = 0
    _budget: int | None = None
    _cutting = False

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib's signature
        """Stay quiet: requests are counted, not logged."""

    def do_GET(self) -> None:  # the stdlib's naming
        """Answer a GET."""
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def request_key(self) -> str:
        """The stats key of this request (path without leading ``/`` and query)."""
        return unquote(urlsplit(self.path).path).lstrip("/")

    def respond(self, key: str, head: bool, body: bytes) -> None:
        """Answer the request (subclasses)."""
        self.send_text(404, "Not found", head)

    def send_head(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        length: int,
        *,
        stamp: bool = True,
    ) -> None:
        """Send the status line and headers, declaring a body of ``length`` bytes.

        Args:
            status: Status code.
            headers: Headers (without ``Content-Length``).
            length: Body length to declare.
            stamp: Add this server's ``Server`` and ``Date`` headers (False when relaying).
        """
        self._status = status
        if stamp:
            self.send_response(status)
        else:
            self.send_response_only(status)
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        # a body fault lets half the declared body through
        self._budget = length // 2 if self._cutting else None

    def write_body(self, data: bytes) -> None:
        """Write body bytes, stopping where a body fault says so."""
        if self._budget is not None:
            room = self._budget - self._sent
            if len(data) >= room:
                if room > 0:
                    self.wfile.write(data[:room])
                    self._sent += room
                raise _BodyCut
        self.wfile.write(data)
        self._sent += len(data)

    def send_text(
        self, status: int, text: str, head: bool, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer with a short plain-text body."""
        body = f"{text}\n".encode()
        self.send_head(
            status, {**(headers or {}), "Content-Type": "text/plain; charset=utf-8"}, len(body)
        )
        if not head:
            self.write_body(body)

    def send_json(self, status: int, document: Any) -> None:
        """Answer with a JSON body (control endpoints)."""
        body = json.dumps(document).encode()
        self.send_head(status, {"Content-Type": "application/json"}, len(body))
        self.write_body(body)

    def _handle(self) -> None:
        head = self.command == "HEAD"
        self._status, self._sent, self._budget, self._cutting = 500, 0, None, False
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        if unquote(urlsplit(self.path).path).startswith(CONTROL_PREFIX):
            self.server.owner.controls.answer(self, body)
            return
        traffic: Traffic = self.server.owner.traffic
        key = self.request_key()
        received = time.time()
        traffic.begin()
        decision = NO_FAULT
        try:
            decision = traffic.decide(key)
            if decision.latency_s > 0:
                time.sleep(decision.latency_s)
            status = _STATUS_FAULTS.get(decision.fault)  # type: ignore[arg-type]
            if status is not None:
                retry = decision.retry_after
                extra = {} if retry is None else {"Retry-After": str(retry)}
                self.send_text(status, f"{status} (injected fault)", head, extra)
            else:
                self._cutting = decision.fault in _BODY_FAULTS
                self.respond(key, head, body)
        except _BodyCut:
            pass
        except OSError:  # the client hung up, or timed out
            self.close_connection = True
        finally:
            if decision.fault in _BODY_FAULTS:
                self._cut(decision.fault)
            traffic.record(
                RequestRecord(
                    self.command,
                    key,
                    self._status,
                    self.headers.get("Range"),
                    self._sent,
                    decision.fault.value if decision.fault else None,
                    received,
                )
            )

    def _cut(self, fault: FaultKind) -> None:
        self.close_connection = True
        if fault is FaultKind.RESET_MID_BODY:
            # SO_LINGER with timeout 0 makes close() send RST instead of FIN; the socket is
            # really closed only once the buffered reader on it is closed too
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.rfile.close()
            except OSError:
                pass
        # TRUNCATE: the server closes the connection normally (FIN) after this request

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


__all__ = [
    "most_in_window",
    "CONTROL_PREFIX",
    "Controls",
    "PathStats",
    "RequestRecord",
    "Traffic",
    "TrafficView",
    "WorldHandler",
    "summarise",
]
