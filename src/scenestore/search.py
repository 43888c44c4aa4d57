"""Scene queries: search a STAC API for Sentinel-2 L2A scenes with pystac-client.

A :class:`SceneQuery` is the validated, normalised form of what a user asks for. Searching
sends what the API supports and filters the rest on the client, because servers differ
(rustac's memory backend ignores CQL2 filters; some services lack the query extension).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pystac
from shapely.geometry import mapping, shape

from scenestore.aoi import (
    BBox,
    BBoxLike,
    bbox_geometry,
    check_date_range,
    parse_bbox,
    parse_date,
    parse_geojson,
)
from scenestore.errors import InvalidRequestError, SourceError, TransientSourceError
from scenestore.network import READ_TIMEOUT_ENV, timeouts
from scenestore.profiles import (
    Profile,
    generation_time,
    get_profile,
    normalize_tile,
    parse_time,
    processing_baseline,
    tile_of,
)
from scenestore.redact import redact

logger = logging.getLogger(__name__)

#: Items per page asked of the STAC API.
PAGE_SIZE = 100
#: The keys of :meth:`SceneQuery.to_json`.
_QUERY_FIELDS = ("geometry", "start", "end", "max_cloud", "tiles")


@dataclass(frozen=True)
class SceneQuery:
    """A validated scene search.

    Attributes:
        geometry: The AOI as a GeoJSON geometry dict in lon/lat.
        start: First sensing day (inclusive).
        end: Last sensing day (inclusive).
        max_cloud: Highest ``eo:cloud_cover`` accepted, in percent, or None for any.
        tiles: MGRS tiles to keep (e.g. ``("33UUP",)``), empty for all.
    """

    geometry: dict[str, Any]
    start: date
    end: date
    max_cloud: float | None = None
    tiles: tuple[str, ...] = field(default=())

    @property
    def bbox(self) -> BBox:
        """The AOI's bounding box (W, S, E, N)."""
        west, south, east, north = shape(self.geometry).bounds
        return (west, south, east, north)

    @property
    def datetime_range(self) -> str:
        """The date range as a STAC ``datetime`` interval covering both days whole."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59.999Z"

    def to_json(self) -> str:
        """Canonical JSON of the query: equal queries give equal text in any process.

        This text, not the Python object, is what a search cache hashes (the Prefect flows'
        ``search-scenes`` task is cached by it): sorted keys, no whitespace, tiles as a sorted
        list (never a set, whose order varies between processes), no NaN.
        """
        return json.dumps(
            {
                "geometry": self.geometry,
                "start": self.start.isoformat(),
                "end": self.end.isoformat(),
                "max_cloud": self.max_cloud,
                "tiles": sorted(self.tiles),
            },
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> SceneQuery:
        """Rebuild the query :meth:`to_json` rendered, validated again by :func:`build_query`.

        ``SceneQuery.from_json(q.to_json()) == q`` for every query ``q``.

        Args:
            text: JSON with ``geometry``, ``start``, ``end``, ``max_cloud`` and ``tiles``.

        Raises:
            InvalidRequestError: If ``text`` is not such JSON, or a value in it is invalid.
        """
        try:
            data = json.loads(text)
            fields = {name: data[name] for name in _QUERY_FIELDS}
        except (TypeError, ValueError, KeyError) as err:
            raise InvalidRequestError(
                f"Invalid scene query JSON {str(text)[:80]!r} ({err}); expected the text "
                "SceneQuery.to_json() renders, with geometry, start, end, max_cloud and tiles."
            ) from err
        query = build_query(
            start=fields["start"],
            end=fields["end"],
            aoi=fields["geometry"],
            max_cloud=fields["max_cloud"],
            tiles=fields["tiles"],
        )
        # Normalising a geometry twice can reorder its parts (the union of an antimeridian
        # box's two halves), so the geometry as written is kept when it is the same shape.
        written = fields["geometry"]
        if isinstance(written, dict) and written.get("type") == query.geometry["type"]:
            as_written = mapping(shape(written))  # accepted by build_query: a valid geometry
            if as_written != query.geometry and shape(as_written).equals(shape(query.geometry)):
                return replace(query, geometry=as_written)
        return query


def build_query(
    *,
    start: str | date,
    end: str | date,
    bbox: BBoxLike | None = None,
    aoi: dict | str | Path | None = None,
    max_cloud: float | None = None,
    tiles: Iterable[str] | str | None = None,
) -> SceneQuery:
    """Validate loose user input into a :class:`SceneQuery`.

    Args:
        start: First day, ``YYYY-MM-DD`` or a date.
        end: Last day (inclusive).
        bbox: ``"W,S,E,N"`` or four numbers; exactly one of ``bbox`` and ``aoi``.
        aoi: GeoJSON geometry/Feature/FeatureCollection as dict or text, or a file path.
        max_cloud: Maximum cloud cover in percent (0-100).
        tiles: MGRS tiles, as a list or comma-separated text.

    Raises:
        InvalidRequestError: If any value is malformed; the message names it.
    """
    if (bbox is None) == (aoi is None):
        raise InvalidRequestError(
            "Give exactly one area of interest; expected either a bbox (W,S,E,N) or a GeoJSON AOI."
        )
    # A bbox crossing the antimeridian becomes two boxes: servers differ on W > E bboxes.
    geometry = bbox_geometry(parse_bbox(bbox)) if bbox is not None else parse_geojson(aoi)  # type: ignore[arg-type]
    start_d, end_d = parse_date(start, name="start date"), parse_date(end, name="end date")
    check_date_range(start_d, end_d)
    if max_cloud is not None:
        try:
            max_cloud = float(max_cloud)
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"Invalid maximum cloud cover {max_cloud!r}; expected a number from 0 to 100."
            ) from None
        if not 0 <= max_cloud <= 100:
            raise InvalidRequestError(
                f"Maximum cloud cover {max_cloud:g} is outside 0-100; expected a percentage."
            )
    if isinstance(tiles, str):
        tiles = [t for t in tiles.split(",") if t.strip()]
    norm_tiles = tuple(sorted({normalize_tile(t) for t in tiles or ()}))
    return SceneQuery(mapping(geometry), start_d, end_d, max_cloud, norm_tiles)


def search_scenes(
    query: SceneQuery,
    *,
    stac_url: str | None = None,
    profile: str | Profile = "earth-search",
    page_size: int = PAGE_SIZE,
) -> list[pystac.Item]:
    """Search a STAC API for the scenes matching ``query``.

    Every page is followed. Cloud cover and tiles are filtered on the client as well, so the
    result is right whatever the server supports. Results are sorted by sensing time and free
    of duplicates: one item per id, and one per (tile, sensing time), keeping the newest
    processing baseline and then the newest generation time.

    Args:
        query: The validated query.
        stac_url: STAC API root; defaults to the profile's.
        profile: Provider profile name or object.
        page_size: Items per page.

    Returns:
        The matching items.

    Raises:
        SourceError: If the API cannot be reached or answers with an error
            (:class:`TransientSourceError` for 5xx, 429 and connection failures).
    """
    from pystac_client.exceptions import APIError

    prof = get_profile(profile)
    url = stac_url or prof.stac_url
    try:
        client = open_client(url, prof)
        search = client.search(
            collections=[prof.collection],
            intersects=query.geometry,
            datetime=query.datetime_range,
            limit=page_size,
            **_server_filters(client, query),
        )
        items = list(search.items())
    except APIError as err:
        raise api_error(err, url, "a search result") from err
    except OSError as err:  # requests' ConnectionError and timeouts are OSErrors
        raise unreachable(err, url) from err
    except ValueError as err:  # JSONDecodeError: an HTML page, a proxy's error, garbage
        raise malformed(err, url, "a STAC search result (JSON)") from err
    return select_items(items, query)


#: Ids asked of the STAC API per search request when fetching items by id.
IDS_PER_REQUEST = 100


@dataclass(frozen=True)
class FetchedItems:
    """What a fetch by ids found.

    Attributes:
        items: The items found, in the order their ids were given.
        missing: The ids the API has no item for, in the order given.
    """

    items: list[pystac.Item]
    missing: list[str]


def fetch_items(
    item_ids: Sequence[str],
    *,
    stac_url: str | None = None,
    profile: str | Profile = "earth-search",
    chunk_size: int = IDS_PER_REQUEST,
) -> FetchedItems:
    """Fetch items by id from a STAC API, ``chunk_size`` ids per search request.

    One ``ids=`` search per chunk (with a page limit of the chunk's size, so a chunk is one
    page on any server that allows that limit), never one request per id. The ids are STAC
    item ids (map store identifiers first, :func:`scenestore.idlist.item_ids`); repeated ids
    are asked once.

    Args:
        item_ids: STAC item ids of the profile's collection.
        stac_url: STAC API root; defaults to the profile's.
        profile: Provider profile name or object.
        chunk_size: Ids per search request (1 or more).

    Returns:
        The items found and the ids not found.

    Raises:
        InvalidRequestError: If ``chunk_size`` is below 1.
        SourceError: If the API cannot be reached or answers with an error
            (:class:`TransientSourceError` for 5xx, 429 and connection failures).
    """
    from pystac_client.exceptions import APIError

    if chunk_size < 1:
        raise InvalidRequestError(f"Ids per request {chunk_size!r} is below 1; expected 1 or more.")
    wanted = list(dict.fromkeys(item_ids))
    prof = get_profile(profile)
    url = stac_url or prof.stac_url
    found: dict[str, pystac.Item] = {}
    if wanted:
        try:
            client = open_client(url, prof)
            for first in range(0, len(wanted), chunk_size):
                chunk = wanted[first : first + chunk_size]
                search = client.search(collections=[prof.collection], ids=chunk, limit=len(chunk))
                for item in search.items():
                    # A server that ignores `ids` would send the whole collection: keep only
                    # what was asked, so a missing id can never look found.
                    if item.id in chunk:
                        found.setdefault(item.id, item)
        except APIError as err:
            raise api_error(err, url, "the items of a search by ids") from err
        except OSError as err:
            raise unreachable(err, url) from err
        except ValueError as err:
            raise malformed(err, url, "a STAC search result (JSON)") from err
    return FetchedItems(
        items=[found[i] for i in wanted if i in found],
        missing=[i for i in wanted if i not in found],
    )


def merge_searches(
    results: Sequence[tuple[str, Sequence[dict[str, Any]]]],
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Merge the items of several labelled queries, one item per id (pure).

    Args:
        results: ``(query label, item documents)`` per query, e.g. one per area.

    Returns:
        The distinct items sorted by sensing time and id, and the labels of the queries that
        found each item id (in query order).
    """
    items: dict[str, dict[str, Any]] = {}
    found_by: dict[str, list[str]] = {}
    for label, docs in results:
        for doc in docs:
            items.setdefault(doc["id"], doc)
            labels = found_by.setdefault(doc["id"], [])
            if label not in labels:
                labels.append(label)
    ordered = sorted(
        items.values(), key=lambda d: (str(d.get("properties", {}).get("datetime")), d["id"])
    )
    return ordered, found_by


