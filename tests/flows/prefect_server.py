"""A real `prefect server` for end-to-end tests: started, deployed to, worked on, stopped.

Shared by tests/flows/test_flow_e2e.py (runs from the CLI) and tests/flows/test_ui_browser.py
(runs from the UI in a browser). Everything started here is stopped here, worker before server,
also when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
#: The deployments of deployments/prefect.yaml.
DEPLOYMENTS = ("ingest/daily", "ingest/on-demand", "backfill/backfill")
#: The work pool of deployments/prefect.yaml.
POOL = "scenestore-pool"
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrefectServer:
    """A running `prefect server` and the environment that talks to it.

    Attributes:
        url: Root URL, where the UI is served when enabled.
        api_url: The API's URL (``<url>/api``).
        env: Environment of every prefect process started against it.
        logs: Folder of the server's and worker's logs.
        stack: Stops whatever was started, last first (worker before server).
    """

    url: str
    api_url: str
    env: dict[str, str]
    logs: Path
    stack: ExitStack

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

    def api(self, method: str, path: str, **kwargs: object) -> object:
        """One JSON request to the API; fails on an HTTP error."""
        response = httpx.request(method, f"{self.api_url}{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def flow_run(self, run_id: str) -> dict:
        return httpx.get(f"{self.api_url}/flow_runs/{run_id}", timeout=10).json()

    def child_runs(self, run_id: str) -> list[dict]:
        """Flow runs whose parent is the given run (a backfill's windows)."""
        return httpx.post(f"{self.api_url}/flow_runs/filter", timeout=10, json={
            "flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}).json()

    def wait_final(self, run_id: str, deadline_s: float) -> dict:
        """Poll a flow run until its state is final; fail with the logs after the deadline."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"] and run["state"]["type"] in FINAL_STATES:
                return run
            time.sleep(0.5)
        raise AssertionError(f"flow run {run_id} not final after {deadline_s} s: "
                             f"{self.flow_run(run_id)['state']}\n{self.tail()}")

    def wait_log(self, run_id: str, text: str, deadline_s: float) -> None:
        """Poll a flow run's logs until one contains ``text``; fail after the deadline."""
        deadline = time.monotonic() + deadline_s
        query = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_DESC"}
        while time.monotonic() < deadline:
            logs = httpx.post(f"{self.api_url}/logs/filter", json=query, timeout=10).json()
            if any(text in log["message"] for log in logs):
                return
            time.sleep(0.5)
        raise AssertionError(f"no log of run {run_id} contains {text!r} after {deadline_s} s")

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start a prefect command in the background; stopped before what was started earlier."""
        process = start_process([*PREFECT, *args], self.env, self.logs / f"{name}.log")
        self.stack.callback(stop_process, process)
        return process

    def deploy_with_worker(self, *, pool_from_cli: bool = True) -> str:
        """Create the work pool, start a worker and deploy deployments/prefect.yaml.

        Args:
            pool_from_cli: Create the pool with ``prefect work-pool create``, as
                deployments/README.md does. Otherwise create it with one API call (the same
                pool: the process worker's default job template), which saves one CLI process
                (5-15 s on 2 busy cores).

        Returns:
            The output of ``prefect deploy``.
        """
        if pool_from_cli:
            self.cli("work-pool", "create", POOL, "--type", "process")
        else:
            from prefect.workers.process import ProcessWorker

            self.api("POST", "/work_pools/", json={
                "name": POOL, "type": "process",
                "base_job_template": ProcessWorker.get_default_base_job_template()})
        # The worker starts (and imports) while the deployments are created.
        self.start("worker", ["worker", "start", "--pool", POOL, "--limit", "4"])
        return self.cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process group this test started (by its id), then reap it."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a command from the repository root in its own process group, output to ``log``."""
    with open(log, "wb") as out:
        # Own process group: the server and worker spawn children we must stop with them.
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


@contextmanager
def running_server(tmp_path: Path, *, ui: bool = False) -> Iterator[PrefectServer]:
    """A real server on a free port with SQLite in a temporary PREFECT_HOME.

    Args:
        tmp_path: Folder for PREFECT_HOME and the logs.
        ui: Serve the UI at the server's root URL too.
    """
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_CLI_PROMPT": "false",
    })
    if ui:
        env.update({
            "PREFECT_UI_API_URL": f"{url}/api",
            # No upgrade prompts or marketing banners over the pages under test.
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        })
    with ExitStack() as stack:
        server = PrefectServer(url, env["PREFECT_API_URL"], env, logs, stack)
        process = start_process([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port)], env, logs / "server.log")
        stack.callback(stop_process, process)
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
        yield server
