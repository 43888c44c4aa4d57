"""Typed flow parameters: what the Prefect UI renders as forms, validated with the library.

Field types and ranges (band multi-select, cloud cover 0-100, bbox degrees, dates) are checked
by Prefect when a run is created. What needs several fields at once (exactly one AOI, start on
or before end, the look-back) is checked when the flow starts, by :class:`IngestRequest`, which
hands the loose input to the library's own validators (:func:`scenestore.search.build_query`,
:func:`scenestore.bands.normalize_bands`) so the messages are the library's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from flows.windows import MAX_LOOKBACK_DAYS, DateWindow, resolve_dates
from scenestore.aoi import parse_bbox
from scenestore.bands import normalize_bands
from scenestore.errors import InvalidRequestError
from scenestore.ids import validate_identifier
from scenestore.network import DEFAULT_BACKOFF_S, DEFAULT_JITTER, DEFAULT_RETRIES
from scenestore.profiles import PROFILES, get_profile
from scenestore.search import SceneQuery, build_query

if TYPE_CHECKING:
    from scenestore.stac import StacStoreManager

#: A canonical Sentinel-2 L2A band; a list of these renders as a multi-select.
BandName = Literal[
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL"
]

#: Names of the provider profiles, a choice in the UI. Built from the library's registry
#: (:data:`scenestore.profiles.PROFILES`) so a new profile appears without an edit here.
ProfileName = Literal[tuple(PROFILES)]  # type: ignore[valid-type]

#: Maximum cloud cover in percent.
CloudCover = Annotated[
    float, Field(ge=0, le=100, description="Highest eo:cloud_cover accepted, in percent.")
]

#: An MGRS 100 km tile id such as 33UUP (validated by the library when the flow starts).
MgrsTile = Annotated[str, Field(min_length=5, max_length=6, examples=["33UUP"])]

#: Days before the end day that a rolling (scheduled) run starts.
LookbackDays = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_LOOKBACK_DAYS,
        description="When no start date is given: start this many days before the end day.",
    ),
]

#: Scenes processed at once by one ingest run.
InFlight = Annotated[int, Field(ge=1, le=64, description="Scenes downloaded at once.")]


def parameter_error(message: str) -> PydanticCustomError:
    """A validation error whose message is ``message`` as is (no "Value error, " prefix).

    Raised from a parameter type's validator, it makes Prefect fail the run before the flow
    body starts, with ``<parameter>: <message>`` as the state message and no traceback.
    """
    # The message goes in as context: a template would read braces in it as placeholders.
    return PydanticCustomError("invalid_parameter", "{detail}", {"detail": message})


def _end_not_before_start(end: date | None, info: ValidationInfo) -> date | None:
    start = info.data.get("start")
    if end is not None and isinstance(start, date) and end < start:
        raise parameter_error(
            f"end {end.isoformat()} is before start {start.isoformat()}; expected an end on or "
            "after the start (both days are included)."
        )
    return end


def _aoi_without_bbox(aoi: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
    if aoi is not None and info.data.get("bbox") is not None:
        raise parameter_error(
            "both bbox and aoi are set; expected one area of interest: clear aoi to use the "
            "box, or clear bbox to use the GeoJSON."
        )
    return aoi


#: The last sensing day of a flow, checked against the ``start`` parameter declared before it
#: (so a run whose end is before its start fails before the flow body, naming ``end``).
EndDate = Annotated[date | None, AfterValidator(_end_not_before_start)]
#: The same for a required end (a plain date in the schema: the UI shows its date picker).
RequiredEndDate = Annotated[date, AfterValidator(_end_not_before_start)]

#: A GeoJSON area of interest, checked against the ``bbox`` parameter declared before it (both
#: set fails before the flow body, naming ``aoi``).
AoiParam = Annotated[dict[str, Any] | None, AfterValidator(_aoi_without_bbox)]


class BBox(BaseModel):
    """An area of interest as a lon/lat bounding box in degrees."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    west: Annotated[float, Field(ge=-180, le=180, description="Western longitude")]
    south: Annotated[float, Field(ge=-90, le=90, description="Southern latitude")]
    east: Annotated[float, Field(ge=-180, le=180, description="Eastern longitude")]
    north: Annotated[float, Field(ge=-90, le=90, description="Northern latitude")]

    def as_tuple(self) -> tuple[float, float, float, float]:
        """``(W, S, E, N)`` as the library takes it."""
        return (self.west, self.south, self.east, self.north)

    @model_validator(mode="after")
    def _check_box(self) -> BBox:
        # Checked here, as a parameter type, so a run created from the UI or the API with a bad
        # box fails before the flow body starts, naming the parameter.
        try:
            parse_bbox(self.as_tuple())
        except InvalidRequestError as err:
            raise parameter_error(str(err)) from None
        width = (self.east - self.west) % 360
        if self.west > self.east and width > 180:
            # W > E is legal (a box across the antimeridian), but one wider than half the
            # globe is almost always west and east swapped.
            raise parameter_error(
                f"bbox west {self.west} is east of east {self.east}: read as a box across the "
                f"antimeridian that is {width:g} degrees wide; expected west < east (swap "
                "them), or for a box across the antimeridian, e.g. west 179, east -179."
            )
        return self


