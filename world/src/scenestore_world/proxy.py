"""A faulting reverse proxy in front of the STAC API.

``rustac serve`` cannot be told to fail, so the world puts this proxy in front of it: every
request is forwarded (method, path, query, headers, body) to the upstream and its answer relayed
unchanged, except where the proxy's :class:`~scenestore_world.faults.FaultPlan` says to fail it.
rustac writes absolute links from its ``--addr``, which must therefore be the proxy's URL; the
proxy rewrites nothing.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from scenestore_world.faults import FaultPlan
from scenestore_world.http import LoopbackServer
from scenestore_world.traffic import WorldHandler

# hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are not relayed;
# Content-Length is recomputed from the body actually relayed
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class _ProxyHandler(WorldHandler):
    def respond(self, key: str, head: bool, body: bytes) -> None:
        owner: StacProxy = self.server.owner
        upstream = owner.upstream
        if upstream is None:
            self.send_text(502, "Bad gateway: the proxy has no upstream yet", head)
            return
        target = urlsplit(upstream)
        conn = http.client.HTTPConnection(
            target.hostname or "127.0.0.1", target.port, timeout=owner.upstream_timeout
        )
        try:
            path = target.path.rstrip("/") + self.path
            conn.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if "Host" not in self.headers:
                conn.putheader("Host", target.netloc)
            if body or self.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
            headers = [(n, v) for n, v in response.getheaders() if n.lower() not in _HOP_BY_HOP]
            length = int(response.getheader("Content-Length") or 0) if head else len(data)
        except (OSError, http.client.HTTPException) as err:
            self.send_text(502, f"Bad gateway: upstream {upstream!r} failed: {err}", head)
            return
        finally:
            conn.close()
        self.send_head(response.status, headers, length, stamp=False)
        if not head:
            self.write_body(data)


class StacProxy(LoopbackServer):
    """Relay every request to ``upstream``, counting and optionally faulting them.

    Runs in the calling process (threads); :class:`~scenestore_world.OfflineWorld` runs it in
    the same child process as the file server.

    Args:
        upstream: Base URL of the STAC API, e.g. ``http://127.0.0.1:40123``; None answers 502
            until :attr:`upstream` is set.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        faults: Fault plan applied to the relayed requests (none by default).
        upstream_timeout: Seconds to wait for the upstream's answer.

    Attributes:
        upstream: Base URL requests are relayed to (settable while running).
    """

    _handler = _ProxyHandler

    def __init__(
        self,
        upstream: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        upstream_timeout: float = 30.0,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults, name="stac")
        self.upstream = upstream
        self.upstream_timeout = upstream_timeout

    def start(self) -> StacProxy:
        """Bind and start serving in a daemon thread; returns ``self``."""
        super().start()
        return self

    def __enter__(self) -> StacProxy:
        return self.start()

    def set_upstream(self, url: str) -> None:
        """Relay to ``url`` from now on."""
        self.upstream = url.rstrip("/")


__all__ = ["StacProxy"]
