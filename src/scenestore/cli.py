"""The ``scenestore`` command line: search, ingest, ls, info and the offline world.

rm, prune, catalog and quicklook live in :mod:`scenestore.cli_store`.

Every user mistake ends as one line on stderr naming the bad value, with exit code 2; a
scene that fails during ingest is listed in the summary and makes the exit code 1.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer._click import exceptions as click_errors  # typer vendors click since 0.2x
from typer.core import TyperGroup

from scenestore._lazy import import_in_background
from scenestore.bands import ALL_BANDS, normalize_bands
from scenestore.cli_options import StoreOpt, _store_location  # the parser of --store
from scenestore.errors import (
    DamagedSceneError,
    InvalidRequestError,
    ScenestoreError,
    StoreIOError,
    TransientSourceError,
)
from scenestore.network import DEFAULT_RETRIES
from scenestore.redact import redact

if TYPE_CHECKING:
    import pystac

    from scenestore.idlist import IdEntry
    from scenestore.manager import IngestResult
    from scenestore.search import FetchedItems, SceneQuery


class _OneLineErrors(TyperGroup):
    """typer's group, with usage errors as one line on stderr (exit 2) instead of a box.

    Overriding ``main`` covers both the installed entry point and typer's ``CliRunner``.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # always: the errors are printed here, one line each
        if not standalone_mode:
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **kwargs)
        except click_errors.NoArgsIsHelpError as err:  # bare `scenestore`: the help
            err.show()
            sys.exit(err.exit_code)
        except click_errors.ClickException as err:
            ctx = getattr(err, "ctx", None)  # usage errors carry the command's context
            command = f"{ctx.command_path}: " if ctx else ""
            message = " ".join(err.format_message().split())  # one line, whatever click wrote
            err_console.print(
                f"[bold red]error:[/] {command}{redact(message)} (see --help)",
                highlight=False,
                soft_wrap=True,
                markup=True,
            )
            sys.exit(err.exit_code)
        except typer.Abort:
            err_console.print("Aborted.", highlight=False)
            sys.exit(1)
        # Without standalone mode typer returns the typer.Exit code, or the command's value.
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="scenestore",
    help="A raw data store for Sentinel-2 L2A scenes (STAC -> odc-stac -> zarr v3).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
#: Tables are wider than rich's 80-column default for pipes and logs (CI, cron, tee):
#: squeezed, the identifier and date columns would be cut off ("sensi… 2024-…").
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)
err_console = Console(stderr=True)

EXIT_USER_ERROR = 2
EXIT_SCENE_FAILED = 1
#: What ``scenestore world`` says when the offline world's distribution is missing.
WORLD_NOT_INSTALLED = (
    "The offline world is not installed (package scenestore-world); install it with `uv sync` "
    "in a checkout or `pip install scenestore-world`."
)

StacUrl = Annotated[
    str | None,
    typer.Option("--stac-url", envvar="SCENESTORE_STAC_URL", help="STAC API root URL."),
]
ProfileOpt = Annotated[str, typer.Option("--profile", help="Provider profile.")]
BBoxOpt = Annotated[str | None, typer.Option("--bbox", help="W,S,E,N in degrees.")]
AoiOpt = Annotated[Path | None, typer.Option("--aoi", help="GeoJSON file with the AOI.")]
StartOpt = Annotated[str, typer.Option("--start", help="First day, YYYY-MM-DD.")]
EndOpt = Annotated[str, typer.Option("--end", help="Last day (inclusive), YYYY-MM-DD.")]
OptStart = Annotated[str | None, typer.Option("--start", help="First day, YYYY-MM-DD.")]
OptEnd = Annotated[str | None, typer.Option("--end", help="Last day (inclusive), YYYY-MM-DD.")]
CloudOpt = Annotated[
    float | None, typer.Option("--max-cloud", help="Maximum cloud cover in percent.")
]
TilesOpt = Annotated[str | None, typer.Option("--tiles", help="MGRS tiles, e.g. 33UUP,33UVP.")]


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn scenestore errors into one line on stderr and exit code 2 (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ScenestoreError as err:
            err_console.print(
                f"[bold red]error:[/] {redact(str(err))}", highlight=False, soft_wrap=True
            )
            # Damage, a local disk failure and a source still failing after the retries are
            # not user mistakes: exit 1, like a failed scene.
            failed = isinstance(err, DamagedSceneError | StoreIOError | TransientSourceError)
            raise typer.Exit(EXIT_SCENE_FAILED if failed else EXIT_USER_ERROR) from None

    return wrapper


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Seconds to wait for a STAC API or COG server's answer (default 60; connect 10). "
            "Also SCENESTORE_HTTP_TIMEOUT / SCENESTORE_HTTP_CONNECT_TIMEOUT.",
        ),
    ] = None,
) -> None:
    """Configure logging and timeouts for every command."""
    from rich.logging import RichHandler

    from scenestore.redact import RedactingFilter

    handler = RichHandler(console=err_console, show_path=False)
    handler.addFilter(RedactingFilter())  # every logger, any library: no secret is printed
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[handler],
    )
    # urllib3 logs every retry of an unreachable host; the one-line error says it better.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    _route_library_warnings(verbose)
    if timeout is not None:
        from scenestore.network import set_timeout

        try:
            set_timeout(timeout)
        except InvalidRequestError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


