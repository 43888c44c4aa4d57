"""Commands that look after a store: ``rm``, ``prune``, ``catalog`` and ``quicklook``.

They are registered on the ``scenestore`` app by :func:`register` (called from
:mod:`scenestore.cli`), which hands over the CLI's error wrapper and formatting helpers, so
these commands print and fail exactly like the others: one line naming the bad value, exit 2,
store unchanged. ``--store`` is the option of every command (:mod:`scenestore.cli_options`), a
directory or an ``s3://`` URL, and each store question goes through :mod:`scenestore.store`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from scenestore.cli_options import StoreOpt
from scenestore.errors import InvalidRequestError


def open_store(location: Any) -> Any:
    """The store's scenes (imported here, not at start: zarr makes ``--help`` slow)."""
    from scenestore.store import open_store as open_scenes

    return open_scenes(location)


YesOpt = Annotated[bool, typer.Option("--yes", help="Remove them (default: a dry run).")]
WaitOpt = Annotated[
    float,
    typer.Option("--wait", help="Seconds to wait for a scene an ingest is writing (default 0)."),
]

#: Exit code when some scenes were skipped because an ingest holds their lock.
EXIT_SKIPPED = 1
#: Longest edge of a quicklook unless --size says otherwise (quicklook.DEFAULT_MAX_SIZE).
DEFAULT_QUICKLOOK_SIZE = 512


def check_wait(wait: float) -> float:
    """Return ``wait`` if it is a usable number of seconds to wait for a busy scene.

    Raises:
        InvalidRequestError: If it is negative.
    """
    if wait < 0:
        raise InvalidRequestError(f"--wait {wait:g} is negative; expected 0 or more seconds.")
    return wait


