"""Quicklooks of the scenes an ingest run stored, as files and as one markdown artifact.

After the scenes of a run are stored, one ``quicklooks`` task renders each stored scene's
true-colour PNG and keeps it in the store at ``<store>/.quicklooks/<identifier>.png`` (the
library's :func:`scenestore.store.quicklook.save_quicklook`): a file in a local store, an object
(``s3://bucket/prefix/.quicklooks/<identifier>.png``) in an object store. Then
:func:`publish_quicklooks` creates the ``ingest-quicklooks`` markdown artifact: per scene a
heading, the image embedded as a ``data:`` URI (so the Prefect UI shows it without serving
files, wherever the store is) and the PNG's path or URL. Only the first :data:`MAX_EMBEDDED`
images are embedded, to keep the artifact small; the others are listed by path or URL. A
scene whose quicklook cannot be made (the run did not store B04, B03 and B02) is listed with
the reason; it never fails the run.

A backfill in subflows mode shows the quicklooks of all its windows in one
``backfill-quicklooks`` artifact instead (:class:`QuicklookCollector`): each window hands its
stored scenes to the backfill through :data:`QUICKLOOK_SINK`, and the backfill renders them in
a background thread while the next window runs, off the windows' critical path.
"""

from __future__ import annotations

import base64
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.params import StoreSpec
from scenestore.errors import ScenestoreError
from scenestore.redact import redact
from scenestore.store import open_store
from scenestore.store.quicklook import RGB_BANDS, save_quicklook

#: Longest edge of the quicklooks an ingest run renders (small: they are embedded).
ARTIFACT_SIZE = 256
#: Quicklooks embedded in the artifact; further scenes are listed by file path.
MAX_EMBEDDED = 12


@dataclass(frozen=True)
class RenderedQuicklook:
    """One scene's quicklook as the artifact shows it.

    Attributes:
        identifier: Scene identifier.
        path: The PNG's path (local store) or URL (object store), when it was written.
        png: The PNG bytes, when it was written.
        note: Why there is no quicklook, when there is none.
    """

    identifier: str
    path: str | None = None
    png: bytes | None = None
    note: str | None = None


#: Quicklooks rendered at once inside a run's one ``quicklooks`` task.
RENDER_THREADS = 2


def render_quicklook(identifier: str, spec: StoreSpec) -> RenderedQuicklook:
    """Render one stored scene's quicklook into ``<store>/.quicklooks/`` and return it.

    Never raises: a scene without the RGB bands, or any other failure (a full disk...), costs
    the picture and is told in its note, never the run.
    """
    try:
        where, png = save_quicklook(open_store(spec.store), identifier, max_size=ARTIFACT_SIZE)
    except ScenestoreError as err:  # e.g. the run stored no RGB bands: no picture, no failure
        return RenderedQuicklook(identifier, note=redact(str(err)))
    except Exception as err:  # an unexpected error (disk full...) costs the picture, not the run
        return RenderedQuicklook(identifier, note=redact(f"{type(err).__name__}: {err}"))
    return RenderedQuicklook(identifier, path=where, png=png)


@task(name="quicklooks", task_run_name="quicklooks-{label}", persist_result=False)
def render_quicklooks(
    identifiers: list[str], spec: StoreSpec, label: str
) -> list[RenderedQuicklook]:
    """Render the quicklooks of a run's stored scenes, :data:`RENDER_THREADS` at a time.

    One task for all of a run's scenes, not one per scene: a task run costs a few API
    events and ~10 ms of bookkeeping, more than a 256 px quicklook of a small area.
    """
    if not identifiers:
        return []
    with ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="quicklook") as pool:
        return list(pool.map(lambda ident: render_quicklook(ident, spec), identifiers))