def _route_library_warnings(verbose: bool) -> None:
    """Send rasterio/odc/GDAL warnings to logging: shown with -v, otherwise dropped.

    Under faults GDAL and odc-loader warn once per failed range request, dozens of lines a
    run, though the retries succeed; the summary and the one-line errors say what matters.
    """
    import warnings

    logging.captureWarnings(True)
    if not verbose:
        logging.getLogger("py.warnings").setLevel(logging.CRITICAL)
        for name in ("rasterio", "rasterio._env", "rasterio._err", "odc", "odc.loader", "odc.stac"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    else:
        warnings.simplefilter("default")


def _query(
    bbox: str | None,
    aoi: Path | None,
    start: str,
    end: str,
    max_cloud: float | None,
    tiles: str | None,
) -> SceneQuery:
    from scenestore.search import build_query

    return build_query(start=start, end=end, bbox=bbox, aoi=aoi, max_cloud=max_cloud, tiles=tiles)


@app.command()
@user_errors
def search(
    start: StartOpt,
    end: EndOpt,
    stac_url: StacUrl = None,
    profile: ProfileOpt = "earth-search",
    bbox: BBoxOpt = None,
    aoi: AoiOpt = None,
    max_cloud: CloudOpt = None,
    tiles: TilesOpt = None,
    ids_out: Annotated[
        Path | None,
        typer.Option(
            "--ids-out",
            help="Also write the item ids found to this file (for `ingest --ids-file`).",
        ),
    ] = None,
    store: Annotated[
        Any,
        typer.Option(
            "--store",
            parser=_store_location,
            help="Search this store's scenes offline (its index) instead of a STAC API.",
        ),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option("--bands", help="With --store: only scenes with these bands committed."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --store: print JSON instead of a table.")
    ] = False,
) -> None:
    """Search a STAC API (or, with --store, a store offline) and print the matching scenes."""
    from scenestore.profiles import get_profile, tile_of

    query = _query(bbox, aoi, start, end, max_cloud, tiles)
    if store is None and (bands is not None or as_json):
        raise InvalidRequestError(
            f"{'--bands' if bands is not None else '--json'} was given without --store; "
            "expected --store STORE to search a store's scenes offline."
        )
    if store is not None:
        from scenestore.cli_index import print_found, read_index
        from scenestore.offline import index_query

        if stac_url is not None:
            raise InvalidRequestError(
                "--stac-url was given with --store; expected one of them: --store searches "
                "the store offline, --stac-url a STAC API."
            )
        wanted = normalize_bands(bands) if bands else []
        found = read_index(store).search(index_query(query, wanted))
        if ids_out is not None:
            from scenestore.idlist import write_id_file

            write_id_file(
                ids_out,
                [info.identifier for info in found],
                header=[
                    f"scenestore search --store {store}: {len(found)} stored scenes",
                    f"query: {query.to_json()}",
                ],
            )
            err_console.print(f"Wrote {len(found)} identifiers to {ids_out}", highlight=False)
        print_found(
            found,
            f"stored scenes match in {store}",
            size=_size,
            bands_text=_bands,
            table=_plain_table,
            as_json=as_json,
        )
        return
    prof = get_profile(profile)
    items = _search_with_retries(query, stac_url=stac_url, profile=prof)
    if ids_out is not None:
        from datetime import UTC, datetime

        from scenestore.idlist import write_id_file

        given = {
            "--start": start,
            "--end": end,
            "--bbox": bbox,
            "--aoi": aoi,
            "--max-cloud": max_cloud,
            "--tiles": tiles,
            "--profile": prof.name,
        }
        command = " ".join(f"{k} {v}" for k, v in given.items() if v is not None)
        write_id_file(
            ids_out,
            [item.id for item in items],
            header=[
                f"scenestore search {command}",
                f"{len(items)} scenes of {prof.collection!r} at "
                f"{redact(stac_url or prof.stac_url)}, {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
                f"query: {query.to_json()}",
                f"ingest them with: scenestore ingest --store STORE --ids-file {ids_out}",
            ],
        )
        err_console.print(f"Wrote {len(items)} item ids to {ids_out}", highlight=False)
    table = Table(title=f"{len(items)} scenes")
    for col in ("item", "datetime", "tile", "cloud %", "EPSG"):
        table.add_column(col)
    for item in items:
        p = item.properties
        table.add_row(
            item.id,
            str(p.get("datetime")),
            tile_of(item.to_dict(transform_hrefs=False)) or "",
            f"{p.get('eo:cloud_cover', float('nan')):.1f}",
            str(p.get("proj:epsg") or p.get("proj:code") or ""),
        )
    console.print(table)


@app.command()
@user_errors
def ingest(
    store: StoreOpt,
    start: OptStart = None,
    end: OptEnd = None,
    stac_url: StacUrl = None,
    profile: ProfileOpt = "earth-search",
    bbox: BBoxOpt = None,
    aoi: AoiOpt = None,
    max_cloud: CloudOpt = None,
    tiles: TilesOpt = None,
    bands: Annotated[str, typer.Option("--bands", help="Comma-separated band names.")] = ",".join(
        ALL_BANDS
    ),
    parallel: Annotated[int, typer.Option("--parallel", help="Scenes in flight at once.")] = 2,
    retries: Annotated[
        int, typer.Option("--retries", help="Further attempts after a transient failure.")
    ] = DEFAULT_RETRIES,
    item_files: Annotated[
        list[Path] | None,
        typer.Option("--item", help="Ingest this STAC item JSON file instead of searching."),
    ] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--ids", help="Item ids or store identifiers, comma-separated (repeatable)."),
    ] = None,
    ids_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--ids-file",
            help="File of ids, one per line ('#' comments), or a STAC ItemCollection JSON.",
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Never touch the network: find the scenes in the store's index and say "
            "which lack bands (exit 1 if any).",
        ),
    ] = False,
) -> None:
    """Search (or read --item files, or fetch --ids), then download the missing bands.

    Ids (--ids, --ids-file) are fetched from the STAC API 100 per request; with a search too,
    the scenes of both are ingested once each. An id the API does not have is named on stderr
    and makes the exit code 1, after the others are stored.
    """
    from scenestore.idlist import item_ids
    from scenestore.profiles import get_profile
    from scenestore.store import store_location

    band_list = normalize_bands(bands)
    if parallel < 1:
        raise InvalidRequestError(f"--parallel {parallel} is below 1; expected a positive number.")
    if retries < 0:
        raise InvalidRequestError(f"--retries {retries} is negative; expected 0 or more.")
    # The checks StacStoreManager makes, without importing it: the search's first request goes
    # out while xarray, odc-stac and rasterio import (issue #16: first request within 1.5 s).
    chosen = get_profile(profile)
    for band in band_list:
        chosen.asset_key(band)
    source_url = stac_url or chosen.stac_url
    store_location(store)  # a malformed URL is a user mistake: exit 2 before any request
    searching = any(v is not None for v in (start, end, bbox, aoi, max_cloud, tiles))
    if offline:
        from scenestore.cli_index import check_offline_options, offline_ingest

        check_offline_options(**{"--item": item_files, "--stac-url": stac_url})
        entries = _id_entries(ids, ids_file)
        offline_query = (
            _query(
                bbox, aoi, _required(start, "--start"), _required(end, "--end"), max_cloud, tiles
            )
            if searching or not entries
            else None
        )
        code = offline_ingest(
            store,
            offline_query,
            entries,
            band_list,
            console=console,
            err_console=err_console,
            bands_text=_bands,
        )
        raise typer.Exit(code)
    wanted = item_ids(_id_entries(ids, ids_file), chosen)
    items: list[pystac.Item] = []
    if item_files and (ids or ids_file):
        raise InvalidRequestError(
            "--item was given with --ids/--ids-file; expected either --item files or ids."
        )
    if item_files:
        if searching:
            raise InvalidRequestError(
                "--item was given with search options; expected either --item files or a search "
                "(--bbox/--aoi, --start, --end...)."
            )
        items = [_read_item(path) for path in item_files]
        query = None
    elif wanted and not searching:
        query = None
    else:
        query = _query(
            bbox, aoi, _required(start, "--start"), _required(end, "--end"), max_cloud, tiles
        )
    # The search's own modules load first, in this thread; the pixel stack then loads in the
    # background during the search instead of sharing the interpreter with them.
    importlib.import_module("scenestore.throttle")
    importlib.import_module("pystac_client")
    warming = import_in_background("scenestore.stac", "scenestore.ingest")
    started = time.perf_counter()
    if query is not None:
        items = _search_with_retries(query, stac_url=source_url, profile=chosen, retries=retries)
    not_found: list[str] = []
    if wanted:
        fetched = _fetch_with_retries(
            list(wanted), stac_url=source_url, profile=chosen, retries=retries
        )
        searched = {item.id for item in items}
        items += [item for item in fetched.items if item.id not in searched]
        not_found = fetched.missing
    warming.join()
    from scenestore.ingest import ingest_items
    from scenestore.stac import StacStoreManager

    manager = StacStoreManager(band_list, store, profile=chosen, stac_url=stac_url)
    if item_files:
        for item in items:  # every item must be storable before anything is downloaded
            manager.identifier(item)  # an unsafe id is a user mistake: exit 2 up front
            manager.check_item(item)
    manager.check_writable()  # still before any download; a search only reads
    with Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        # Redrawn as each scene finishes, not by a refresh thread: with no other thread
        # running, small scenes can be ingested in forked worker processes (procpool).
        auto_refresh=False,
    ) as progress:
        task = progress.add_task("", total=len(items))
        results = ingest_items(
            manager,
            items,
            max_workers=parallel,
            retries=retries,
            on_result=lambda r: progress.update(
                task, advance=1, description=r.identifier, refresh=True
            ),
        )
    elapsed = time.perf_counter() - started
    _print_summary(results, elapsed, searched=query is not None)
    for item_id in not_found:
        entry = wanted[item_id]
        err_console.print(
            f"[red]not found:[/] {entry.value} ({entry.source}): no item {item_id!r} in "
            f"collection {manager.profile.collection!r} at {redact(manager.stac_url)}",
            highlight=False,
            soft_wrap=True,
        )
    if any(r.error for r in results) or not_found:
        raise typer.Exit(EXIT_SCENE_FAILED)


