"""Scenes ingested in worker processes: both cores busy on many small scenes.

One process of threads keeps about 1.4 of 2 cores busy on small scenes: decoding, resampling
and compressing hold the GIL long enough that a second scene in flight mostly waits. Worker
processes each ingest one scene at a time, with their own interpreter.

Workers are forked from the caller (the ``fork`` start method, Linux only), so they start in
milliseconds with every module already imported and the caller's manager, items and scene
function inherited as they are: nothing has to be picklable but the results. A fresh
interpreter (``spawn``, ``forkserver``) would spend about 2 CPU seconds per process importing
odc-stac and rasterio, more than a small scene takes to ingest.

A worker forked after the caller had read pixels in threads used to hang, for two causes. It
inherited the caller's block pool (:func:`scenestore.store.arrays.block_pool`), whose idle
count said threads were waiting that the fork had not copied, so no block ever ran: each
forked child now forgets the pools it inherited (:func:`_forget_thread_pools`). And a thread
joined just before the fork may still be closing its PROJ context in native code, holding
SQLite's global mutex, which the child then waits for at its first CRS lookup: the pool
forks only once no other thread is running (:func:`_settle_threads`, a millisecond or so).

What a worker process keeps from the caller, and what it makes anew:

- the provider budget (:mod:`scenestore.throttle`): made anew in each worker, its rate shared
  by all workers through a :class:`~scenestore.throttle.FileGate` in a temporary directory
  (or the caller's gate, or ``SCENESTORE_THROTTLE_DIR``'s), and each profile's concurrency cap
  divided between the workers, so the pool as a whole keeps one budget;
- GDAL's HTTP cache is emptied, so no worker reuses a connection or a cached range of the
  caller's;
- a worker dies with its caller: the kernel kills it when the caller ends (``prctl``
  ``PR_SET_PDEATHSIG``), so a caller killed with SIGKILL leaves no worker writing on;
- the per-scene writer lock is a file lock (``flock``), held by the worker that writes and
  released by the kernel if it dies; a band is present only once its commit record is
  written, so a killed worker leaves nothing that looks present.

A scene whose worker dies (killed, out of memory) is ingested again in a process of its own;
if that one dies too, the scene is reported failed and the others are stored.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from scenestore.errors import InvalidRequestError
from scenestore.manager import IngestResult, StoreManager

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Worker processes for batch ingest: a number, ``0``/``1``/``off`` for none (threads only);
#: unset means one per core for small scenes (:func:`small_scene_processes`), else none.
PROCESSES_ENV = "SCENESTORE_PROCESSES"

#: Largest grid edge (pixels, any asset) of a scene ingested in worker processes unasked: a
#: worker holds its scene in memory, and two full tiles at once would pass the 1 GB a
#: full-tile ingest keeps to, while small scenes leave a core idle in threads.
SMALL_SCENE_PX = 2048

_OFF = frozenset({"off", "no", "false", "none"})

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

#: Seconds to wait at most, before forking, for this process's other threads to stop running.
SETTLE_TIMEOUT_S = 2.0

#: Error of a scene whose worker process died twice (a scene, not the batch, fails).
WORKER_DIED = (
    "its worker process ended abruptly (killed, or out of memory) twice; bands not "
    "committed were not stored. Run the ingest again, or with {env}=0 to use threads."
)


def processes_wanted(processes: int | None = None, items: Sequence[object] = ()) -> int:
    """The worker processes asked for: ``processes``, else :data:`PROCESSES_ENV`, else one
    per core when ``items`` are small scenes (:func:`small_scene_processes`).

    Args:
        processes: An explicit count (0 or 1: none), or None to read the environment.
        items: The scenes, for the default.

    Returns:
        The count (1 means no worker processes).

    Raises:
        InvalidRequestError: If the count, or the environment's value, is not a number >= 0.
    """
    if processes is None:
        text = os.environ.get(PROCESSES_ENV, "").strip().lower()
        if not text:
            return small_scene_processes(items)
        if text in _OFF:
            return 1
        try:
            processes = int(text)
        except ValueError:
            raise InvalidRequestError(
                f"{PROCESSES_ENV}={text!r} is not a number; expected a count of worker "
                "processes, or 0/off for threads only."
            ) from None
    if processes < 0:
        raise InvalidRequestError(
            f"Worker processes {processes!r} is below 0; expected a count, or 0 for none."
        )
    return max(processes, 1)


def small_scene_processes(items: Sequence[object]) -> int:
    """One worker per usable core when there are two or more scenes, all small; else 1.

    A scene is small when it is a STAC item whose assets' ``proj:shape`` are all known and at
    most :data:`SMALL_SCENE_PX` on a side. Ids, and items without ``proj:shape``, are not
    known to be small (a full tile in each of two workers would double the memory).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not cores or cores < 2 or len(items) < 2:
        return 1
    for item in items:
        assets = getattr(item, "assets", None)
        if not isinstance(assets, dict) or not assets:
            return 1
        for asset in assets.values():
            shape = getattr(asset, "extra_fields", {}).get("proj:shape")
            if not isinstance(shape, list | tuple) or not shape:
                return 1
            # damaged metadata is the scene's to report when it is read, not a reason to fail
            if not all(isinstance(n, int) and 0 < n <= SMALL_SCENE_PX for n in shape):
                return 1
    return min(cores, len(items))


