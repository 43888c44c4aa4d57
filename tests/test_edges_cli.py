"""The CLI at its edges: no hang, no traceback, one line per failure, the summary always printed.

Real processes against real sockets: a server that accepts and never answers, one that
answers HTML, the offline world with injected faults, and a child whose file size limit makes
every large write fail with EFBIG (disk full without root tricks).
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scenestore_world.faults import FaultPlan

#: Retries wait 50 ms, not 1 s (SCENESTORE_RETRY_BACKOFF): the tests check what is retried.
ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "SCENESTORE_RETRY_BACKOFF": "0.05"}


def run(
    *args: str, limit_fsize: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    def limit() -> None:  # runs in the child: writes past the limit fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    return subprocess.run(
        [sys.executable, "-m", "scenestore.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        preexec_fn=limit if limit_fsize is not None else None,
    )


def aoi_args(world) -> list[str]:
    w, s, e, n = world.items[0].bbox
    return ["--bbox", f"{w},{s},{e},{n}", "--start", "2024-01-01", "--end", "2025-12-31"]


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


@pytest.fixture
def html_server() -> Iterator[str]:
    """A server that answers every request 200 with an HTML page (a captive portal, a proxy)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Html(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b"<html><body>Service temporarily moved</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_stac_api_that_never_answers_times_out_with_one_line(silent_server, tmp_path):
    store = tmp_path / "store"
    started = time.monotonic()
    proc = run(
        "--timeout", "1", "ingest", "--store", str(store), "--stac-url", silent_server,
        "--bbox", "10,50,11,51", "--start", "2024-01-01", "--end", "2024-01-31",
        "--retries", "0", timeout=60,
    )
    assert time.monotonic() - started < 30, "the ingest waited far beyond its timeout"
    assert proc.returncode == 1, proc.stderr
    assert len(lines(proc.stderr)) == 1, proc.stderr
    assert silent_server in proc.stderr and "read 1 s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_timeout_variable_that_is_not_a_number_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scenestore.cli", "--timeout", "0", "ls", "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=ENV,
    )
    assert proc.returncode == 2 and len(lines(proc.stderr)) == 1, proc.stderr
    assert "--timeout" in proc.stderr


def test_a_stac_api_answering_html_is_one_line_naming_the_url(html_server):
    proc = run("search", "--stac-url", html_server, "--bbox", "10,50,11,51",
               "--start", "2024-01-01", "--end", "2024-01-31")
    # Transient (a proxy page goes away), so it was retried, then failed: exit 1, one line.
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in lines(proc.stderr) if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert html_server in errors[0] and "malformed answer" in errors[0]
    assert "JSON" in errors[0]


def test_one_503_on_search_is_retried_and_the_ingest_succeeds(world, tmp_path):
    store = tmp_path / "store"
    plan = FaultPlan(status_503=1.0, max_faults=1, path_glob="search", retry_after=None)
    with world.faulted(stac=plan):
        proc = run("ingest", "--store", str(store), "--stac-url", world.stac_url,
                   *aoi_args(world), "--bands", "B04")
    assert proc.returncode == 0, proc.stderr
    assert "Transient failure of the STAC search (attempt 1)" in proc.stderr
    assert "ingest summary" in proc.stdout and "fetched" in proc.stdout


def test_search_still_failing_after_retries_exits_1_not_2(world, tmp_path):
    plan = FaultPlan(status_503=1.0, path_glob="search", retry_after=None)
    with world.faulted(stac=plan):
        proc = run("ingest", "--store", str(tmp_path / "s"), "--stac-url", world.stac_url,
                   *aoi_args(world), "--bands", "B04", "--retries", "1")
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in lines(proc.stderr) if ln.startswith("error:")]
    assert len(errors) == 1 and "HTTP 503" in errors[0], proc.stderr