def _id_entries(ids: list[str] | None, ids_files: list[Path] | None) -> list[IdEntry]:
    """The ids of --ids and --ids-file, in order, each once."""
    from scenestore.idlist import parse_id_values, read_id_file, unique

    entries = parse_id_values(ids or [])
    for path in ids_files or []:
        entries += read_id_file(path)
    return unique(entries)


def _fetch_with_retries(
    ids: list[str], *, retries: int = DEFAULT_RETRIES, **kwargs: Any
) -> FetchedItems:
    """Fetch items by id (100 per request), retried like the search."""
    from scenestore.network import transient_retrying
    from scenestore.search import fetch_items

    return transient_retrying(retries, what="the STAC fetch by ids")(fetch_items, ids, **kwargs)


def _search_with_retries(
    query: Any, *, retries: int = DEFAULT_RETRIES, **kwargs: Any
) -> list[pystac.Item]:
    """The search, retried like a scene: only transient failures (5xx, 429, reset, timeout)."""
    from scenestore.network import transient_retrying
    from scenestore.search import search_scenes

    return transient_retrying(retries, what="the STAC search")(search_scenes, query, **kwargs)


def _required(value: str | None, option: str) -> str:
    if value is None:
        raise InvalidRequestError(f"Missing {option}; expected a date YYYY-MM-DD.")
    return value


