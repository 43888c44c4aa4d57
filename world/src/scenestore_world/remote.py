"""The world's HTTP servers in a child process, and the client that controls them.

A file server in the process of its client deadlocks against GDAL (rasterio holds the GIL while
GDAL makes HTTP requests, so the server thread never runs) and steals the client's GIL in
benchmarks. Real services are other processes, so the world's are too::

    python -m scenestore_world.remote --root DIR [--host H] [--port P] [--stac-port Q]
        [--stac-upstream URL] [--faults JSON] [--stac-faults JSON] [--exit-on-stdin-eof]

serves ``DIR`` with a :class:`~scenestore_world.http.RangeFileServer` and runs a
:class:`~scenestore_world.proxy.StacProxy`, then prints one JSON line
``{"cog": URL, "stac": URL, "pid": N}`` on stdout and serves until SIGTERM (or, with
``--exit-on-stdin-eof``, until its stdin closes, which happens when the parent dies; it then
also terminates the processes the parent asked it to adopt). It logs nothing.
:class:`WorldServers` starts and stops that process; :class:`RemoteTraffic` reads its counters
and sets its faults through the control endpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import scenestore
from scenestore.errors import SourceError
from scenestore.serve import stop_process
from scenestore_world.faults import FaultPlan
from scenestore_world.traffic import CONTROL_PREFIX, RequestRecord, TrafficView


class _Control:
    """JSON calls to the control endpoints of a world server process."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", int(parts.port or 80)
        self.timeout = timeout

    def call(
        self,
        method: str,
        endpoint: str,
        *,
        server: str | None = None,
        document: Any = None,
        send: bool = False,
    ) -> Any:
        path = CONTROL_PREFIX + endpoint + (f"?server={server}" if server else "")
        body = json.dumps(document).encode() if send else None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as err:
            raise SourceError(
                f"World control request {method} {path!r} to {self.url!r} failed ({err}); "
                "expected the world's server process to be running."
            ) from err
        finally:
            conn.close()
        if response.status != 200:
            raise SourceError(
                f"World control request {method} {path!r} answered {response.status}: "
                f"{data[:300]!r}; expected 200.",
                status=response.status,
            )
        return json.loads(data)