class RunOptions(BaseModel):
    """How an ingest run executes: parallelism, retries, Dask, search caching."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_in_flight: InFlight = 4
    # The same defaults as the library's and the CLI's (scenestore.network).
    retries: Annotated[
        int, Field(ge=0, le=10, description="Retries of a transient failure.")
    ] = DEFAULT_RETRIES
    retry_backoff_seconds: Annotated[
        float, Field(ge=0, le=600, description="First retry delay; doubles on each retry.")
    ] = DEFAULT_BACKOFF_S
    retry_jitter_factor: Annotated[
        float, Field(ge=0, le=1, description="Random extra delay, as a fraction of the delay.")
    ] = DEFAULT_JITTER
    search_cache_seconds: Annotated[
        int, Field(ge=0, le=7 * 86400, description="How long a STAC search result is reused.")
    ] = 3600
    use_dask: Annotated[
        bool, Field(description="Run scenes on Dask (a local cluster unless an address is given).")
    ] = False
    dask_address: Annotated[
        str | None,
        Field(description="Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786."),
    ] = None
    dask_workers: Annotated[
        int, Field(ge=1, le=64, description="Worker processes of the local Dask cluster.")
    ] = 2
    quicklooks: Annotated[
        bool, Field(description="Render a quicklook of each stored scene into the run's artifact.")
    ] = True


def _check_item_id(value: str) -> str:
    try:
        return validate_identifier(value.strip())
    except InvalidRequestError as err:
        raise parameter_error(str(err)) from None


#: A STAC item id (``S2B_33UUP_20240601_0_L2A``) or a store identifier (``es-l2a_S2B_...``).
ItemId = Annotated[
    str, AfterValidator(_check_item_id), Field(examples=["S2B_33UUP_20240601_0_L2A"])
]


class Area(BaseModel):
    """One query of a run over many areas: a box or GeoJSON, its own tiles and dates if given.

    Dates and tiles left out are the run's (``start``/``end``/``lookback_days``, ``tiles``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[
        str | None, Field(description="Label of the query in the report (default area-N).")
    ] = None
    bbox: BBox | None = None
    aoi: Annotated[
        dict[str, Any] | None, Field(description="GeoJSON geometry, Feature or FeatureCollection.")
    ] = None
    tiles: list[MgrsTile] = Field(default_factory=list)
    start: date | None = None
    end: date | None = None

    @model_validator(mode="after")
    def _check_area(self) -> Area:
        if (self.bbox is None) == (self.aoi is None):
            raise parameter_error(
                f"area {self.name or '(unnamed)'} has "
                f"{'both bbox and aoi' if self.bbox else 'neither bbox nor aoi'}; expected "
                "exactly one of them per area."
            )
        if self.start is not None and self.end is not None and self.end < self.start:
            raise parameter_error(
                f"area {self.name or '(unnamed)'}: end {self.end.isoformat()} is before start "
                f"{self.start.isoformat()}; expected an end on or after the start."
            )
        return self


def areas_from_geojson(value: Any) -> Any:
    """A FeatureCollection of sites as a list of areas; anything else as it is.

    Each feature is one area: its geometry, and from its properties ``name`` (else ``id``, else
    the feature's ``id``), ``start``, ``end`` and ``tiles`` when present.

    Raises:
        PydanticCustomError: If a feature has no geometry (names the feature's position).
    """
    if not (isinstance(value, dict) and value.get("type") == "FeatureCollection"):
        return value
    areas = []
    for number, feature in enumerate(value.get("features") or [], start=1):
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise parameter_error(
                f"areas feature {number} has no geometry; expected a GeoJSON Feature with a "
                "geometry per site."
            )
        props = feature.get("properties") or {}
        name = props.get("name") or props.get("id") or feature.get("id")
        area: dict[str, Any] = {"name": str(name) if name is not None else None}
        area["aoi"] = feature["geometry"]
        area.update({k: props[k] for k in ("start", "end", "tiles") if props.get(k) is not None})
        areas.append(area)
    return areas


#: The ``areas`` flow parameter: areas, or a FeatureCollection of sites (one area each).
AreasParam = Annotated[list[Area] | dict[str, Any] | None, Field(examples=[[]])]


