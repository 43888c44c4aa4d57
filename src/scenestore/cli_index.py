"""Commands that answer from the store index, offline: ``index``, ``search --store`` and
``ingest --offline``.

A compute node without internet asks "which stored scenes cover this area in this season, with
little cloud, and have the bands I need?"; these commands answer it from the store alone
(:mod:`scenestore.store.index`) and never touch the network. They print and fail like every
other command: one line naming the bad value, exit 2, store unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from scenestore.cli_options import StoreOpt
from scenestore.errors import InvalidRequestError

#: Exit code when scenes were found but some lack requested bands (``ingest --offline``).
EXIT_INCOMPLETE = 1


def read_index(location: Any) -> Any:
    """The store's index, checked against the store (a client only: no zarr is imported).

    Raises:
        StoreError: If the store is missing or cannot be read.
    """
    from scenestore.store import open_client, store_location
    from scenestore.store.index import StoreIndex

    return StoreIndex.read(open_client(store_location(location)))


def register(
    app: typer.Typer,
    *,
    user_errors: Callable[[Callable[..., Any]], Callable[..., Any]],
    console: Console,
    err_console: Console,
    size: Callable[[int], str],
) -> None:
    """Add the ``index`` command to ``app`` (``search`` and ``ingest`` call the helpers below)."""

    @app.command("index")
    @user_errors
    def index_(
        store: StoreOpt,
        rebuild: Annotated[
            bool,
            typer.Option("--rebuild", help="Build it anew from every scene's commit records."),
        ] = False,
    ) -> None:
        """Show the store index (what ls and search --store read), or --rebuild it."""
        import time

        from scenestore.store import open_client, store_location
        from scenestore.store.index import StoreIndex, index_status
        from scenestore.store.index import rebuild as rebuild_index

        client = open_client(store_location(store))
        client.check_readable()
        started = time.perf_counter()
        if rebuild:
            index = rebuild_index(client)
            scenes = index.scenes()
            console.print(
                f"Rebuilt the index of {store}: {len(scenes)} scenes, "
                f"{sum(len(s.bands) for s in scenes)} committed bands, "
                f"{size(sum(s.size_bytes for s in scenes))}, in "
                f"{time.perf_counter() - started:.1f} s.",
                highlight=False,
            )
            return
        index = StoreIndex.read(client)
        status = index_status(client)
        scenes = index.scenes()
        console.print(
            f"{len(scenes)} scenes indexed in {store} "
            f"(snapshot {status['snapshot'] or 'none'}, {size(status['snapshot_bytes'])}; "
            f"{status['journal_entries']} journal entries not yet folded in; "
            f"{index.corrected} entries corrected against the store).",
            highlight=False,
            soft_wrap=True,
        )


def print_found(
    found: list[Any],
    title: str,
    *,
    size: Callable[[int], str],
    bands_text: Callable[..., str],
    table: Callable[..., str],
    as_json: bool = False,
) -> None:
    """Stored scenes as ``ls`` prints them (a plain table, or JSON records)."""
    if as_json:
        print(json.dumps([info.as_record() for info in found], indent=1))
        return
    rows = [
        (
            info.identifier,
            (info.datetime or "")[:10],
            info.tile or "",
            "" if info.cloud_cover is None else f"{info.cloud_cover:.1f}",
            (bands_text(info.bands) if info.bands else "(none committed)")
            + (f" (damaged: {'; '.join(info.damaged)})" if info.damaged else ""),
            size(info.size_bytes),
        )
        for info in found
    ]
    # print(), not rich: thousands of rows (issue #17: ls of 5,000 scenes within 1.5 s).
    print(f"{len(found)} {title} ({size(sum(i.size_bytes for i in found))})")
    print(table(("scene", "sensing date", "tile", "cloud %", "bands", "size"), rows))


def offline_ingest(
    store: Any,
    query: Any | None,
    ids: Sequence[Any],
    bands: Sequence[str],
    *,
    console: Console,
    err_console: Console,
    bands_text: Callable[..., str],
) -> int:
    """What an ingest would do, from the store alone: which scenes are ready, which lack bands.

    Args:
        store: The store location.
        query: The validated search, or None when only ids are given.
        ids: :class:`~scenestore.idlist.IdEntry` values (store identifiers or item ids).
        bands: The bands the run needs.
        console: Where the table goes.
        err_console: Where missing scenes and bands are named.
        bands_text: Formats a band list.

    Returns:
        0 when every scene found has every band, else :data:`EXIT_INCOMPLETE`.
    """
    from scenestore.offline import plan_offline

    plan = plan_offline(store, [("search", query)] if query else [], [e.value for e in ids], bands)
    for scene in plan.scenes:
        if scene.missing:
            err_console.print(
                f"[red]incomplete:[/] {scene.identifier} lacks {','.join(scene.missing)}; run "
                "this ingest with network access (without --offline) to fetch them.",
                highlight=False,
                soft_wrap=True,
            )
        else:
            console.print(f"ready: {scene.identifier} ({bands_text(list(bands))})", highlight=False)
    sources = {e.value: e.source for e in ids}
    for value in plan.not_stored:
        err_console.print(
            f"[red]not stored:[/] {value} ({sources.get(value, '--ids')}) is no scene of "
            f"{store}; expected a store identifier or item id that `scenestore ls` lists.",
            highlight=False,
            soft_wrap=True,
        )
    found = len(plan.scenes)
    console.print(
        f"Offline: {found - len(plan.incomplete)} of {found} scenes have every requested band "
        f"in {store}; nothing was downloaded.",
        highlight=False,
    )
    return 0 if plan.ready else EXIT_INCOMPLETE


def check_offline_options(**given: Any) -> None:
    """Options that need the network make no sense with ``--offline``.

    Raises:
        InvalidRequestError: Naming the first such option given.
    """
    for name, value in given.items():
        if value:
            raise InvalidRequestError(
                f"{name} was given with --offline; expected a search (--bbox/--aoi, --start, "
                "--end...) or --ids/--ids-file, answered from the store alone."
            )


def write_ids(path: Path, identifiers: list[str], header: list[str]) -> None:
    """Write found store identifiers as an id file (``ingest --ids-file`` reads it)."""
    from scenestore.idlist import write_id_file

    write_id_file(path, identifiers, header=header)


__all__ = [
    "EXIT_INCOMPLETE",
    "check_offline_options",
    "offline_ingest",
    "print_found",
    "read_index",
    "register",
    "write_ids",
]