class RemoteTraffic(TrafficView):
    """Counters and faults of one server (``"cog"`` or ``"stac"``) of a world server process.

    The same read API as the in-process servers: :meth:`stats`, :meth:`requests`,
    :meth:`reset_stats`, :meth:`fault_count`, and the :attr:`faults` plan.

    Args:
        control: Control client of the process.
        name: Which server.
        url: The server's base URL.
    """

    def __init__(self, control: _Control, name: str, url: str) -> None:
        self._control = control
        self.name = name
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = int(parts.port or 80)

    def requests(self) -> list[RequestRecord]:
        """Every request answered since start or the last :meth:`reset_stats`, in order."""
        return [RequestRecord(**r) for r in self._control.call("GET", "requests", server=self.name)]

    def reset_stats(self) -> None:
        """Forget every request counted so far."""
        self._control.call("POST", "reset", server=self.name)

    @property
    def faults(self) -> FaultPlan | None:
        """The fault plan in force; setting one (or None) restarts its RNG and fault cap."""
        plan = self._control.call("GET", "faults", server=self.name)["plan"]
        return None if plan is None else FaultPlan.from_dict(plan)

    @faults.setter
    def faults(self, plan: FaultPlan | None) -> None:
        self.set_faults(plan)

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Apply ``plan`` (None: no faults) from the next request on.

        Raises:
            TypeError: If ``plan`` is not a :class:`FaultPlan` (in-process hooks cannot reach
                a server in another process).
        """
        if plan is not None and not isinstance(plan, FaultPlan):
            raise TypeError(
                f"Fault plan {plan!r} is not a FaultPlan; the world's servers run in another "
                "process, so faults are described by scenestore_world.FaultPlan."
            )
        self._control.call(
            "POST", "faults", server=self.name, document=plan and plan.to_dict(), send=True
        )

    def __repr__(self) -> str:
        return f"RemoteTraffic({self.name!r}, {self.url!r})"


class WorldServers:
    """The file server and the STAC proxy, running in a child Python process.

    The constructor does no I/O. :meth:`start` launches the process, waits (with a deadline)
    for its ready line and a healthy control endpoint; :meth:`stop` closes the child's stdin
    (it exits on EOF), then terminates and finally kills it if it lingers. The child also exits
    on its own when this process dies, since its stdin then closes too.

    Args:
        root: Directory of files to serve.
        host: Loopback address to bind.
        faults: Fault plan of the file server.
        stac_faults: Fault plan of the STAC proxy.
        upstream: STAC API the proxy relays to (can be set later: :meth:`set_upstream`).
        startup_timeout: Seconds to wait for the process to be ready.
        port: File server port (0: any free port).
        stac_port: STAC proxy port (0: any free port).

    Attributes:
        cog: Counters and faults of the file server.
        stac: Counters and faults of the STAC proxy.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        faults: FaultPlan | None = None,
        stac_faults: FaultPlan | None = None,
        upstream: str | None = None,
        startup_timeout: float = 30.0,
        port: int = 0,
        stac_port: int = 0,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.stac_port = stac_port
        self.startup_timeout = startup_timeout
        self._faults = faults
        self._stac_faults = stac_faults
        self._upstream = upstream
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._control: _Control | None = None
        self.cog: RemoteTraffic | None = None
        self.stac: RemoteTraffic | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the child, or None when not running."""
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        """The command line of the child process."""
        cmd = [
            sys.executable,
            "-m",
            "scenestore_world.remote",
            "--root",
            str(self.root),
            "--host",
            self.host,
            "--exit-on-stdin-eof",
        ]
        if self.port:
            cmd += ["--port", str(self.port)]
        if self.stac_port:
            cmd += ["--stac-port", str(self.stac_port)]
        if self._upstream:
            cmd += ["--stac-upstream", self._upstream]
        if self._faults is not None:
            cmd += ["--faults", json.dumps(self._faults.to_dict())]
        if self._stac_faults is not None:
            cmd += ["--stac-faults", json.dumps(self._stac_faults.to_dict())]
        return cmd

    def start(self) -> WorldServers:
        """Launch the child and wait until it serves; returns ``self``.

        Raises:
            SourceError: If the child exits or is not ready within ``startup_timeout``.
        """
        if self._process is not None:
            return self
        # the child must import this very scenestore_world and scenestore, installed or not
        # (in a checkout they are two source trees: world/src and src)
        roots = dict.fromkeys(
            str(Path(module_file).resolve().parents[1])
            for module_file in (__file__, scenestore.__file__)
            if module_file is not None
        )
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*roots, *([path] if path else [])])}
        # a file, not a pipe: nobody reads it unless the child fails, and it must never fill
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        try:
            deadline = time.monotonic() + self.startup_timeout
            info = json.loads(self._read_ready_line(deadline))
            self._process.stdout.close()  # type: ignore[union-attr]  # piped; nothing more comes
            self._control = _Control(info["cog"])
            self.cog = RemoteTraffic(self._control, "cog", info["cog"])
            self.stac = RemoteTraffic(self._control, "stac", info["stac"])
            self._wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the child (also if it hangs) and wait for it. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # type: ignore[union-attr]  # piped; the child exits on EOF
            with contextlib.suppress(OSError):
                process.stdout.close()  # type: ignore[union-attr]
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                stop_process(process)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> WorldServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def is_alive(self) -> bool:
        """Whether the child process is running."""
        return self._process is not None and self._process.poll() is None

    def set_upstream(self, url: str) -> None:
        """Make the STAC proxy relay to ``url``."""
        if self._control is None:
            raise SourceError("WorldServers is not started; call start() first.")
        self._control.call("POST", "upstream", document={"url": url}, send=True)

    def adopt(self, pid: int) -> None:
        """Have the child terminate process ``pid`` (e.g. the STAC API) if this process dies.

        Only when this process dies: a normal :meth:`stop` leaves ``pid`` alone.
        """
        if self._control is None:
            raise SourceError("WorldServers is not started; call start() first.")
        self._control.call("POST", "adopt", document={"pid": pid}, send=True)

    def _read_ready_line(self, deadline: float) -> str:
        process = self._process
        if process is None or process.stdout is None:
            raise SourceError("WorldServers is not started; call start() first.")
        fd = process.stdout.fileno()
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError(
                    f"The world's server process did not report ready within "
                    f"{self.startup_timeout} s; expected one JSON line on its stdout. "
                    f"Its stderr: {self._stderr_tail()!r}"
                )
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.25))
            chunk = os.read(fd, 4096) if readable else None
            if chunk == b"" or (chunk is None and process.poll() is not None):
                process.wait(timeout=5)
                raise SourceError(
                    f"The world's server process exited with code {process.returncode} "
                    f"before serving {str(self.root)!r}; its stderr: {self._stderr_tail()!r}"
                )
            buffer += chunk or b""
        return buffer.split(b"\n", 1)[0].decode()

    def _wait_healthy(self, deadline: float) -> None:
        control = self._control
        if control is None:
            raise SourceError("WorldServers is not started; call start() first.")
        delay = 0.01
        while True:
            try:
                control.call("GET", "health")
            except SourceError:
                if time.monotonic() + delay > deadline:
                    raise
            else:
                return
            time.sleep(delay)
            delay = min(2 * delay, 0.2)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]


def _plan(text: str | None) -> FaultPlan | None:
    return None if text is None else FaultPlan.from_dict(json.loads(text))


def main(argv: list[str] | None = None) -> int:
    """Serve files and the STAC proxy until SIGTERM (or stdin EOF); see the module docstring."""
    from scenestore_world.http import RangeFileServer
    from scenestore_world.proxy import StacProxy
    from scenestore_world.traffic import Controls

    parser = argparse.ArgumentParser(
        prog="python -m scenestore_world.remote",
        description="Serve the offline world's COGs and a faulting STAC proxy on loopback.",
    )
    parser.add_argument("--root", type=Path, required=True, help="Directory of files to serve.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
    parser.add_argument("--port", type=int, default=0, help="File server port (0: any).")
    parser.add_argument("--stac-port", type=int, default=0, help="STAC proxy port (0: any).")
    parser.add_argument("--stac-upstream", help="STAC API the proxy relays to.")
    parser.add_argument("--faults", help="File server fault plan as JSON (FaultPlan fields).")
    parser.add_argument("--stac-faults", help="STAC proxy fault plan as JSON.")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="Exit when stdin closes (the parent keeps a pipe open while it lives).",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        files = RangeFileServer(
            args.root, host=args.host, port=args.port, faults=_plan(args.faults)
        )
        proxy = StacProxy(
            args.stac_upstream, host=args.host, port=args.stac_port, faults=_plan(args.stac_faults)
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parent = os.getppid()
    adopted: dict[int, bytes | None] = {}
    controls = Controls(
        {"cog": files.traffic, "stac": proxy.traffic},
        actions={
            "upstream": lambda doc: proxy.set_upstream(str(doc["url"])),
            "adopt": lambda doc: adopted.update({int(doc["pid"]): _cmdline(int(doc["pid"]))}),
        },
    )
    files.controls = proxy.controls = controls
    try:
        with files, proxy:
            ready = {"cog": files.url, "stac": proxy.url, "pid": os.getpid()}
            sys.stdout.write(json.dumps(ready) + "\n")
            sys.stdout.flush()
            if args.exit_on_stdin_eof:
                threading.Thread(target=_exit_on_eof, args=(stop,), daemon=True).start()
            while not stop.wait(0.5):
                pass
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if os.getppid() != parent:  # our parent died: take its other servers down with us
            _terminate(adopted)
    return 0


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _terminate(adopted: dict[int, bytes | None]) -> None:
    for pid, cmdline in adopted.items():
        # a pid may have been reused since: only signal the process we were told about
        if cmdline is not None and _cmdline(pid) != cmdline:
            continue
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def _exit_on_eof(stop: threading.Event) -> None:
    with contextlib.suppress(OSError, ValueError):
        while sys.stdin.buffer.read(4096):
            pass
    stop.set()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RemoteTraffic", "WorldServers", "main"]