@dataclass(frozen=True)
class StoreSpec:
    """Everything a task needs to build the library's store manager (small and picklable).

    Attributes:
        store: Store directory or object-store URL (``s3://bucket/prefix``).
        bands: Canonical bands, in Sentinel-2 order.
        profile: Provider profile name.
        stac_url: STAC API root URL (the profile's default resolved, never None).
    """

    store: str
    bands: tuple[str, ...]
    profile: str
    stac_url: str

    def manager(self) -> StacStoreManager:
        """Return the library's manager for this store (cheap: no I/O)."""
        from scenestore.stac import StacStoreManager

        # A str stays an object-store URL (s3://...) or becomes a Path in the library.
        return StacStoreManager(
            list(self.bands), self.store, profile=self.profile, stac_url=self.stac_url
        )


class IngestRequest(BaseModel):
    """What to ingest: area, dates, filters, bands and the store; validated as a whole.

    Raises:
        InvalidRequestError: From :meth:`parse` when any value or combination is wrong.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    store: str
    bbox: BBox | None = None
    aoi: dict[str, Any] | None = None
    start: date | None = None
    end: date | None = None
    lookback_days: LookbackDays | None = None
    bands: list[BandName]
    max_cloud: CloudCover | None = None
    tiles: list[MgrsTile] = Field(default_factory=list)
    profile: ProfileName = "earth-search"
    stac_url: str | None = None
    item_ids: list[ItemId] = Field(default_factory=list)
    areas: Annotated[list[Area], BeforeValidator(areas_from_geojson)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_with_library(self) -> IngestRequest:
        if not str(self.store).strip():
            raise InvalidRequestError(
                f"Empty store location {self.store!r}; expected a directory path or an "
                "object-store URL (s3://bucket/prefix)."
            )
        normalize_bands(self.bands)
        get_profile(self.profile)
        if self.areas or (self.item_ids and self.bbox is None and self.aoi is None):
            return self._check_areas()
        if (self.bbox is None) == (self.aoi is None):
            raise InvalidRequestError(
                "Give exactly one area of interest; expected either bbox (west, south, east, "
                "north) or aoi (a GeoJSON geometry, Feature or FeatureCollection)."
            )
        if self.start is None and self.lookback_days is None:
            raise InvalidRequestError(
                "No start date and no lookback_days; expected a start date (and optionally an "
                "end date) or lookback_days for a rolling range ending today."
            )
        # The library checks the AOI, tiles and cloud cover; the date range is checked in
        # scene_query, where the reference day for a look-back is known.
        build_query(
            start=self.start or date(2000, 1, 1),
            end=self.start or date(2000, 1, 1),
            bbox=self.bbox.as_tuple() if self.bbox else None,
            aoi=self.aoi,
            max_cloud=self.max_cloud,
            tiles=self.tiles,
        )
        return self

    @classmethod
    def parse(cls, **values: Any) -> IngestRequest:
        """Validate flow parameters into a request.

        Raises:
            InvalidRequestError: With the library's message, or pydantic's for a bad field.
        """
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            cause = _library_error(err)
            if cause is not None:
                raise InvalidRequestError(flags_to_parameters(str(cause))) from None
            raise InvalidRequestError(_pydantic_message(err)) from None

    def window(self, today: date) -> DateWindow:
        """The sensing days this request covers, a look-back ending on ``today`` if no dates.

        Raises:
            InvalidRequestError: If the end is before the start.
        """
        return resolve_dates(self.start, self.end, lookback_days=self.lookback_days, today=today)

    def scene_query(self, window: DateWindow) -> SceneQuery:
        """The library's validated query for ``window``."""
        return build_query(
            start=window.start,
            end=window.end,
            bbox=self.bbox.as_tuple() if self.bbox else None,
            aoi=self.aoi,
            max_cloud=self.max_cloud,
            tiles=self.tiles,
        )

    def _check_areas(self) -> IngestRequest:
        """The checks of a run over ``areas`` (or of ids alone): each area a valid query."""
        if self.bbox is not None or self.aoi is not None:
            raise InvalidRequestError(
                "Both areas and bbox/aoi are set; expected either areas (one query each) or "
                "one bbox or aoi."
            )
        labels = self.area_labels()
        if len(set(labels)) < len(labels):
            raise InvalidRequestError(
                f"Area names {labels!r} repeat; expected a distinct name per area (they label "
                "the queries in the report)."
            )
        for label, area in zip(labels, self.areas, strict=True):
            if area.start is None and self.start is None and self.lookback_days is None:
                raise InvalidRequestError(
                    f"Area {label!r} has no start date, and neither has the run; expected a "
                    "start per area, or the run's start or lookback_days."
                )
            try:
                build_query(
                    start=area.start or self.start or date(2000, 1, 1),
                    end=area.start or self.start or date(2000, 1, 1),
                    bbox=area.bbox.as_tuple() if area.bbox else None,
                    aoi=area.aoi,
                    max_cloud=self.max_cloud,
                    tiles=area.tiles or self.tiles,
                )
            except InvalidRequestError as err:
                raise InvalidRequestError(f"Area {label!r}: {err}") from None
        return self

    def area_labels(self) -> list[str]:
        """The report label of each area: its name, else ``area-N`` (1-based)."""
        return [a.name or f"area-{n}" for n, a in enumerate(self.areas, start=1)]

    def queries(self, today: date) -> list[tuple[str, SceneQuery]]:
        """Every search of the run with its label: one per area, or ``search`` for bbox/aoi.

        An area without dates takes the run's (a look-back ending on ``today`` if the run has
        no start); without tiles, the run's tiles. A run of ids alone has no search.

        Raises:
            InvalidRequestError: If an area's end is before its start.
        """
        if self.bbox is not None or self.aoi is not None:
            return [("search", self.scene_query(self.window(today)))]
        queries = []
        for label, area in zip(self.area_labels(), self.areas, strict=True):
            start = area.start or self.start
            window = resolve_dates(
                start,
                area.end or self.end,
                lookback_days=self.lookback_days if start is None else None,
                today=today,
            )
            query = build_query(
                start=window.start,
                end=window.end,
                bbox=area.bbox.as_tuple() if area.bbox else None,
                aoi=area.aoi,
                max_cloud=self.max_cloud,
                tiles=area.tiles or self.tiles,
            )
            queries.append((label, query))
        return queries

    def label(self, today: date) -> str:
        """What the run covers, for logs and the report: a date range, areas and/or ids."""
        parts = []
        if self.bbox is not None or self.aoi is not None:
            parts.append(self.window(today).label)
        elif self.areas:
            windows = {
                f"{q.start.isoformat()}..{q.end.isoformat()}" for _, q in self.queries(today)
            }
            span = f" {windows.pop()}" if len(windows) == 1 else ""
            parts.append(f"{len(self.areas)} areas{span}")
        if self.item_ids:
            count = len(self.item_ids)
            parts.append(f"{count} item id{'' if count == 1 else 's'}")
        return " + ".join(parts)

    def store_spec(self) -> StoreSpec:
        """The store, bands and source as tasks take them."""
        return make_store_spec(self.store, self.bands, profile=self.profile, stac_url=self.stac_url)


