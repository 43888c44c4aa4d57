"""The local stack command (flows/stack.py) end to end, as `make up` runs it.

`python -m flows.stack up` on free ports: it must print its ready line, have deployed
deployments/prefect.yaml (non-interactively, daily schedule paused) and started a worker that
runs a deployment triggered through the Prefect API against the stack's offline world; on
SIGINT every process it started must exit. `serve` must register the same deployments without
a work pool. `prefect deploy --all` with prompts forced on and stdin closed must ask nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from flows.stack import READY
from prefect_server import REPO, free_port

from scenestore.stac import StacStoreManager

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def stack_process(command: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``python -m flows.stack <command>`` on free ports, until its ready line.

    Yields its ports, API URL, output so far and the process; stops it (SIGINT) at the end if
    the test did not.
    """
    ports = {name: free_port() for name in ("prefect", "stac", "data")}
    args = [sys.executable, "-m", "flows.stack", command, "--home", str(tmp_path / "stack"),
            "--prefect-port", str(ports["prefect"]), "--stac-port", str(ports["stac"]),
            "--data-port", str(ports["data"])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 150
        assert process.stdout is not None
        while True:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                raise AssertionError(f"stack exited {process.returncode}:\n{''.join(lines)}")
            lines.append(line)
            if line.strip() == READY:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no ready line after 150 s:\n{''.join(lines)}")
        # The rest of the ready block, up to its last line.
        while not lines[-1].startswith("Press Ctrl-C"):
            lines.append(process.stdout.readline())
        yield {"ports": ports, "api": f"http://127.0.0.1:{ports['prefect']}/api",
               "output": lines, "process": process, "home": tmp_path / "stack"}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def stop_and_check_children(process: subprocess.Popen[str]) -> str:
    """SIGINT the stack; assert it exits 0 and every process it started is gone."""
    children = descendants(process.pid)
    assert len(children) >= 3, "server, world and worker/serve run as child processes"
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in children if alive(pid)] == [], "no orphans after Ctrl-C"
    return out


def deployments(api: str) -> dict[str, dict[str, Any]]:
    """Deployments by ``flow/deployment`` name."""
    flows = {f["id"]: f["name"]
             for f in httpx.post(f"{api}/flows/filter", json={}, timeout=10).json()}
    found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in found}


def test_up_deploys_runs_a_deployment_and_stops_every_child(tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with stack_process("up", tmp_path) as stack:
        api, text = stack["api"], "".join(stack["output"])
        assert f"http://127.0.0.1:{stack['ports']['prefect']}/" in text, "the UI link"
        assert f"STAC API http://127.0.0.1:{stack['ports']['stac']}" in text, "the fixed port"
        assert "39QTA  2024-06-01" in text, "what the world covers"
        example = json.loads(next(line.split(": ", 1)[1] for line in stack["output"]
                                  if line.strip().startswith("ingest/on-demand: ")))
        assert example["stac_url"] == f"http://127.0.0.1:{stack['ports']['stac']}"

        found = deployments(api)
        assert set(found) == {"ingest/daily", "ingest/on-demand", "backfill/backfill"}
        assert [s["active"] for s in found["ingest/daily"]["schedules"]] == [False]
        assert found["ingest/on-demand"]["schedules"] == []
        assert found["backfill/backfill"]["global_concurrency_limit"]["limit"] == 1
        limits = httpx.post(f"{api}/v2/concurrency_limits/filter", json={}, timeout=10).json()
        names = {limit["name"] for limit in limits}
        assert {"scenestore-cdse-requests", "scenestore-cdse-scenes"} <= names, names

        # Deploying again (as after editing the yaml) with prompts forced on and stdin closed:
        # any question would die with EOFError. Runs while the triggered run below executes.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(stack["home"] / "prefect"),
                    "PREFECT_CLI_PROMPT": "true", "PWD": str(REPO)})
        redeploy = subprocess.Popen(
            [sys.executable, "-m", "prefect", "deploy", "--all", "--prefect-file",
             "deployments/prefect.yaml"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        with temporary_settings(updates={PREFECT_API_URL: api}):
            run = run_deployment("ingest/on-demand", parameters=example, timeout=0)
        deadline = time.monotonic() + 150
        while True:
            state = httpx.get(f"{api}/flow_runs/{run.id}", timeout=10).json()["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, f"run not final after 150 s: {state}"
            time.sleep(0.5)
        worker_log = (stack["home"] / "logs" / "worker.log").read_text(errors="replace")
        assert state["type"] == "COMPLETED", f"{state}\n{worker_log[-3000:]}"
        name = httpx.get(f"{api}/flow_runs/{run.id}", timeout=10).json()["name"]
        assert name == f"ingest {example['start']}..{example['end']}", "the run-name template"

        out, _ = redeploy.communicate(timeout=150)
        assert redeploy.returncode == 0, out
        assert "EOFError" not in out, out

        mgr = StacStoreManager(example["bands"], example["store"], stac_url=example["stac_url"])
        tile_scenes = ["S2A_39QTA_20240601_0_L2A", "S2B_39QTA_20240610_0_L2A"]
        assert [i for i in tile_scenes if mgr.complete(mgr.identifier(i))] == tile_scenes

        out = stop_and_check_children(stack["process"])
        assert "stopped worker" in out and "stopped server" in out


def test_serve_registers_the_deployments_without_a_pool(tmp_path):
    with stack_process("serve", tmp_path) as stack:
        found = deployments(stack["api"])
        assert set(found) == {"ingest/daily", "ingest/on-demand", "backfill/backfill"}
        assert all(d["work_pool_name"] is None for d in found.values()), "served, no pool"
        assert [s["active"] for s in found["ingest/daily"]["schedules"]] == [False]
        out = stop_and_check_children(stack["process"])
        assert "stopped serve" in out
