"""The whole local stack in one command: offline world, Prefect server, pool, deployments, worker.

``python -m flows.stack up`` (``make up``) starts, from the repository root:

1. the offline Sentinel-2 world (a STAC API and a COG server on fixed, configurable ports);
2. ``prefect server start`` on a fixed port, with its database in ``.world/stack/prefect``;
3. the process work pool ``scenestore-pool``, a non-interactive ``prefect deploy --all`` of
   deployments/prefect.yaml and a worker on the pool;

then prints the UI link, what the world covers and parameters ready to paste into
**Run > Custom run**, and serves until Ctrl-C (or SIGTERM), when it stops every child, the
worker first and the world last.

``python -m flows.stack serve`` starts the world and the server too, but instead of the pool,
the deploy and the worker it serves the same deployments (read from deployments/prefect.yaml)
with :func:`prefect.serve` in one child process: runs execute in that process's subprocesses,
no pool or worker needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
POOL = "scenestore-pool"
#: The line the stack prints once everything is up (tests wait for it).
READY = "scenestore stack ready"
#: The flows the deployments of prefect.yaml run, by entry point.
ENTRYPOINTS = {"flows/ingest.py:ingest": ("flows.ingest", "ingest"),
               "flows/backfill.py:backfill": ("flows.backfill", "backfill")}


@dataclass
class StackConfig:
    """Where and how the stack runs.

    Attributes:
        host: Address every server binds (loopback by default).
        prefect_port: Port of the Prefect server (UI at its root, API under /api).
        stac_port: Port of the offline world's STAC API.
        data_port: Port of the offline world's COG server.
        home: Folder of the stack's state: world files, Prefect database, logs, store.
        store: The store directory the printed parameter example points at.
        scenes: Scenes of the offline world.
        worker_limit: Flow runs the worker runs at once.
        ui_promotions: Show Prefect's upgrade prompts and marketing banners in the UI.
    """

    host: str = "127.0.0.1"
    prefect_port: int = 4200
    stac_port: int = 8080
    data_port: int = 8081
    home: Path = REPO / ".world" / "stack"
    store: Path | None = None
    scenes: int = 6
    worker_limit: int = 4
    ui_promotions: bool = False

    @property
    def url(self) -> str:
        """Root URL of the Prefect server (the UI)."""
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def api_url(self) -> str:
        """The Prefect API's URL."""
        return f"{self.url}/api"

    @property
    def store_path(self) -> Path:
        """The store of the parameter example (``<home>/store`` unless given)."""
        return (self.store or self.home / "store").resolve()

    def env(self) -> dict[str, str]:
        """Environment of every Prefect process of the stack (server, deploy, worker)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_UI_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": self.host,
            "PREFECT_SERVER_API_PORT": str(self.prefect_port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": str(self.ui_promotions).lower(),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_CLI_PROMPT": "false",
            # prefect.yaml resolves SCENESTORE_ROOT from this at deploy time.
            "PWD": str(REPO),
            # `flows` is a top-level package of the checkout, imported by every run.
            "PYTHONPATH": os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        })
        return env


@dataclass
class Child:
    """A process the stack started, in its own process group (so Ctrl-C reaches only us)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    """The running children, stopped last-started first."""

    config: StackConfig
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Child:
        """Start ``args`` from the repository root, output to ``<home>/logs/<name>.log``."""
        logs = self.config.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(args, cwd=REPO, env=self.config.env(), stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def dead(self) -> Child | None:
        """A child that exited on its own, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self) -> None:
        """Stop every child, the last started first (the worker before the server)."""
        while self.children:
            child = self.children.pop()
            stop_group(child.process)
            print(f"  stopped {child.name}", flush=True)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM a child's process group, SIGKILL it if still there after ``timeout``; reap."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # The worker's flow-run subprocesses share its group: take down any left behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_healthy(config: StackConfig, server: Child, deadline_s: float = 120) -> None:
    """Wait until the server answers ``/api/health``.

    Raises:
        RuntimeError: If the server exits or is not healthy within ``deadline_s``.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{config.api_url}/health", timeout=2).status_code == 200:
                return
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"The Prefect server on {config.url} did not start (is port "
                f"{config.prefect_port} taken? pick another with --prefect-port); its log "
                f"{server.log}:\n{tail(server.log)}"
            )
        time.sleep(0.25)