def open_client(url: str, profile: str | Profile = "earth-search") -> Any:
    """Open a pystac-client ``Client`` whose every request times out (:mod:`scenestore.network`).

    Every request goes through the profile's request budget (:mod:`scenestore.throttle`): a
    rate and concurrency shared by all threads, paused by any 429/503 ``Retry-After``.
    """
    from pystac_client import Client

    from scenestore.throttle import stac_io

    limits = timeouts().as_requests()
    return Client.open(url, timeout=limits, stac_io=stac_io(profile, limits))


def malformed(err: Exception, url: str, expected: str) -> TransientSourceError:
    """The error for a STAC API answer that is not the JSON expected (HTML, cut off, garbage).

    Transient: a proxy's error page or a cut-off body usually goes away on a retry.
    """
    return TransientSourceError(
        f"STAC API {redact(url)!r} sent a malformed answer ({type(err).__name__}: "
        f"{redact(str(err))[:120]}); expected {expected}."
    )


def api_error(err: Exception, url: str, expected: str) -> SourceError:
    """Turn a pystac-client APIError into a scenestore error that says what happened.

    pystac-client wraps connection failures in APIError without a status code; those mean the
    API could not be reached at all.
    """
    status = getattr(err, "status_code", None)
    if status is None:
        return unreachable(err, url)
    cls = TransientSourceError if status >= 500 or status == 429 else SourceError
    return cls(
        f"STAC API {redact(url)!r} answered HTTP {status}: {redact(str(err))[:200]}; expected "
        f"{expected}.",
        status=status,
    )


