"""End to end: a real Prefect server, a process work pool, the deployments of
deployments/prefect.yaml, a worker, and runs triggered from the CLI against the offline world.

Everything started here is stopped here, worker before server, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from flow_helpers import BANDS, WORLD_BBOX

from scenestore.stac import StacStoreManager

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrefectServer:
    """A running `prefect server` and the environment that talks to it."""

    api_url: str
    env: dict[str, str]
    logs: Path

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run a prefect CLI command against this server from the repository root."""
        return self.cli_many([list(args)], timeout=timeout)[0]

    def cli_many(self, commands: list[list[str]], timeout: float = 120) -> list[str]:
        """Run several prefect CLI commands at once (each pays ~3 s of imports); outputs."""
        running = [subprocess.Popen([*PREFECT, *args], cwd=REPO, env=self.env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for args in commands]
        outputs = []
        for args, process in zip(commands, running, strict=True):
            out, err = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise AssertionError(f"prefect {' '.join(args)} failed:\n{out}\n{err}")
            outputs.append(out)
        return outputs

    def flow_run(self, run_id: str) -> dict:
        return httpx.get(f"{self.api_url}/flow_runs/{run_id}", timeout=10).json()

    def wait_final(self, run_id: str, deadline_s: float) -> dict:
        """Poll a flow run until its state is final; fail with the logs after the deadline."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED",
                                                          "CANCELLED"):
                return run
            time.sleep(0.5)
        raise AssertionError(f"flow run {run_id} not final after {deadline_s} s: "
                             f"{self.flow_run(run_id)['state']}\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process group this test started (by its id), then reap it."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # Own process group: the server and worker spawn children we must stop with them.
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[PrefectServer, ExitStack]]:
    """A real server on a free port with SQLite in a temporary PREFECT_HOME."""
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
    })
    server = PrefectServer(env["PREFECT_API_URL"], env, logs)
    with ExitStack() as stack:
        process = _start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                          str(port)], env, logs / "server.log")
        stack.callback(_stop, process)
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prefect server did not become healthy\n{server.tail()}")
            time.sleep(0.25)
        # Callbacks run last-in first-out: whatever the test starts later stops first.
        yield server, stack


def test_deployments_run_on_a_worker_against_the_offline_world(prefect_server, world, tmp_path):
    server, stack = prefect_server
    server.cli("work-pool", "create", "scenestore-pool", "--type", "process")
    # The worker starts (and imports) while the deployments are created.
    worker = _start([*PREFECT, "worker", "start", "--pool", "scenestore-pool", "--limit", "4"],
                    server.env, server.logs / "worker.log")
    stack.callback(_stop, worker)  # registered after the server's: stopped before it
    deployed = server.cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    for name in ("ingest/daily", "ingest/on-demand", "backfill/backfill"):
        assert name in deployed
    daily = httpx.get(f"{server.api_url}/deployments/name/ingest/daily", timeout=10).json()
    assert [s["schedule"]["cron"] for s in daily["schedules"]] == ["0 6 * * *"]
    assert daily["parameters"]["lookback_days"] == 3 and "start" not in daily["parameters"]

    on_demand_store, backfill_store = tmp_path / "on-demand", tmp_path / "backfill"
    common = ["--param", f"bbox={json.dumps(WORLD_BBOX)}", "--param", f"bands={json.dumps(BANDS)}",
              "--param", f"stac_url={world.stac_url}"]
    outputs = server.cli_many([
        ["deployment", "run", "ingest/on-demand", "--param", f"store={on_demand_store}",
         "--param", "start=2024-06-01", "--param", "end=2024-06-05", *common],
        ["deployment", "run", "backfill/backfill", "--param", f"store={backfill_store}",
         "--param", "start=2024-06-01", "--param", "end=2024-06-14", "--param",
         "window_unit=week", "--param", "poll_seconds=1", *common],
    ])
    ingest_run, backfill_run = (UUID_RE.search(out).group(0) for out in outputs)

    ingest_final = server.wait_final(ingest_run, 150)
    backfill_final = server.wait_final(backfill_run, 150)

    assert ingest_final["state"]["type"] == "COMPLETED", server.tail()
    assert backfill_final["state"]["type"] == "COMPLETED", server.tail()
    windows = httpx.post(f"{server.api_url}/flow_runs/filter", timeout=10, json={
        "flow_runs": {"parent_flow_run_id": {"any_": [backfill_run]}}}).json()
    assert sorted((r["parameters"]["start"], r["state"]["type"]) for r in windows) == [
        ("2024-06-01", "COMPLETED"), ("2024-06-08", "COMPLETED")]
    assert all(r["deployment_id"] for r in windows), "each window is a run of the deployment"

    mgr = StacStoreManager(BANDS, on_demand_store, stac_url=world.stac_url)
    early = [i for i in world.items if str(i.datetime.date()) <= "2024-06-05"]
    assert [i.id for i in world.items if mgr.complete(mgr.identifier(i))] == [i.id for i in early]
    mgr = StacStoreManager(BANDS, backfill_store, stac_url=world.stac_url)
    assert all(mgr.complete(mgr.identifier(i)) for i in world.items)