def make_store_spec(
    store: str, bands: list[str], *, profile: str = "earth-search", stac_url: str | None = None
) -> StoreSpec:
    """Validate and normalise a store, bands and source (the profile's URL when none given).

    Raises:
        InvalidRequestError: If a band or the profile is unknown.
    """
    prof = get_profile(profile)
    return StoreSpec(
        store=str(store),
        bands=tuple(normalize_bands(bands)),
        profile=prof.name,
        stac_url=stac_url or prof.stac_url,
    )


def flags_to_parameters(message: str) -> str:
    """Name flow parameters where the library's message names CLI flags.

    The library's messages are written for the CLI (``check --stac-url``); a flow's user set
    the parameter ``stac_url``. A flag without a parameter of the same name stays as it is.
    """
    fields = IngestRequest.model_fields

    def replace(match: re.Match[str]) -> str:
        name = match.group(1).replace("-", "_")
        return name if name in fields else match.group(0)

    return _FLAG.sub(replace, message)


#: A CLI flag in a message: ``--stac-url``, ``--max-cloud``.
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


def _library_error(err: ValidationError) -> InvalidRequestError | None:
    for detail in err.errors():
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidRequestError):
            return cause
    return None


def _pydantic_message(err: ValidationError) -> str:
    parts = []
    for detail in err.errors():
        where = ".".join(str(p) for p in detail["loc"]) or "request"
        got = "" if detail["type"] == "invalid_parameter" else f" (got {detail.get('input')!r})"
        parts.append(f"{where}: {detail['msg']}{got}")
    return "Invalid ingest parameters: " + "; ".join(parts)


__all__ = [
    "AoiParam",
    "Area",
    "AreasParam",
    "BBox",
    "BandName",
    "CloudCover",
    "EndDate",
    "RequiredEndDate",
    "IngestRequest",
    "ItemId",
    "LookbackDays",
    "MgrsTile",
    "ProfileName",
    "RunOptions",
    "StoreSpec",
    "flags_to_parameters",
    "make_store_spec",
    "parameter_error",
]
