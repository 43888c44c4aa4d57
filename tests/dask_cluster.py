"""A real Dask cluster for the tests: ``dask scheduler`` and worker processes on 127.0.0.1.

Started as a user would start them (the ``dask`` CLI, one process each, from the repository
root so that ``flows`` and ``scenestore`` import), stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scenestore_world.remote import stop_process
from scenestore_world.server import free_port

ROOT = Path(__file__).resolve().parent.parent


class DaskCluster:
    """A scheduler and ``workers`` single-threaded worker processes; a context manager.

    Args:
        workers: Worker processes.
        env: Extra environment of the workers (e.g. the object store's endpoint and keys).
    """

    def __init__(self, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.workers = workers
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
            **(env or {}),
        }
        self._processes: list[subprocess.Popen] = []

    def _start(self, *args: str) -> None:
        dask = Path(sys.executable).parent / "dask"
        self._processes.append(
            subprocess.Popen(
                [str(dask), *args],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def __enter__(self) -> DaskCluster:
        from distributed import Client

        self._start("scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                    "--no-dashboard")
        for _ in range(self.workers):
            self._start("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                        "--nworkers", "1", "--no-dashboard", "--no-nanny")
        try:
            # Polls the scheduler until every worker has registered (no fixed sleep).
            with Client(self.address, timeout=60) as client:
                client.wait_for_workers(self.workers, timeout=90)
        except Exception:
            self.__exit__()
            raise
        return self

    def worker_pids(self) -> set[int]:
        """Process ids of the worker processes."""
        return {p.pid for p in self._processes[1:]}

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self._processes):  # workers first, the scheduler last
            stop_process(process, timeout=10)
        self._processes.clear()