def create_limits(config: StackConfig) -> list[str]:
    """Create the provider budgets' global limits on the stack's server (kept if they exist)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.throttle import ensure_provider_limits

    with temporary_settings({PREFECT_API_URL: config.api_url}), get_client(
        sync_client=True
    ) as client:
        return ensure_provider_limits(client)


def create_pool(config: StackConfig) -> None:
    """Create the process work pool of prefect.yaml (kept if it exists)."""
    from prefect.workers.process import ProcessWorker

    response = httpx.post(f"{config.api_url}/work_pools/", timeout=30, json={
        "name": POOL, "type": "process",
        "base_job_template": ProcessWorker.get_default_base_job_template()})
    if response.status_code not in (200, 201, 409):  # 409: it exists (an earlier `up`)
        raise RuntimeError(f"Creating work pool {POOL!r} failed: {response.status_code} "
                           f"{response.text}")


def run_deploy(stack: Stack) -> str:
    """``prefect deploy --all`` of prefect.yaml with stdin closed; its output.

    Raises:
        RuntimeError: If the deploy fails (its output says why).
    """
    child = stack.start("deploy", [sys.executable, "-m", "prefect", "deploy", "--all",
                                   "--prefect-file", str(PREFECT_YAML.relative_to(REPO))])
    code = child.process.wait(timeout=300)
    stack.children.remove(child)
    if code != 0:
        raise RuntimeError(f"prefect deploy --all failed (exit {code}):\n{tail(child.log)}")
    return tail(child.log, 20_000)


def example_parameters(config: StackConfig, world: Any) -> dict[str, dict[str, Any]]:
    """Parameters of an on-demand run and of a backfill over the world's first tile."""
    first = world.items[0]
    tile_items = [i for i in world.items if i.id.split("_")[1] == first.id.split("_")[1]]
    w, s, e, n = first.bbox
    days = sorted(str(i.datetime.date()) for i in tile_items)
    on_demand = {
        "store": str(config.store_path),
        "bbox": {"west": round(w, 5), "south": round(s, 5), "east": round(e, 5),
                 "north": round(n, 5)},
        "start": days[0],
        "end": days[-1],
        "bands": ["B02", "B03", "B04", "B08", "SCL"],
        "stac_url": world.stac_url,
    }
    backfill = {**on_demand, "start": days[0][:8] + "01", "window_unit": "week",
                "window_length": 1}
    return {"ingest/on-demand": on_demand, "backfill/backfill": backfill}


def print_ready(config: StackConfig, world: Any, *, mode: str) -> None:
    """The ready block: UI link, world, deployments and parameters to paste."""
    examples = example_parameters(config, world)
    lines = [
        "",
        f"{READY}",
        f"  Prefect UI:  {config.url}/  (the V2 UI, also at {config.url}/v2/; the classic V1 "
        "UI: 'Switch to V1 UI' at the bottom of the sidebar)",
        f"  Prefect API: {config.api_url}  (export PREFECT_API_URL={config.api_url} to use the "
        "prefect CLI against it)",
        f"  Offline world: STAC API {world.stac_url}, COGs {world.data_url}; it covers "
        "(tile, sensing days, scenes, bbox):",
        *(f"    {line}" for line in world.coverage()),
        "  Deployments: ingest/daily (schedule paused), ingest/on-demand, backfill/backfill; "
        + (f"worker on pool {POOL} (limit {config.worker_limit})" if mode == "up"
           else "served by `prefect.serve` (no pool, no worker)"),
        f"  Logs: {config.home / 'logs'}",
        "",
        "  A run against the world: in the UI, Deployments > on-demand (or backfill) > Run >"
        " Custom run, with these values in the form; or from a shell (PREFECT_API_URL as above):",
    ]
    for name, params in examples.items():
        lines += [f"    {name}: {json.dumps(params)}"]
    lines += [f"    prefect deployment run ingest/on-demand --params "
              f"'{json.dumps(examples['ingest/on-demand'])}'"]
    lines += ["", "Press Ctrl-C to stop everything.", ""]
    print("\n".join(lines), flush=True)