def _read_item(path: Path) -> pystac.Item:
    """Read a STAC item JSON file, with a one-line error for anything else."""
    import json

    import pystac

    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("type") != "Feature":
            raise ValueError("not a GeoJSON Feature")
        return pystac.Item.from_dict(doc)
    except OSError as err:
        raise InvalidRequestError(
            f"Cannot read item file {str(path)!r}: {err.strerror}; expected a STAC item JSON file."
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidRequestError(
            f"Item file {str(path)!r} is not a STAC item ({err}); expected a STAC item JSON file."
        ) from err


def _print_summary(results: list[IngestResult], elapsed: float, *, searched: bool = True) -> None:
    table = Table(title="ingest summary")
    table.add_column("scene", no_wrap=True)
    table.add_column("status")
    table.add_column("bands fetched")
    table.add_column("bytes", justify="right")
    table.add_column("seconds", justify="right")
    for r in results:
        status = "failed" if r.error else ("stored already" if r.skipped else "fetched")
        table.add_row(
            r.identifier,
            status,
            _bands(r.fetched),
            _size(r.bytes_written),
            f"{r.seconds:.2f}",
        )
    fetched = sum(len(r.fetched) for r in results)
    total_bytes = sum(r.bytes_written for r in results)
    table.add_section()
    table.add_row(
        f"{len(results)} scenes", "", f"{fetched} bands", _size(total_bytes), f"{elapsed:.2f}"
    )
    console.print(table)
    for r in results:
        if r.error:
            err_console.print(f"[red]failed:[/] {r.identifier}: {redact(r.error)}", highlight=False)
    if results and fetched == 0 and not any(r.error for r in results):
        console.print("Nothing to download: every band of every scene is already in the store.")
    elif not results:
        console.print("No scenes matched the search." if searched else "No scenes to ingest.")


@app.command("ls")
@user_errors
def ls_(
    store: StoreOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    scan: Annotated[
        bool,
        typer.Option(
            "--scan", help="Read every scene's commit records instead of the store index."
        ),
    ] = False,
) -> None:
    """List the scenes in a store: sensing date, tile, cloud cover, bands and size."""
    from scenestore.cli_index import print_found, read_index

    if scan:
        from scenestore.store import open_client, store_location
        from scenestore.store.inventory import list_scenes

        infos = list_scenes(open_client(store_location(store)), scan=True)
    else:
        infos = read_index(store).scenes()
    print_found(
        infos,
        f"scenes in {store}",
        size=_size,
        bands_text=_bands,
        table=_plain_table,
        as_json=as_json,
    )
    damaged = [i.identifier for i in infos if i.damaged]
    if damaged:
        err_console.print(
            f"[red]damaged:[/] {len(damaged)} scenes ({', '.join(damaged)}); run `scenestore "
            "verify` to see each problem, `--repair` to fix them.",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
@user_errors
def info(
    store: StoreOpt, identifier: Annotated[str, typer.Argument(help="Scene identifier.")]
) -> None:
    """Show one scene's grid, bands and attributes."""
    from scenestore.store import open_store
    from scenestore.store.arrays import array_values, crs_text
    from scenestore.store.inventory import band_details, scene_info

    scenes = open_store(store)
    meta = scene_info(scenes, identifier)
    console.print(f"[bold]{meta.identifier}[/]  ({_size(meta.size_bytes)})")
    try:
        group = scenes.group(identifier)
        x, y = array_values(group, "x"), array_values(group, "y")
        crs = crs_text(dict(group["spatial_ref"].attrs)) if "spatial_ref" in group else None
    except (OSError, ValueError, KeyError, TypeError) as err:  # zarr.json deleted or garbage
        console.print(f"grid: unreadable ({type(err).__name__}): the scene group is damaged")
        res = float("nan")
    else:
        res = float(x[1] - x[0]) if len(x) > 1 else float("nan")
        console.print(
            f"grid: {len(y)} x {len(x)} px at {res:g} m, x {x[0]:.1f}..{x[-1]:.1f}, "
            f"y {y[0]:.1f}..{y[-1]:.1f} (pixel centres), CRS {_crs_name(crs)}"
        )
    table = Table(title="bands")
    for col in ("band", "grid", "dtype", "shape", "chunks", "codecs", "committed"):
        table.add_column(col)
    details = band_details(scenes, identifier)
    for band, d in details.items():
        # a band on a native grid records it (layout 2); the others lie on the scene grid
        native = (d.get("attributes") or {}).get("scenestore_grid")
        grid_res = native.get("resolution") if isinstance(native, dict) else res
        table.add_row(
            band,
            f"{grid_res:g} m" if isinstance(grid_res, int | float) else "?",
            str(d["dtype"] or "?"),
            "x".join(map(str, d["shape"])),
            "x".join(map(str, d["chunks"])),
            ",".join(d["codecs"]),
            f"DAMAGED: {d['problem']}" if d.get("problem") else str(d["written_at"]),
        )
    console.print(table)
    damage = list(meta.damaged) + [
        f"{band}: {d['problem']}"
        for band, d in details.items()
        if d.get("problem") and f"{band}: {d['problem']}" not in meta.damaged
    ]
    attrs = Table(title="attributes")
    attrs.add_column("name")
    attrs.add_column("value")
    for k, v in sorted(meta.attrs.items()):
        attrs.add_row(k, redact(str(v))[:100])
    console.print(attrs)
    if damage:
        err_console.print(
            f"[red]damaged:[/] {identifier}: {'; '.join(damage)}; run `scenestore verify "
            "--repair`, then ingest again.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_SCENE_FAILED)


@app.command("open")
@user_errors
def open_(
    store: StoreOpt,
    identifier: Annotated[str, typer.Argument(help="Scene identifier.")],
    bands: Annotated[str, typer.Option("--bands", help="Bands that must be stored.")] = ",".join(
        ALL_BANDS
    ),
    profile: ProfileOpt = "earth-search",
    verify_: Annotated[
        bool,
        typer.Option(
            "--verify", help="First check chunk files against the commit records (no reads)."
        ),
    ] = False,
) -> None:
    """Open a stored scene offline (never the network) and print what it holds."""
    from scenestore.stac import StacStoreManager
    from scenestore.store import open_store
    from scenestore.store.inventory import check_store

    check_store(open_store(store))
    manager = StacStoreManager(normalize_bands(bands), store, profile=profile)
    ds = manager.open(identifier, verify=verify_)  # damage: one line, exit 1 (user_errors)
    console.print(ds)


@app.command()
@user_errors
def verify(
    store: StoreOpt,
    identifiers: Annotated[
        list[str] | None, typer.Argument(help="Scenes to check (default: all).")
    ] = None,
    repair_: Annotated[
        bool, typer.Option("--repair", help="Drop damaged bands so the next ingest re-fetches.")
    ] = False,
) -> None:
    """Check scene groups, commit records and committed bands (metadata, chunks, checksum)."""
    from scenestore.store import open_store
    from scenestore.store.verify import repair, verify_store

    scenes = open_store(store)
    checked, damage = verify_store(scenes, identifiers or None)
    if not damage:
        console.print(f"{checked} committed bands checked: all match their commit records.")
        return
    table = Table(title=f"{len(damage)} problems in {checked} committed bands and their scenes")
    for col in ("scene", "band", "problem"):
        table.add_column(col)
    for d in damage:
        table.add_row(d.identifier, d.band, d.problem)
    console.print(table)
    if repair_:
        repair(scenes, damage)
        console.print(
            f"Repaired {len(damage)} problems (damaged bands dropped, leftovers removed); the "
            "next ingest fetches the dropped bands again."
        )
        return
    console.print("Run again with --repair to drop them so the next ingest re-fetches them.")
    raise typer.Exit(EXIT_SCENE_FAILED)


@app.command()
@user_errors
def world(
    directory: Annotated[Path, typer.Option("--dir", help="Where the world's files live.")] = Path(
        ".world"
    ),
    scenes: Annotated[int, typer.Option("--scenes", help="Number of scenes.")] = 6,
    size: Annotated[str, typer.Option("--size", help="tiny, small or full.")] = "tiny",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    stac_port: Annotated[
        int, typer.Option("--stac-port", help="STAC API port on 127.0.0.1 (0: any free port).")
    ] = 0,
    data_port: Annotated[
        int, typer.Option("--data-port", help="COG server port on 127.0.0.1 (0: any free port).")
    ] = 0,
) -> None:
    """Generate (if needed) and serve the offline Sentinel-2 world until interrupted."""
    # The world is its own distribution (servers, rustac), not part of the library's wheel.
    try:
        from scenestore_world import serve_forever
    except ModuleNotFoundError as err:
        if err.name != "scenestore_world":
            raise  # the world is installed but broken: that traceback is the useful one
        err_console.print(
            f"[bold red]error:[/] {WORLD_NOT_INSTALLED}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_USER_ERROR) from None

    if size not in ("tiny", "small", "full"):
        raise InvalidRequestError(f"Unknown world size {size!r}; expected tiny, small or full.")
    if scenes < 1:
        raise InvalidRequestError(f"Number of scenes {scenes} is below 1; expected at least 1.")

    def ready(w: Any) -> None:
        console.print(f"STAC API: {w.stac_url}")
        console.print(f"COGs:     {w.data_url}")
        console.print("Covers (tile, sensing days, scenes, bbox):", highlight=False)
        for line in w.coverage():
            console.print(f"  {line}", highlight=False)
        console.print("Serving until interrupted (Ctrl-C).")
        sys.stdout.flush()

    serve_forever(
        directory,
        scenes=scenes,
        size=size,
        seed=seed,
        on_ready=ready,
        stac_port=stac_port,
        data_port=data_port,
    )


def _plain_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned plain-text columns, the last one right-aligned (sizes).

    ``ls`` prints one row per scene: rich's table lays out about 500 rows a second, a wait
    of its own on a store of thousands (issue #16: ``ls`` of 500 scenes under 1 s).
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: tuple[str, ...]) -> str:
        left = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False))
        return f"{left}  {cells[-1].rjust(widths[-1])}"

    rule = tuple("-" * w for w in widths)
    return "\n".join([line(header), line(rule), *(line(r) for r in rows)])


def _bands(bands: tuple[str, ...] | list[str]) -> str:
    """All 13 bands as 'all 13 bands', otherwise the list."""
    if set(bands) == set(ALL_BANDS):
        return f"all {len(ALL_BANDS)}"
    return ",".join(bands) or "-"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _crs_name(text: Any) -> str:
    """The CRS (in any form pyproj accepts) as ``EPSG:32633 (WGS 84 / UTM zone 33N)``."""
    if not text:
        return "unknown"
    from scenestore.store.arrays import parse_crs

    try:
        crs = parse_crs(text, what="spatial_ref")
    except InvalidRequestError:
        return f"{str(text)[:60]!r} (not a CRS pyproj understands)"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg} ({crs.name})" if epsg else crs.name


def _register_store_commands() -> None:
    from scenestore.cli_index import register as register_index
    from scenestore.cli_serve import register as register_serve
    from scenestore.cli_store import register

    for add in (register, register_index):
        add(app, user_errors=user_errors, console=console, err_console=err_console, size=_size)
    register_serve(app, user_errors=user_errors)


_register_store_commands()

if __name__ == "__main__":  # pragma: no cover
    app()
