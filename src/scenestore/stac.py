"""``StacStoreManager``: a :class:`~scenestore.manager.StoreManager` filled from a STAC API.

Bands are read with odc-stac lazily, in row strips of whole stored zarr chunks, so a scene
streams to disk strip by strip: 10 m bands onto the scene's 10 m UTM grid, 20 m and 60 m bands
whose grid nests in it at their native resolution (stored so: layout 2,
:mod:`scenestore.store.native`). Strips start and end on rows of COG tiles
(:func:`tile_aligned_chunk`), so each tile is fetched and decoded once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pystac
import shapely.geometry
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from scenestore.bands import BAND_SPECS, normalize_bands
from scenestore.errors import (
    InvalidRequestError,
    ItemError,
    SceneNotFoundError,
    SourceError,
    SourceMismatchError,
    TransientSourceError,
)
from scenestore.gdal import clear_http_cache, configure_gdal
from scenestore.grid import RESOLUTION, coarsen, plan_reads, scene_geobox
from scenestore.hrefs import S3Access, configure_s3, forget_s3_reads, s3_buckets, signed_href
from scenestore.ids import validate_identifier
from scenestore.manager import IngestResult, StoreManager
from scenestore.profiles import Profile, get_profile, require_utm
from scenestore.redact import install_log_redaction, redact, strip_query
from scenestore.reflectance import reflectance_of
from scenestore.search import api_error, malformed, open_client, unreachable
from scenestore.store.arrays import FOOTPRINT_COVERAGE, json_safe
from scenestore.store.codec import CLEVEL, band_codec
from scenestore.store.layout import choose_chunk
from scenestore.throttle import asset_read, reader_driver

if TYPE_CHECKING:
    from odc.geo.crs import CRS

logger = logging.getLogger(__name__)


class StacStoreManager(StoreManager[pystac.Item]):
    """Stores Sentinel-2 L2A scenes from a STAC API as zarr, one variable per canonical band.

    Args:
        bands: Canonical band names (``B01``..``B12``, ``B8A``, ``SCL``), case-insensitive.
        store: Store directory, or None to keep nothing.
        profile: Provider profile name or object (see :mod:`scenestore.profiles`).
        stac_url: STAC API root URL; defaults to the profile's.
        chunk_size: Stored chunk edge in pixels; by default one that divides the grid evenly
            near 1830 px (exactly 1830 px for a full tile).
        clevel: zstd compression level of the stored chunks (default
            :data:`scenestore.store.codec.CLEVEL`).

    Raises:
        InvalidRequestError: If a band or the profile is unknown.
    """

    def __init__(
        self,
        bands: list[str],
        store: str | Path | None = None,
        *,
        profile: str | Profile = "earth-search",
        stac_url: str | None = None,
        chunk_size: int | None = None,
        clevel: int = CLEVEL,
    ) -> None:
        super().__init__(normalize_bands(bands), store)
        self.profile = get_profile(profile)
        for band in self.bands:
            self.profile.asset_key(band)
        self.stac_url = stac_url or self.profile.stac_url
        self.chunk_size = chunk_size
        self.clevel = clevel
        # GDAL (through rasterio) logs the URLs it opens; signed ones carry tokens.
        install_log_redaction()

    # -- identifiers --------------------------------------------------------------------------

    def identifier(self, item: str | pystac.Item) -> str:
        """Return ``<profile id prefix>_<item id>``, e.g. ``es-l2a_S2A_39QTA_20230628_0_L2A``.

        A string is taken as an item id, or as an identifier when it already has the prefix.

        Raises:
            InvalidIdentifierError: If the result is not safe as a path name.
        """
        item_id = item.id if isinstance(item, pystac.Item) else item
        prefix = f"{self.profile.id_prefix}_"
        if isinstance(item_id, str) and item_id.startswith(prefix):
            return validate_identifier(item_id)
        validate_identifier(item_id)
        return validate_identifier(f"{prefix}{item_id}")

    def item_id(self, item: str | pystac.Item) -> str:
        """Return the STAC item id behind an item, item id or identifier."""
        if isinstance(item, pystac.Item):
            return item.id
        prefix = f"{self.profile.id_prefix}_"
        return item[len(prefix) :] if item.startswith(prefix) else item

    # -- encodings ----------------------------------------------------------------------------

    def encodings(self, bands: list[str]) -> dict[str, dict]:
        """Return uint16 (reflectance) / uint8 (SCL) zarr encodings, fill 0, Blosc zstd.

        The codec is :func:`scenestore.store.codec.band_codec` (zstd level ``clevel``).

        Chunks are left to the store (a divisor of the grid) unless ``chunk_size`` was given.
        """
        encodings = {}
        for band in bands:
            spec = BAND_SPECS.get(band)
            if spec is None:
                raise InvalidRequestError(
                    f"Unknown band {band!r}; expected one of {', '.join(BAND_SPECS)}."
                )
            encodings[band] = {
                "dtype": spec.dtype,
                "fill_value": spec.nodata,
                "compressors": [band_codec(spec.dtype, self.clevel)],
            }
            if self.chunk_size:
                encodings[band]["chunks"] = (self.chunk_size, self.chunk_size)
        return encodings

    def translate_error(self, err: Exception, identifier: str) -> Exception:
        """Map rasterio/GDAL read failures to source errors, transient unless clearly not.

        GDAL retries 429/503 itself; what reaches here after that (resets, truncated bodies,
        timeouts, 5xx) is worth retrying above it. A 404 or 403 is not.
        """
        from rasterio.errors import RasterioError

        if not isinstance(err, RasterioError | OSError):
            return err
        text = redact(str(err))
        status = _http_status(text)
        if status is None and _S3_DENIED.search(text):
            status = 403  # GDAL reports S3's error message, not its status
        cls = SourceError if status in (400, 401, 403, 404) else TransientSourceError
        if status == 403 and self.profile.signing is not None:
            # A signed href refused mid-read: its token expired or was revoked. Signing again
            # (the next attempt, see ingest) fixes that, so it is transient.
            return TransientSourceError(
                f"Reading scene {identifier!r} failed: the asset server refused a signed href "
                f"(HTTP 403): {text[:300]}; expected a valid token (hrefs are signed again on "
                "the next attempt).",
                status=status,
            )
        if cls is TransientSourceError:
            # GDAL caches the failed open; without this a retry fails without a request.
            clear_http_cache()
        return cls(
            f"Reading scene {identifier!r} failed: {text[:300]}; expected the asset server to "
            "answer with the COG bytes (retry later if the failure was transient).",
            status=status,
        )

    # -- download -----------------------------------------------------------------------------

    def get_item(self, item: str | pystac.Item) -> pystac.Item:
        """Return the STAC item, fetching it from the API when given an id or identifier.

        Raises:
            SceneNotFoundError: If the API has no such item.
            SourceError: If the API cannot be reached.
        """
        if isinstance(item, pystac.Item):
            return item
        from pystac_client.exceptions import APIError

        item_id = self.item_id(item)
        try:
            found = list(
                open_client(self.stac_url, self.profile)
                .search(collections=[self.profile.collection], ids=[item_id], max_items=1)
                .items()
            )
        except APIError as err:
            raise api_error(err, self.stac_url, f"the document of item {item_id!r}") from err
        except OSError as err:
            raise unreachable(err, self.stac_url) from err
        except ValueError as err:  # JSONDecodeError: HTML or garbage
            raise malformed(err, self.stac_url, f"the document of item {item_id!r}") from err
        if not found:
            raise SceneNotFoundError(
                f"Item {item_id!r} is not in collection {self.profile.collection!r} at "
                f"{redact(self.stac_url)!r}; expected an existing item id."
            )
        return found[0]

    def check_item(self, item: pystac.Item, bands: list[str] | None = None) -> GeoBox:
        """Check, without any I/O, that an item can be stored: assets, UTM CRS, grid fields.

        Args:
            item: The STAC item.
            bands: Bands to check (default: this manager's bands).

        Returns:
            The scene's 10 m grid.

        Raises:
            ItemError: If the item lacks an asset for a band, is not in a UTM CRS, or has no
                grid fields.
        """
        keys = {b: self.profile.asset_key(b) for b in normalize_bands(bands or self.bands)}
        for band, key in keys.items():
            if key not in item.assets:
                present = ", ".join(sorted(item.assets)[:8])
                raise ItemError(
                    f"Item {item.id!r} has no asset {key!r} for band {band}; expected the "
                    f"{self.profile.name!r} asset keys (it has {present}...)."
                )
        item_dict = item.to_dict(transform_hrefs=False)
        epsg = require_utm(item.id, self.profile.epsg(item_dict, list(keys.values())))
        return scene_geobox(item_dict, list(keys.values()), epsg)

    def download_scene_from_source(self, item: str | pystac.Item, bands: list[str]) -> xr.Dataset:
        """Load bands of one scene lazily with odc-stac onto its 10 m UTM grid.

        Bands whose native grid nests in the 10 m grid are read at native resolution and
        repeated block by block (:meth:`download_native`, then
        :func:`scenestore.store.native.to_scene_grid`): exactly nearest resampling.

        Returns:
            A dask-backed Dataset with one uint16/uint8 variable per canonical band on ``y``/``x``,
            a ``spatial_ref`` coordinate and the item properties as attributes.

        Raises:
            ItemError: If the item lacks an asset for a band or is not on a UTM grid.
        """
        from scenestore.store.native import to_scene_grid

        bands = normalize_bands(bands)
        return to_scene_grid(self.download_native(item, bands), bands)

    def download_for_store(self, item: str | pystac.Item, bands: list[str]) -> xr.Dataset:
        """What ingest stores: :meth:`download_native` (20 m and 60 m bands at native size)."""
        return self.download_native(item, bands)

    def download_native(self, item: str | pystac.Item, bands: list[str]) -> xr.Dataset:
        """Load bands of one scene lazily with odc-stac, each nested band on its native grid.

        20 m and 60 m bands whose grid nests in the scene's 10 m grid (same origin, exactly
        covering it) are read at native resolution onto ``y_20m``/``x_20m`` (``y_60m``...),
        and stored so (layout 2, :mod:`scenestore.store.native`); other bands are read onto
        the 10 m grid ``y``/``x``, warped by GDAL when their grid does not nest.

        Returns:
            A dask-backed Dataset with one uint16/uint8 variable per canonical band, the
            coordinates of the 10 m grid and of each native grid used, a ``spatial_ref``
            coordinate and the item properties as attributes.

        Raises:
            ItemError: If the item lacks an asset for a band or is not on a UTM grid.
        """
        from scenestore.store.native import grid_dims

        bands = normalize_bands(bands)
        stac_item = self.get_item(item)
        keys = {band: self.profile.asset_key(band) for band in bands}
        geobox = self.check_item(stac_item, bands)
        item_dict = stac_item.to_dict(transform_hrefs=False)
        configure_gdal()
        readable = self.readable_hrefs([stac_item.assets[key].href for key in keys.values()])
        # Asked to download means asked to read the source: not GDAL's in-process cache.
        clear_http_cache(list(readable.values()))
        forget_s3_reads(readable.values())
        # Before any pixel is read: odc-stac trusts the item's grid and would warp a COG of
        # another size or CRS onto it, committing nodata. The header read here is what
        # GDAL's /vsicurl/ cache then serves to odc-stac's own open of the same file.
        # scene_geobox always gives the grid a CRS; odc-geo types GeoBox.crs as optional.
        tiles = self.check_sources(stac_item, keys, readable, cast("CRS", geobox.crs).epsg)
        chunk = self.chunk_size or tile_aligned_chunk(max(geobox.shape), tiles)
        import odc.stac

        def load(group: dict[str, str], grid: GeoBox, edge: int) -> xr.Dataset:
            stac_cfg = {
                "*": {
                    "assets": {
                        key: {"data_type": BAND_SPECS[b].dtype, "nodata": BAND_SPECS[b].nodata}
                        for b, key in group.items()
                    }
                }
            }
            part = odc.stac.load(
                [stac_item],
                bands=list(group.values()),
                geobox=grid,
                resampling="nearest",
                # Row strips of whole stored chunks: a COG tile on the border of two chunks
                # is decoded once per strip rather than once per chunk it touches.
                chunks={"x": grid.shape[1], "y": edge},
                stac_cfg=stac_cfg,
                groupby="id",
                patch_url=lambda href: readable.get(href, href),
                # every chunk read takes a slot of the provider's request budget
                driver=reader_driver(self.profile, stac_cfg),
            )
            part = part.rename({key: b for b, key in group.items()})
            return part.isel(time=0, drop=True) if "time" in part.dims else part

        # Bands whose native grid nests in the 10 m grid are read and stored at native
        # resolution: no GDAL warp, and a quarter (20 m) or 1/36 (60 m) of the pixels to write.
        arrays = {}
        coords = dict(xr_coords(geobox, crs_coord_name="spatial_ref"))
        for factor, group in plan_reads(item_dict, keys, geobox, chunk).items():
            if factor == 1:
                part = load(group, geobox, chunk)
            else:
                grid = coarsen(geobox, factor)
                ydim, xdim = grid_dims(RESOLUTION * factor)
                # Native strips as tall as `factor` stored strips: a COG tile row is decoded
                # once per native strip, then cut (views) into blocks of whole stored chunks.
                part = load(group, grid, chunk).rename({"y": ydim, "x": xdim})
                part = part.chunk({ydim: chunk // factor})
                coords.update({ydim: part[ydim], xdim: part[xdim]})
            arrays.update({band: part[band] for band in group})
        coverage = footprint_coverage(stac_item, geobox)
        variables = {}
        for band, key in keys.items():
            asset = stac_item.assets[key]
            # raw DNs are stored; scale/offset record how they become reflectance
            to_reflectance = (
                reflectance_of(item_dict, item_dict["assets"][key]).attrs()
                if BAND_SPECS[band].is_reflectance
                else {}
            )
            attrs = {
                "source": strip_query(asset.href),
                "asset_key": key,
                "nodata": BAND_SPECS[band].nodata,
                "native_resolution": BAND_SPECS[band].resolution,
                **to_reflectance,
            }
            if coverage is not None:
                # storage refuses a band with no data where this says there is some
                attrs[FOOTPRINT_COVERAGE] = round(coverage, 4)
            # The chunks the read strips were cut for (fit_encodings keeps them): a chunk of
            # the 10 m grid is a whole number of COG tile rows, nested ones cover its ground.
            factor = geobox.shape[1] // int(arrays[band].shape[-1])
            edge = chunk // factor if chunk % factor == 0 else choose_chunk(arrays[band].shape[-1])
            variables[band] = (
                arrays[band].dims,
                arrays[band].data,
                json_safe(attrs),
                {"chunks": (edge, edge)},
            )
        # Every part lies on the 10 m geobox or a grid nested in it: coordinates are built
        # once, and the variables are put on them directly (a merge would align them again).
        attrs = {
            **stac_item.properties,
            "stac_id": stac_item.id,
            "stac_collection": stac_item.collection_id,
            "scenestore_profile": self.profile.name,
        }
        return xr.Dataset(variables, coords=coords, attrs=json_safe(attrs))

    def check_sources(
        self,
        item: pystac.Item,
        keys: dict[str, str],
        readable: dict[str, str],
        epsg: int | None,
    ) -> list[int]:
        """Compare each asset's COG header with what the item says it holds (one open each).

        Only the header is read (a few small Range requests, kept in GDAL's cache for the
        load that follows). A COG that cannot be opened fails the scene here with the error
        the load would have raised (:meth:`translate_error`).

        Returns:
            Each COG's tile height in pixels (its full-resolution level's block rows).

        Raises:
            SourceMismatchError: If a COG's size, CRS, transform or data type differs from the
                item's ``proj:``/``raster:bands`` fields; the message names the asset href
                (without its query), the item and both values.
        """
        import rasterio
        from rasterio.errors import RasterioError

        from scenestore.gdal import cog_options
        from scenestore.sourcecheck import GridHeader, expected_header, header_mismatch

        env = cog_options()
        tiles = []
        for band, key in keys.items():
            asset = item.assets[key]
            href = readable.get(asset.href, asset.href)
            expected = expected_header(asset.to_dict(), epsg, BAND_SPECS[band].dtype)
            try:
                with (
                    asset_read(self.profile),
                    rasterio.Env(**env),
                    rasterio.open(href) as src,
                ):
                    actual = GridHeader(
                        shape=(src.height, src.width),
                        transform=tuple(src.transform)[:6],
                        epsg=src.crs.to_epsg() if src.crs else None,
                        dtype=str(src.dtypes[0]),
                    )
                    tiles.append(int(src.block_shapes[0][0]))
            except (RasterioError, OSError) as err:
                # The same failure the load would meet (GDAL already retried): fail the scene
                # now, as the load would, rather than meet it again band after band.
                raise self.translate_error(err, self.identifier(item)) from err
            problem = header_mismatch(expected, actual)
            if problem is not None:
                raise SourceMismatchError(
                    f"Asset {redact(strip_query(asset.href))!r} of item {item.id!r} (band "
                    f"{band}) disagrees with its item: {problem}; nothing was committed "
                    "(report it to the data provider, or skip the scene)."
                )
        return tiles

    def readable_hrefs(self, hrefs: list[str]) -> dict[str, str]:
        """Return the href GDAL reads for each asset href, as the profile makes them readable.

        Signed profiles sign each href (again, while its token would expire before the reads
        are done); ``s3://`` hrefs get the profile's endpoint options for their buckets.

        Raises:
            SourceError: If signing fails or no S3 credentials can be found.
        """
        buckets = s3_buckets(hrefs)
        if buckets:
            configure_s3(self.profile.s3 or S3Access(), buckets)
        signing = self.profile.signing
        if signing is None:
            return {href: href for href in hrefs}
        return {href: signed_href(href, signing) for href in hrefs}

    def ingest(self, item: str | pystac.Item) -> IngestResult:
        """Like :meth:`StoreManager.ingest`; a signed href refused mid-read is signed again.

        A token can expire, or be revoked, while a scene is read. Nothing half-written is ever
        committed, so one more attempt with fresh tokens is safe; it reads only the bands that
        are still missing. (``load(force=True)`` and datasets returned without a store are not
        retried: they fail with a :class:`TransientSourceError` with status 403.)
        """
        try:
            return super().ingest(item)
        except TransientSourceError as err:
            if err.status != 403 or self.profile.signing is None:
                raise
            logger.warning(
                "Signed hrefs of %s were refused (HTTP 403); signing again with a fresh token",
                self.identifier(item),
            )
            self.profile.signing.refresh_tokens()
            return super().ingest(item)


#: S3 error codes and messages that mean "these credentials may not read this object".
_S3_DENIED = re.compile(
    r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Access Key Id you provided"
)


def tile_aligned_chunk(size: int, tiles: list[int]) -> int:
    """The stored chunk edge (10 m px) whose read strips start and end on COG tile rows.

    A strip that ends inside a row of COG tiles makes the next strip fetch and decode that
    row again. A chunk that is a multiple of every COG's tile height and of 6 keeps the 10 m
    strips (one chunk high), the 20 m ones (``chunk`` native rows, two stored strips) and the
    60 m ones (six) on tile rows, and keeps 20 m and 60 m chunks nested (``chunk / 2``,
    ``chunk / 6``). Grids no larger than one chunk stay one chunk (one strip: every tile
    once); otherwise the multiple nearest :data:`~scenestore.store.layout.DEFAULT_CHUNK_TARGET`
    (1536 px for 512 px tiles: 8 chunks, the last one partly empty).

    Args:
        size: The 10 m grid's longest edge.
        tiles: The COGs' tile heights (the 10 m COGs' rows; coarser bands' in their pixels).
    """
    from math import lcm

    from scenestore.store.layout import DEFAULT_CHUNK_TARGET

    if size <= DEFAULT_CHUNK_TARGET or not tiles or min(tiles) < 1:
        return choose_chunk(size)
    step = lcm(6, *tiles)
    if step > size:
        return choose_chunk(size)
    return step * max(1, round(DEFAULT_CHUNK_TARGET / step))


def footprint_coverage(item: pystac.Item, geobox: GeoBox) -> float | None:
    """The fraction (0-1) of the scene grid the item's footprint geometry covers.

    Returns:
        None if the item has no geometry or it cannot be projected (nothing is then refused).
    """
    if not item.geometry:
        return None
    try:
        from odc.geo.geom import Geometry

        from scenestore.aoi import split_antimeridian

        lonlat = split_antimeridian(shapely.geometry.shape(item.geometry))
        # A scene grid has a CRS (scene_geobox); odc-geo types GeoBox.crs as optional.
        footprint = Geometry(lonlat, "EPSG:4326").to_crs(cast("CRS", geobox.crs))
        extent = geobox.extent
        return float(footprint.intersection(extent).area / extent.area)
    except Exception as err:  # a footprint that cannot be projected: skip the rule, say so
        logger.debug("footprint of %s not projected: %s", item.id, err)
        return None


def _http_status(text: str) -> int | None:
    import re

    m = re.search(r"HTTP (?:response )?(?:code|status)[^0-9]{0,5}(\d{3})", text, re.I)
    return int(m.group(1)) if m else None


__all__ = ["StacStoreManager"]