def register(
    app: typer.Typer,
    *,
    user_errors: Callable[[Callable[..., Any]], Callable[..., Any]],
    console: Console,
    err_console: Console,
    size: Callable[[int], str],
) -> None:
    """Add the store-keeping commands to ``app``.

    Args:
        app: The ``scenestore`` Typer app.
        user_errors: The CLI's wrapper turning scenestore errors into one line and exit 2.
        console: Where tables go (stdout).
        err_console: Where skips and errors go (stderr).
        size: Formats a byte count for humans.
    """

    def removal_report(infos: list[Any], *, yes: bool, wait: float, store: Any, what: str) -> None:
        """List what would go; with ``yes`` remove it and report the skipped (exit 1)."""
        from scenestore.store.removal import remove_scenes

        total = size(sum(i.size_bytes for i in infos))
        if not infos:
            console.print(f"No scene {what}; nothing to remove.")
            return
        table = Table(title=f"{len(infos)} scenes {what} ({total})")
        for col in ("scene", "sensing date", "bands", "size"):
            table.add_column(col, no_wrap=col != "bands")
        for i in infos:
            table.add_row(
                i.identifier, (i.datetime or "")[:10], str(len(i.bands)), size(i.size_bytes)
            )
        console.print(table)
        if not yes:
            console.print("Dry run: nothing removed. Run again with --yes to remove them.")
            return
        results = remove_scenes(open_store(store), [i.identifier for i in infos], wait_seconds=wait)
        done = [r for r in results if r.removed]
        console.print(f"Removed {len(done)} scenes, freed {size(sum(r.size_bytes for r in done))}.")
        skipped = [r for r in results if not r.removed]
        for r in skipped:
            err_console.print(f"[yellow]skipped:[/] {r.reason}", highlight=False, soft_wrap=True)
        if skipped:
            raise typer.Exit(EXIT_SKIPPED)

    @app.command("rm")
    @user_errors
    def rm(
        store: StoreOpt,
        identifiers: Annotated[list[str], typer.Argument(help="Scenes to remove.")],
        yes: YesOpt = False,
        wait: WaitOpt = 0.0,
    ) -> None:
        """Remove scenes (a dry run unless --yes); safe while an ingest writes to the store."""
        from scenestore.store.inventory import check_store, scene_info

        check_wait(wait)
        scenes = check_store(open_store(store))
        infos = [scene_info(scenes, i) for i in dict.fromkeys(identifiers)]
        removal_report(infos, yes=yes, wait=wait, store=store, what="to remove")

    @app.command()
    @user_errors
    def prune(
        store: StoreOpt,
        before: Annotated[
            str | None, typer.Option("--before", help="Remove scenes sensed before this day.")
        ] = None,
        not_in: Annotated[
            Path | None,
            typer.Option(
                "--not-in",
                help="Remove scenes not named in this file (identifiers or item ids one per "
                "line, or a STAC ItemCollection JSON).",
            ),
        ] = None,
        max_size: Annotated[
            str | None,
            typer.Option(
                "--max-size",
                help="Remove the least recently ingested scenes until the store fits, e.g. 500GB.",
            ),
        ] = None,
        older_than: Annotated[
            str | None,
            typer.Option(
                "--older-than",
                help="Remove scenes ingested longer ago than this (30d, 12h, 2w) or before a day.",
            ),
        ] = None,
        yes: YesOpt = False,
        wait: WaitOpt = 0.0,
    ) -> None:
        """Remove scenes sensed --before a day, --not-in a keep list, ingested --older-than an
        age, or the least recently ingested until the store fits --max-size (a dry run unless
        --yes). The selection reads the store index; each removal checks the scene itself."""
        from datetime import UTC, datetime

        from scenestore.aoi import parse_date
        from scenestore.idlist import read_id_file
        from scenestore.store.inventory import list_scenes
        from scenestore.store.removal import (
            parse_age,
            parse_size,
            select_before,
            select_ingested_before,
            select_not_in,
            select_to_fit,
        )

        check_wait(wait)
        chosen = [
            name
            for name, value in (
                ("--before", before),
                ("--not-in", not_in),
                ("--max-size/--older-than", max_size or older_than),
            )
            if value is not None
        ]
        if len(chosen) != 1:
            raise InvalidRequestError(
                f"prune got {' and '.join(chosen) or 'no selection'}; expected exactly one of "
                "--before YYYY-MM-DD, --not-in FILE, or --max-size SIZE and/or --older-than AGE."
            )
        if before is not None:
            day = parse_date(before, name="--before date")
            infos = select_before(list_scenes(open_store(store)), day)
            what = f"sensed before {day.isoformat()}"
        elif not_in is not None:
            keep = {entry.value for entry in read_id_file(not_in)}
            if not keep:
                raise InvalidRequestError(
                    f"Keep list {str(not_in)!r} names no scene, so every scene would be pruned; "
                    "expected scene identifiers or item ids, one per line, or a STAC "
                    "ItemCollection JSON file."
                )
            infos = select_not_in(list_scenes(open_store(store)), keep)
            what = f"not in {not_in}"
        else:
            limit = parse_size(max_size) if max_size is not None else None
            cutoff = parse_age(older_than, now=datetime.now(UTC)) if older_than else None
            every = list_scenes(open_store(store))
            infos = select_ingested_before(every, cutoff) if cutoff else []
            reasons = [f"ingested before {cutoff:%Y-%m-%d %H:%M} UTC"] if cutoff else []
            if limit is not None:
                infos = select_to_fit(every, limit, already=infos)
                total = sum(i.size_bytes for i in every)
                reasons.append(
                    f"least recently ingested, to fit {size(limit)} (store holds {size(total)})"
                )
            what = " or ".join(reasons)
        removal_report(infos, yes=yes, wait=wait, store=store, what=what)

    @app.command()
    @user_errors
    def quicklook(
        store: StoreOpt,
        identifier: Annotated[str, typer.Argument(help="Scene identifier.")],
        out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
        max_size: Annotated[
            int, typer.Option("--size", help="Longest edge in pixels.")
        ] = DEFAULT_QUICKLOOK_SIZE,
    ) -> None:
        """Write a true-colour PNG (B04, B03, B02) of a stored scene, read decimated, to --out."""
        from scenestore.store.inventory import check_store
        from scenestore.store.quicklook import write_quicklook

        look = write_quicklook(check_store(open_store(store)), identifier, out, max_size=max_size)
        rows, cols, _ = look.rgba.shape
        lo, hi = look.stretch
        read = "every pixel" if look.step == 1 else f"1 in {look.step} pixels each way"
        console.print(
            f"Wrote {out}: {cols} x {rows} px ({read}), reflectance {lo:.3f}..{hi:.3f} "
            "stretched to 0..255, nodata transparent."
        )

    @app.command()
    @user_errors
    def catalog(
        store: StoreOpt,
        out: Annotated[Path, typer.Option("--out", help="Directory for the STAC catalog.")],
        title: Annotated[str | None, typer.Option("--title", help="Catalog title.")] = None,
    ) -> None:
        """Write a static STAC catalog of the store (one item per scene) and validate it."""
        from scenestore.store.catalog import validate_catalog, write_catalog
        from scenestore.store.inventory import check_store

        written = write_catalog(check_store(open_store(store)), out, title=title)
        check = validate_catalog(out)
        items = len(list(written.get_items()))
        console.print(
            f"Wrote {out / 'catalog.json'}: {items} items. Valid against the STAC core schemas "
            f"({check.objects} objects, checked offline)."
        )
        if check.extensions_unchecked:
            console.print(
                "Extension schemas not checked (no local copy; put them in "
                f"$SCENESTORE_STAC_SCHEMAS): {', '.join(check.extensions_unchecked)}"
            )