def unfit_for_processes(manager: StoreManager[T], *, asked: bool = True) -> str | None:
    """Why ``manager``'s scenes cannot be ingested by forked workers, or None if they can.

    Only a local directory store qualifies: a ``memory://`` store lives in one process, and
    an object store's client (its connections, its async runtime) must not be shared by a
    forked child. Unless processes were ``asked`` for, this process must run no other
    thread: a child forked while another thread holds a lock (GDAL's, a thread pool's, a
    progress bar's) can wait for it forever.
    """
    if not asked and threading.active_count() > 1:
        return f"{threading.active_count() - 1} other thread(s) run in this process"
    if not sys.platform.startswith("linux"):
        return f"the fork start method is not safe on {sys.platform!r}"
    if "fork" not in multiprocessing.get_all_start_methods():
        return "the fork start method is not available"
    if not isinstance(manager.store, Path):
        return f"the store {manager.store!r} is not a local directory"
    return None


def ingest_in_processes(
    run_one: Callable[[T], IngestResult],
    items: Sequence[T],
    processes: int,
    *,
    on_result: Callable[[IngestResult], None] | None = None,
    identifier: Callable[[T], str],
) -> list[IngestResult]:
    """Ingest ``items`` with ``run_one`` in ``processes`` forked workers, one scene each.

    Args:
        run_one: Ingests one scene and returns its result (scene failures inside it).
        items: The scenes.
        processes: Worker processes (>= 2).
        on_result: Called in this process after each scene, as it finishes.
        identifier: A scene's identifier, for the error of a scene whose worker died.

    Returns:
        One result per scene, in input order.
    """
    results: dict[int, IngestResult] = {}

    def finished(index: int, result: IngestResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(result)

    died = _run_pool(run_one, items, range(len(items)), processes, finished)
    if died:
        logger.warning(
            "A worker process ended abruptly; ingesting %d scene(s) again, each in a process "
            "of its own",
            len(died),
        )
    for index in died:
        # Alone in its pool, a scene that kills its worker again is known to be the cause.
        if _run_pool(run_one, items, [index], 1, finished):
            finished(
                index,
                IngestResult(identifier(items[index]), error=WORKER_DIED.format(env=PROCESSES_ENV)),
            )
    return [results[i] for i in range(len(items))]


def _run_pool(
    run_one: Callable[[T], IngestResult],
    items: Sequence[T],
    indices: Sequence[int],
    processes: int,
    finished: Callable[[int, IngestResult], None],
) -> list[int]:
    """Run ``indices`` in a pool; return the ones whose worker died (pool broken)."""
    with _shared_gate() as gate_dir:
        # The pool forks every worker at its first submit (the fork start method), below.
        _settle_threads()
        pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,  # type: ignore[arg-type]
            initargs=(run_one, items, processes, gate_dir, os.getpid()),  # type: ignore[arg-type]
        )
        died: list[int] = []
        try:
            futures: dict[Future[IngestResult], int] = {
                pool.submit(_ingest_one, index): index for index in indices
            }
            for future in as_completed(futures):
                index = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool:
                    died.append(index)
                    continue
                finished(index, result)
        finally:
            # A bug raised in a worker propagates: the scenes not started are not started.
            pool.shutdown(wait=True, cancel_futures=True)
        return sorted(died)