def serve_deployments() -> None:
    """Serve the deployments of prefect.yaml in this process (the child of ``serve``)."""
    import importlib

    import yaml
    from prefect import serve
    from prefect.schedules import Cron

    document = yaml.safe_load(PREFECT_YAML.read_text())
    deployments = []
    for spec in document["deployments"]:
        module, name = ENTRYPOINTS[spec["entrypoint"]]
        flow = getattr(importlib.import_module(module), name)
        schedules = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                     for s in spec.get("schedules") or []]
        limit = spec.get("concurrency_limit")
        deployments.append(flow.to_deployment(
            name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
            parameters=spec.get("parameters"), schedules=schedules,
            concurrency_limit=limit.get("limit") if isinstance(limit, dict) else limit,
        ))
    # pause_on_shutdown=False: stopping the stack must not flip the daily schedule's state.
    serve(*deployments, pause_on_shutdown=False, limit=4)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM while the block runs."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(config: StackConfig, *, mode: str, out: IO[str] = sys.stdout) -> int:
    """Start the stack (``mode`` ``"up"`` or ``"serve"``), serve until a stop signal, stop it.

    Returns:
        The exit code: 0 after a stop signal, 1 when a part failed to start or died.
    """
    from scenestore_world import OfflineWorld

    config.home.mkdir(parents=True, exist_ok=True)
    stack = Stack(config)
    started = time.monotonic()

    def step(text: str) -> None:
        print(f"  {text} ({time.monotonic() - started:.1f} s)", file=out, flush=True)

    prefect = [sys.executable, "-m", "prefect"]
    with stop_signals() as stop, contextlib.ExitStack() as cleanup:
        cleanup.callback(stack.stop)
        try:
            # The server boots (10-20 s) while the world starts in this process.
            server = stack.start("server", [*prefect, "server", "start", "--host", config.host,
                                            "--port", str(config.prefect_port)])
            print(f"Starting the offline world on ports {config.stac_port} (STAC) and "
                  f"{config.data_port} (COGs), and the Prefect server on "
                  f"{config.prefect_port}...", file=out, flush=True)
            world = cleanup.enter_context(OfflineWorld(
                config.home / "world", scenes=config.scenes, size="tiny", seed=0,
                stac_port=config.stac_port, data_port=config.data_port))
            cleanup.callback(print, "  stopped the offline world", flush=True)
            cleanup.callback(stack.stop)  # again, to run first: every child before the world
            step("offline world serving")
            wait_healthy(config, server)
            step("Prefect server healthy")
            create_limits(config)
            if mode == "up":
                create_pool(config)
                # The worker imports while the deployments are created.
                stack.start("worker", [*prefect, "worker", "start", "--pool", POOL,
                                       "--limit", str(config.worker_limit)])
                run_deploy(stack)
                step(f"deployed {PREFECT_YAML.relative_to(REPO)}, worker started")
            else:
                stack.start("serve", [sys.executable, "-m", "flows.stack", "_serve"])
                wait_served(config, stack, stop)
                step("deployments served")
        except (RuntimeError, OSError) as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            print("Stopping...", file=out, flush=True)
            return 1
        if stop.is_set():
            print("Stopping...", file=out, flush=True)
            return 0
        print_ready(config, world, mode=mode)
        while not stop.wait(0.5):
            dead = stack.dead()
            if dead is not None:
                print(f"error: {dead.name} exited with code {dead.process.returncode}; its "
                      f"log {dead.log}:\n{tail(dead.log)}", file=sys.stderr, flush=True)
                print("Stopping...", file=out, flush=True)
                return 1
            if not world.is_alive():
                print("error: the offline world stopped unexpectedly.", file=sys.stderr)
                return 1
        print("Stopping...", file=out, flush=True)
    return 0


def wait_served(config: StackConfig, stack: Stack, stop: threading.Event,
                deadline_s: float = 180) -> None:
    """Wait until the ``serve`` child registered every deployment of prefect.yaml.

    Raises:
        RuntimeError: If the child exits or the deployments do not appear in time.
    """
    import yaml

    names = {d["name"] for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    deadline = time.monotonic() + deadline_s
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError, ValueError):
            found = httpx.post(f"{config.api_url}/deployments/filter", json={}, timeout=5).json()
            if names <= {d["name"] for d in found if d.get("work_pool_name") is None}:
                return
        dead = stack.dead()
        if dead is not None or time.monotonic() > deadline:
            log = stack.children[-1].log
            raise RuntimeError(f"prefect.serve did not register the deployments; its log "
                               f"{log}:\n{tail(log)}")
        time.sleep(0.5)


def parse_args(argv: list[str] | None = None) -> tuple[str, StackConfig]:
    """The command (``up``, ``serve``) and the configuration from the command line."""
    defaults = StackConfig()
    parser = argparse.ArgumentParser(
        prog="python -m flows.stack",
        description="Run scenestore's whole local Prefect stack against the offline world.")
    parser.add_argument("command", choices=["up", "serve", "_serve"],
                        help="up: server, pool, deploy, worker. serve: server and "
                             "prefect.serve() of the deployments (no pool, no worker).")
    parser.add_argument("--host", default=defaults.host, help="Address to bind (loopback).")
    parser.add_argument("--prefect-port", type=int, default=defaults.prefect_port,
                        help="Prefect server (UI and API) port.")
    parser.add_argument("--stac-port", type=int, default=defaults.stac_port,
                        help="Offline world STAC API port.")
    parser.add_argument("--data-port", type=int, default=defaults.data_port,
                        help="Offline world COG server port.")
    parser.add_argument("--home", type=Path, default=defaults.home,
                        help="State folder: world, Prefect database, logs, default store.")
    parser.add_argument("--store", type=Path, default=None,
                        help="Store of the parameter example (default <home>/store).")
    parser.add_argument("--scenes", type=int, default=defaults.scenes,
                        help="Scenes in the offline world.")
    parser.add_argument("--worker-limit", type=int, default=defaults.worker_limit,
                        help="Flow runs the worker runs at once.")
    parser.add_argument("--ui-promotions", action="store_true",
                        help="Show Prefect's upgrade prompts and banners in the UI.")
    args = parser.parse_args(argv)
    for name in ("prefect_port", "stac_port", "data_port"):
        port = getattr(args, name)
        if not 0 < port < 65536:
            parser.error(f"--{name.replace('_', '-')} {port} is not a TCP port; give 1-65535.")
    return args.command, StackConfig(
        host=args.host, prefect_port=args.prefect_port, stac_port=args.stac_port,
        data_port=args.data_port, home=args.home.resolve(), store=args.store,
        scenes=args.scenes, worker_limit=args.worker_limit, ui_promotions=args.ui_promotions)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flows.stack``."""
    command, config = parse_args(argv)
    if command == "_serve":
        serve_deployments()
        return 0
    return run(config, mode=command)


if __name__ == "__main__":
    sys.exit(main())