def quicklook_markdown(looks: list[RenderedQuicklook], *, label: str) -> str:
    """The artifact's markdown: a heading, the embedded image and the path per scene (pure)."""
    lines = [f"# Quicklooks of the scenes stored in {label}", ""]
    if not looks:
        lines.append("No scene was stored in this run.")
    for n, look in enumerate(looks):
        lines.append(f"## {look.identifier}")
        if look.png is None:
            lines += [f"No quicklook: {look.note}", ""]
            continue
        if n < MAX_EMBEDDED:
            data = base64.b64encode(look.png).decode("ascii")
            lines.append(f"![{look.identifier} true colour (B04, B03, B02)]"
                         f"(data:image/png;base64,{data})")
        lines += ["", f"File: `{look.path}`", ""]
    return "\n".join(lines)


def publish_quicklooks(identifiers: list[str], spec: StoreSpec, *, label: str) -> str | None:
    """Render the quicklooks of the stored scenes and create the ``ingest-quicklooks`` artifact.

    Call inside a flow run. Inside a backfill window (:data:`QUICKLOOK_SINK` set) the scenes
    go to the backfill's one artifact instead, and this returns None.

    Returns:
        The artifact id, or None when the run's bands lack RGB or the backfill shows them.
    """
    if not set(RGB_BANDS) <= set(spec.bands):
        get_run_logger().info("No quicklooks: the run stores no %s", ",".join(RGB_BANDS))
        return None
    sink = QUICKLOOK_SINK.get()
    if sink is not None:
        sink(identifiers)
        return None
    looks: list[RenderedQuicklook] = []
    if identifiers:
        state = render_quicklooks(identifiers, spec, label, return_state=True)
        if state.is_completed():
            looks = state.result()
        else:  # cannot happen short of a bug; it costs the pictures, never the run
            note = redact(str(state.message))
            looks = [RenderedQuicklook(identifier, note=note) for identifier in identifiers]
    return _artifact(looks, label=label, key="ingest-quicklooks")


def _artifact(looks: list[RenderedQuicklook], *, label: str, key: str) -> str:
    artifact = create_markdown_artifact(
        markdown=quicklook_markdown(looks, label=label),
        key=key,
        description=f"True-colour quicklooks of the {len(looks)} scenes stored in {label}",
    )
    return str(artifact)


#: Set in a backfill window's thread (its copy of the context only): where the window hands
#: the identifiers of its stored scenes instead of making its own quicklook artifact.
QUICKLOOK_SINK: contextvars.ContextVar[Callable[[list[str]], None] | None] = (
    contextvars.ContextVar("quicklook_sink", default=None)
)


class QuicklookCollector:
    """A backfill's quicklooks: rendered as its windows store scenes, published once.

    :meth:`add` (the :data:`QUICKLOOK_SINK` of every window) queues a window's scenes on one
    background thread, so the rendering overlaps the next window instead of lengthening
    each; :meth:`publish` waits for them and creates the ``backfill-quicklooks`` artifact,
    scenes in the order their windows handed them over. Rendering never raises
    (:func:`render_quicklook`), so neither does a window's hand-over.
    """

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="quicklook")
        self._looks: list[Future[RenderedQuicklook]] = []
        self._lock = threading.Lock()  # windows in flight together hand over at once

    def add(self, identifiers: list[str]) -> None:
        """Queue the quicklooks of a window's stored scenes."""
        with self._lock:
            self._looks += [self._pool.submit(render_quicklook, ident, self.spec)
                            for ident in identifiers]

    def publish(self, *, label: str) -> str | None:
        """Wait for the queued quicklooks and create the artifact (call in the flow run).

        Returns:
            The artifact id, or None when no window handed over a scene.
        """
        self._pool.shutdown(wait=True)
        if not self._looks:
            return None
        return _artifact([f.result() for f in self._looks], label=label,
                         key="backfill-quicklooks")


__all__ = [
    "ARTIFACT_SIZE",
    "MAX_EMBEDDED",
    "QUICKLOOK_SINK",
    "QuicklookCollector",
    "RenderedQuicklook",
    "publish_quicklooks",
    "quicklook_markdown",
    "render_quicklook",
    "render_quicklooks",
]