def _settle_threads(timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until no other thread of this process is running, for ``timeout_s`` at most.

    A fork copies the locks a running thread holds, locked, with no thread to release them.
    The thread that matters most has already been joined: after :meth:`threading.Thread.join`
    returns, the native thread still runs its thread-local destructors, and GDAL's closes the
    thread's PROJ context, holding SQLite's global mutex, so a child forked then hangs at its
    first CRS lookup. Idle threads (pools waiting for work, an event loop in ``epoll``) sleep
    in the kernel and hold no lock; a running one is waited for (a few milliseconds).
    """
    me = str(threading.get_native_id())
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            tasks = [t for t in os.listdir("/proc/self/task") if t != me]
        except OSError:  # pragma: no cover - Linux always has /proc; nothing to wait for
            return
        if not any(_running(task) for task in tasks) or time.monotonic() >= deadline:
            return
        time.sleep(0.001)


def _running(task: str) -> bool:
    """Whether thread ``task`` of this process is on a CPU or runnable (state ``R``)."""
    try:
        stat = Path(f"/proc/self/task/{task}/stat").read_text()
    except OSError:
        return False  # it has exited meanwhile
    # "<tid> (<comm>) <state> ...": comm may hold spaces and parentheses, the state follows
    # the last ")".
    return stat.rpartition(")")[2].split()[:1] == ["R"]


@contextlib.contextmanager
def _shared_gate() -> Iterator[str | None]:
    """A temporary :class:`~scenestore.throttle.FileGate` directory for one pool's workers."""
    from scenestore.throttle import SHARED_DIR_ENV

    if os.environ.get(SHARED_DIR_ENV, "").strip():
        yield None  # the workers inherit the environment and share its gate already
        return
    directory = tempfile.mkdtemp(prefix="scenestore-budget-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- in the worker process ----------------------------------------------------------------------

_run_one: Callable[[object], IngestResult] | None = None
_items: Sequence[object] = ()


def _start_worker(
    run_one: Callable[[object], IngestResult],
    items: Sequence[object],
    processes: int,
    gate_dir: str | None,
    parent: int,
) -> None:
    """Keep the scene function and items; give this process its share of the budget."""
    global _run_one, _items
    _die_with(parent)
    _run_one, _items = run_one, items
    from scenestore import throttle
    from scenestore.gdal import clear_http_cache
    from scenestore.profiles import PROFILES

    # Each profile's cap on requests in flight, divided between the workers (rounded up).
    caps = []
    for name, profile in PROFILES.items():
        cap = throttle.limits_of(profile).concurrency
        if cap is not None:
            caps.append(f"{name}={max(1, math.ceil(cap / processes))}")
    if caps:
        os.environ[throttle.CONCURRENCY_ENV] = ",".join(caps)
    # Budgets made anew: the caller's copies count its requests, not this process's.
    throttle.reset_budgets()
    previous = throttle.set_fleet_gate(None)
    if previous is not None:
        throttle.set_fleet_gate(previous)  # the caller's own cross-process gate: keep it
    elif gate_dir is not None:
        throttle.set_fleet_gate(throttle.FileGate(gate_dir))
    if "rasterio" in sys.modules:
        clear_http_cache()


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when ``parent`` (the caller) ends, however it ends.

    A caller killed with SIGKILL runs no clean-up, and its workers would go on writing to the
    store after the user saw the ingest stop. (The pool forks from the thread that called
    :func:`ingest_in_processes`, which waits for the pool, so that thread's end, which is what
    the kernel watches, is the caller's.)
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask
        return
    if os.getppid() != parent:  # the caller ended before the request took effect
        os._exit(1)


def _forget_thread_pools() -> None:
    """In a forked child: drop the thread pools inherited from the parent, and their locks.

    A :class:`~concurrent.futures.ThreadPoolExecutor` starts a thread only when none is idle,
    and it counts idle threads in a semaphore that a fork copies while the threads stay in the
    parent: a task handed to the inherited pool waits forever. scenestore's block pool and
    dask's threaded scheduler keep their pools in module globals and never check the pid, so
    they are reset here and made anew on first use. (zarr resets its own loop and executor
    at a fork.) Their locks are made anew too: a parent's thread may have held one.
    """
    arrays = sys.modules.get("scenestore.store.arrays")
    if arrays is not None:
        arrays._pool = None  # type: ignore[attr-defined]
        arrays._pool_lock = threading.Lock()  # type: ignore[attr-defined]
    threaded = sys.modules.get("dask.threaded")
    if threaded is not None:
        threaded.default_pool = None  # type: ignore[attr-defined]
        threaded.pools.clear()
        threaded.pools_lock = threading.Lock()  # type: ignore[attr-defined]


# Every fork, not only this module's pools: a child forked by any code must not use them either.
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_thread_pools)


def _ingest_one(index: int) -> IngestResult:
    if _run_one is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker process was not initialised")
    return _run_one(_items[index])


__all__ = [
    "PROCESSES_ENV",
    "ingest_in_processes",
    "processes_wanted",
    "unfit_for_processes",
]
