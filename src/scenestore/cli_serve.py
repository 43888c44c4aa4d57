"""``scenestore serve``: the store as a STAC API on 127.0.0.1, until Ctrl-C.

Registered on the ``scenestore`` app by :func:`register` (called from :mod:`scenestore.cli`,
which hands over its error wrapper, so a bad ``--store`` or a missing rustac is one line on
stderr and exit 2, like every other command). The work is :func:`scenestore.serve.start`;
nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Annotated, Any

import typer

from scenestore.cli_options import StoreOpt

#: Where ``--host`` listens unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"  # scenestore.serve.DEFAULT_HOST (not imported: start-up time)
#: rustac's own default port, stable so that a pasted URL keeps working across restarts.
DEFAULT_PORT = 7822  # scenestore.serve.DEFAULT_PORT
#: Exit code when the server stops by itself while serving (not a user mistake).
EXIT_SERVER_DIED = 1

SERVE_HELP = (
    "Serve the store as a STAC API on 127.0.0.1 (pystac-client, QGIS...) until Ctrl-C.\n\n"
    "Items are the stored scenes, in the collection 'scenestore'; each band asset is the band's "
    "zarr v3 array in the store (open it with zarr or xarray). The API searches by bbox, "
    "intersects, datetime, ids and collections, but has no CQL2 filter: filter cloud cover "
    "client-side. It serves what the store held at start: restart it after an ingest. "
    "Needs rustac (pip install rustac)."
)

HostOpt = Annotated[
    str,
    typer.Option(
        "--host",
        help="Address to listen on (default 127.0.0.1: this machine only; the API lists every "
        "stored scene and its paths to whoever reaches it).",
    ),
]
PortOpt = Annotated[
    int, typer.Option("--port", help="Port to listen on (default 7822; 0: any free port).")
]


def register(
    app: typer.Typer, *, user_errors: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Add the ``serve`` command to ``app``.

    Args:
        app: The ``scenestore`` Typer app.
        user_errors: The CLI's wrapper turning scenestore errors into one line and exit 2.
    """

    @app.command("serve", help=SERVE_HELP)
    @user_errors
    def serve(
        store: StoreOpt,
        host: HostOpt = DEFAULT_HOST,
        port: PortOpt = DEFAULT_PORT,
    ) -> None:
        """Serve the store as a STAC API until Ctrl-C (or SIGTERM); see ``SERVE_HELP``."""
        from scenestore.serve import start, usage_example
        from scenestore.store import open_store

        stop = threading.Event()
        with _stop_on_signals(stop):
            try:
                server = start(open_store(store), host, port)
            except KeyboardInterrupt:
                _say("Interrupted before the STAC API started.", err=True)
                raise typer.Exit(130) from None
            try:
                with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the way to stop it
                    _say(
                        f"Serving {server.items} scenes of {store} as a STAC API at "
                        f"{server.url} (collection {server.collection!r})."
                    )
                    _say(
                        "Search it with pystac-client (no CQL2 filter here: filter cloud cover "
                        "client-side), for example:\n"
                    )
                    _say("\n".join(f"    {line}" for line in usage_example(server).splitlines()))
                    _say("\nPress Ctrl-C to stop.")
                    while not stop.wait(0.5):
                        if not server.is_alive():
                            _say(
                                f"error: the STAC API at {server.url} (rustac serve) stopped by "
                                f"itself with exit code {server.process.returncode}; run "
                                "`scenestore serve` again.",
                                err=True,
                            )
                            raise typer.Exit(EXIT_SERVER_DIED)
            finally:
                server.stop()
        _say("Stopped the STAC API.")


def _say(text: str, *, err: bool = False) -> None:
    """Print a line now (flushed: a script reading the URL from a pipe sees it at once)."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGHUP end the serving loop as Ctrl-C does, so rustac is stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["register"]
