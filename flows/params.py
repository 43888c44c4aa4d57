"""Typed flow parameters: what the Prefect UI renders as forms, validated with the library.

Field types and ranges (band multi-select, cloud cover 0-100, bbox degrees, dates) are checked
by Prefect when a run is created. What needs several fields at once (exactly one AOI, start on
or before end, the look-back) is checked when the flow starts, by :class:`IngestRequest`, which
hands the loose input to the library's own validators (:func:`scenestore.search.build_query`,
:func:`scenestore.bands.normalize_bands`) so the messages are the library's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flows.windows import MAX_LOOKBACK_DAYS, DateWindow, resolve_dates
from scenestore.bands import normalize_bands
from scenestore.errors import InvalidRequestError
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

    @model_validator(mode="after")
    def _check_with_library(self) -> IngestRequest:
        if not str(self.store).strip():
            raise InvalidRequestError(
                f"Empty store location {self.store!r}; expected a directory path or an "
                "object-store URL (s3://bucket/prefix)."
            )
        normalize_bands(self.bands)
        get_profile(self.profile)
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
                raise cause from None
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
        parts.append(f"{where}: {detail['msg']} (got {detail.get('input')!r})")
    return "Invalid ingest parameters: " + "; ".join(parts)


__all__ = [
    "BBox",
    "BandName",
    "CloudCover",
    "IngestRequest",
    "LookbackDays",
    "MgrsTile",
    "ProfileName",
    "RunOptions",
    "StoreSpec",
    "make_store_spec",
]