def unreachable(err: BaseException, url: str) -> TransientSourceError:
    """The error for a STAC API that could not be reached (refused, timed out, DNS...).

    pystac-client flattens requests' errors into text, so what happened is read from it.
    """
    text = str(err)
    if "timed out" in text.lower() or "timeout" in type(err).__name__.lower():
        limits = timeouts()
        return TransientSourceError(
            f"STAC API {redact(url)!r} did not answer within the timeout (connect "
            f"{limits.connect_s:g} s, read {limits.read_s:g} s); expected an answer (retry "
            f"later, or raise --timeout / {READ_TIMEOUT_ENV})."
        )
    if any(s in text for s in ("IncompleteRead", "Connection broken", "ChunkedEncoding")):
        return TransientSourceError(
            f"STAC API {redact(url)!r} cut its answer off (truncated: {redact(text)[:120]}); "
            "expected a whole JSON answer (retry later)."
        )
    return TransientSourceError(
        f"Cannot reach the STAC API at {redact(url)!r} ({type(err).__name__}); expected a "
        "reachable STAC API root URL (check --stac-url)."
    )


def select_items(items: Sequence[pystac.Item], query: SceneQuery) -> list[pystac.Item]:
    """Apply the client-side filters, drop duplicates and sort by sensing time (pure)."""
    kept: dict[tuple[str, str], pystac.Item] = {}
    seen_ids: set[str] = set()
    for item in items:
        if item.id in seen_ids:
            continue
        seen_ids.add(item.id)
        props = item.properties
        cloud = props.get("eo:cloud_cover")
        if query.max_cloud is not None and cloud is not None and cloud > query.max_cloud:
            continue
        tile = tile_of(item.to_dict(transform_hrefs=False)) or ""
        if query.tiles and tile not in query.tiles:
            continue
        sensed = parse_time(props.get("datetime"))
        key = (tile, sensed.isoformat() if sensed else str(props.get("datetime")))
        if key in kept:
            older, newer = sorted((kept[key], item), key=_recency)
            logger.info(
                "Dropped duplicate %s of %s (same tile and sensing time; kept %s)",
                older.id,
                newer.id,
                _describe_recency(newer),
            )
            kept[key] = newer
        else:
            kept[key] = item
    return sorted(kept.values(), key=lambda i: (str(i.properties.get("datetime")), i.id))