def test_disk_full_while_creating_a_scene_is_one_line_not_retried_and_the_summary_prints(
    world, tmp_path
):
    store = tmp_path / "store"
    store.mkdir()
    # 4 kB: the small metadata files fit, a band's chunks do not (EFBIG, as on a full disk).
    proc = run("ingest", "--store", str(store), "--stac-url", world.stac_url, *aoi_args(world),
               "--bands", "B04", "--parallel", "1", "--retries", "3", limit_fsize=4096)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ingest summary" in proc.stdout and "failed" in proc.stdout
    failures = [ln for ln in lines(proc.stderr) if ln.startswith("failed:")]
    assert failures and all("File too large" in ln and "EFBIG" in ln for ln in failures)
    assert all(str(store) in ln for ln in failures), proc.stderr
    assert "Transient failure" not in proc.stderr  # a local error is not retried
    assert "asset server" not in proc.stderr


def test_a_failed_download_leaves_no_empty_scene_listed(world, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    before = tree(store)
    with world.faulted(cog=FaultPlan(reset_mid_body=1.0)):
        proc = run("ingest", "--store", str(store), "--stac-url", world.stac_url,
                   *aoi_args(world), "--bands", "B04", "--retries", "0")
    assert proc.returncode == 1, proc.stderr
    ls = run("ls", "--store", str(store), "--json")
    assert ls.returncode == 0 and json.loads(ls.stdout) == [], ls.stdout
    # Nothing but lock files was left (locks live outside the scene groups).
    assert [p for p in tree(store) if not p.startswith(".")] == before


def test_an_ingest_under_cog_faults_prints_only_our_lines(world, tmp_path):
    store = tmp_path / "store"
    with world.faulted(cog=FaultPlan(status_503=0.3, reset_mid_body=0.1, seed=3)):
        proc = run("ingest", "--store", str(store), "--stac-url", world.stac_url,
                   *aoi_args(world), "--bands", "B04,B8A", "--retries", "8")
    assert proc.returncode == 0, proc.stderr
    ours = ("Transient failure",)
    foreign = [ln for ln in lines(proc.stderr) if not any(m in ln for m in ours)]
    # rich wraps a long warning onto continuation lines; those start with spaces.
    foreign = [ln for ln in foreign if not ln.startswith(" ")]
    assert foreign == [], proc.stderr


def test_an_empty_store_option_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scenestore.cli", "ls", "--store", ""],
        capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path,
    )
    assert proc.returncode == 2 and len(lines(proc.stderr)) == 1, proc.stderr
    assert "--store" in proc.stderr and "empty" in proc.stderr
    assert tree(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["ingest", "--store", "s", "--parallel", "abc"], "--parallel"),
        (["ingest", "--store", "s", "--retries", "x"], "--retries"),
        (["bogus-command"], "bogus-command"),
        (["ls", "--no-such-option"], "--no-such-option"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, named, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scenestore.cli", *args],
        capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(lines(proc.stderr)) == 1 and named in proc.stderr, proc.stderr
    assert "╭" not in proc.stderr


def test_an_unsafe_id_in_an_item_file_is_refused_before_any_download(world, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    good = world.items[0].to_dict()
    bad = dict(good, id="../../escape")
    files = []
    for name, doc in (("good.json", good), ("bad.json", bad)):
        (tmp_path / name).write_text(json.dumps(doc))
        files += ["--item", str(tmp_path / name)]
    proc = run("ingest", "--store", str(store), "--stac-url", world.stac_url, *files,
               "--bands", "B04")
    assert proc.returncode == 2, proc.stderr
    assert len(lines(proc.stderr)) == 1 and "../../escape" in proc.stderr, proc.stderr
    assert "ingest summary" not in proc.stdout
    assert tree(store) == []  # not even the good item was downloaded


def test_an_unreachable_stac_api_is_retried_then_one_line_exit_1(tmp_path):
    proc = run("ingest", "--store", str(tmp_path / "s"), "--stac-url", "http://127.0.0.1:9/",
               "--bbox", "0,0,1,1", "--start", "2024-01-01", "--end", "2024-01-02",
               "--retries", "1")
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in lines(proc.stderr) if ln.startswith("error:")]
    assert len(errors) == 1 and "Cannot reach the STAC API" in errors[0], proc.stderr
    assert "http://127.0.0.1:9/" in errors[0]
    assert "(attempt 1)" in proc.stderr and "(attempt 2)" not in proc.stderr