def _recency(item: pystac.Item) -> tuple[tuple[int, int], datetime, str]:
    """Newest baseline first, then newest generation, then the id (for a stable order).

    Baselines compare as numbers and times as times: ``"05.10"`` from ``processing:version``
    and ``N0510`` from an id are the same baseline; ``s2:generation_time`` and CDSE's
    ``processing:datetime`` are in different formats (see :func:`generation_time`).
    """
    item_dict = {"id": item.id, "properties": item.properties}
    baseline = processing_baseline(item_dict) or (-1, -1)
    generated = generation_time(item_dict) or datetime.min.replace(tzinfo=UTC)
    return (baseline, generated, item.id)


def _describe_recency(item: pystac.Item) -> str:
    (major, minor), generated, _ = _recency(item)
    baseline = f"baseline {major:02d}.{minor:02d}" if major >= 0 else "unknown baseline"
    when = generated.isoformat() if generated.year > 1 else "unknown"
    return f"{baseline}, generated {when}"


def _server_filters(client: Any, query: SceneQuery) -> dict[str, Any]:
    if query.max_cloud is None:
        return {}
    from pystac_client.conformance import ConformanceClasses

    if client.conforms_to(ConformanceClasses.FILTER):
        return {
            "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, query.max_cloud]},
            "filter_lang": "cql2-json",
        }
    if client.conforms_to(ConformanceClasses.QUERY):
        return {"query": {"eo:cloud_cover": {"lte": query.max_cloud}}}
    return {}


__all__ = [
    "IDS_PER_REQUEST",
    "FetchedItems",
    "SceneQuery",
    "build_query",
    "fetch_items",
    "merge_searches",
    "search_scenes",
    "select_items",
]
