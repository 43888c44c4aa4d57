"""STAC item and collection documents of the offline world, shaped like Earth Search v1.

The structure (extensions, property names, asset keys, ``raster:bands``...) follows the real
``sentinel-2-l2a`` items recorded in ``shared/fixtures/earth-search``. Only the 13 band assets
are emitted: each one exists as a file with a grid consistent with the scene, which is what
odc-stac needs to size its output grid.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import shapely
from pyproj import Transformer
from shapely.geometry import Polygon, box, mapping
from shapely.geometry.polygon import orient

from scenestore.bands import ALL_BANDS, BAND_SPECS
from scenestore_world.scenes import SceneSpec

COLLECTION_ID = "sentinel-2-l2a"

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

ITEM_EXTENSIONS: tuple[str, ...] = (
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
)

#: Earth Search asset key, description, centre wavelength and FWHM (micrometres) per band.
BAND_ASSETS: dict[str, tuple[str, str, float | None, float | None]] = {
    "B01": ("coastal", "Coastal aerosol (band 1)", 0.443, 0.027),
    "B02": ("blue", "Blue (band 2)", 0.49, 0.098),
    "B03": ("green", "Green (band 3)", 0.56, 0.045),
    "B04": ("red", "Red (band 4)", 0.665, 0.038),
    "B05": ("rededge1", "Red edge 1 (band 5)", 0.704, 0.019),
    "B06": ("rededge2", "Red edge 2 (band 6)", 0.74, 0.018),
    "B07": ("rededge3", "Red edge 3 (band 7)", 0.783, 0.028),
    "B08": ("nir", "NIR 1 (band 8)", 0.842, 0.145),
    "B8A": ("nir08", "NIR 2 (band 8A)", 0.865, 0.033),
    "B09": ("nir09", "NIR 3 (band 9)", 0.945, 0.026),
    "B11": ("swir16", "SWIR 1 (band 11)", 1.61, 0.143),
    "B12": ("swir22", "SWIR 2 (band 12)", 2.19, 0.242),
    "SCL": ("scl", "Scene classification map (SCL)", None, None),
}

#: Item property fed by each SCL class (see :data:`scenestore_world.cogs.SCL_CLASSES`).
_CLASS_PROPERTIES: dict[int, str] = {
    1: "s2:saturated_defective_pixel_percentage",
    2: "s2:dark_features_percentage",
    3: "s2:cloud_shadow_percentage",
    4: "s2:vegetation_percentage",
    5: "s2:not_vegetated_percentage",
    6: "s2:water_percentage",
    7: "s2:unclassified_percentage",
    8: "s2:medium_proba_clouds_percentage",
    9: "s2:high_proba_clouds_percentage",
    10: "s2:thin_cirrus_percentage",
    11: "s2:snow_ice_percentage",
}


def asset_href(data_url: str, scene_id: str, band: str) -> str:
    """URL of one band's COG: ``<data_url>/<scene_id>/<BAND>.tif``."""
    return f"{data_url.rstrip('/')}/{scene_id}/{band}.tif"


def stac_datetime(value: datetime) -> str:
    """Format like Earth Search: ``2023-06-28T07:24:41.632000Z``."""
    return f"{value:%Y-%m-%dT%H:%M:%S.%f}Z"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def band_asset(scene: SceneSpec, band: str, data_url: str) -> dict[str, Any]:
    """The Earth Search asset of one band of ``scene``."""
    spec = BAND_SPECS[band]
    key, description, wavelength, fwhm = BAND_ASSETS[band]
    raster: dict[str, Any] = {"nodata": spec.nodata, "data_type": spec.dtype}
    asset: dict[str, Any] = {"href": asset_href(data_url, scene.id, band), "type": COG_MEDIA_TYPE}
    if spec.is_reflectance:
        asset["title"] = f"{description} - {spec.resolution}m"
        asset["eo:bands"] = [
            {
                "name": key,
                "common_name": spec.common_name,
                "description": description,
                "center_wavelength": wavelength,
                "full_width_half_max": fwhm,
            }
        ]
        asset["gsd"] = spec.resolution
        raster |= {
            "bits_per_sample": 15,
            "spatial_resolution": spec.resolution,
            "scale": 0.0001,
            "offset": -0.1,
        }
    else:
        asset["title"] = description
        raster["spatial_resolution"] = spec.resolution
    asset["proj:shape"] = list(scene.shape(spec.resolution))
    asset["proj:transform"] = [_number(v) for v in scene.transform(spec.resolution)]
    asset["raster:bands"] = [raster]
    asset["roles"] = ["data", "reflectance"]  # Earth Search v1 says so for SCL too
    return asset


def footprint(scene: SceneSpec) -> Polygon:
    """Valid-data footprint in the scene's UTM CRS: the square minus the swath-edge corner."""
    minx, miny, maxx, maxy = scene.bounds
    square = box(minx, miny, maxx, maxy)
    if scene.nodata_corner is None or scene.nodata_extent <= 0:
        return square
    leg = scene.nodata_extent * scene.extent_m
    cx = minx if scene.nodata_corner.endswith("left") else maxx
    cy = maxy if scene.nodata_corner.startswith("upper") else miny
    sx = 1 if cx == minx else -1
    sy = -1 if cy == maxy else 1
    cut = Polygon([(cx, cy), (cx + sx * leg, cy), (cx, cy + sy * leg)])
    return square.difference(cut)


def lonlat_geometry(scene: SceneSpec) -> Polygon:
    """The footprint in WGS84 longitude/latitude, counter-clockwise as GeoJSON wants."""
    to_wgs84 = Transformer.from_crs(scene.epsg, 4326, always_xy=True)
    shape = shapely.transform(footprint(scene), lambda xy: _project(to_wgs84, xy))
    return orient(shape, 1.0)


def _project(transformer: Transformer, xy: Any) -> Any:
    lon, lat = transformer.transform(xy[:, 0], xy[:, 1])
    xy[:, 0], xy[:, 1] = lon, lat
    return xy


def item_dict(
    scene: SceneSpec, data_url: str, scl_counts: Mapping[int, int] | None = None
) -> dict[str, Any]:
    """The STAC item of ``scene`` with asset hrefs under ``data_url``.

    Args:
        scene: The planned scene.
        data_url: Base URL the world's ``data`` directory is served at.
        scl_counts: SCL class pixel counts measured when the COGs were written; they feed the
            ``s2:*_percentage`` properties (zeros when absent).

    Returns:
        A GeoJSON Feature dict that ``pystac.Item.from_dict`` accepts.
    """
    geometry = lonlat_geometry(scene)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": scene.id,
        "properties": _properties(scene, scl_counts or {}),
        "geometry": mapping(geometry),
        "links": [
            {
                "rel": "license",
                "href": "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice",
            }
        ],
        "assets": {BAND_ASSETS[b][0]: band_asset(scene, b, data_url) for b in ALL_BANDS},
        "bbox": list(geometry.bounds),
        "stac_extensions": list(ITEM_EXTENSIONS),
        "collection": COLLECTION_ID,
    }


def _properties(scene: SceneSpec, scl_counts: Mapping[int, int]) -> dict[str, Any]:
    tile = scene.tile_spec
    sat = scene.platform[-1].upper()
    pb = scene.processing_baseline
    baseline = pb.replace(".", "")
    datatake = datetime.combine(scene.datetime.date(), tile.datatake_time)
    generated = scene.datetime.replace(tzinfo=None) + timedelta(hours=4, minutes=7, seconds=13)
    created = generated + timedelta(hours=4, minutes=3, seconds=0.537)
    orbit = 46_000 + 3 * scene.index  # plausible absolute orbit number
    valid = sum(n for cls, n in scl_counts.items() if int(cls) != 0)
    shares = {int(c): 100.0 * n / valid for c, n in scl_counts.items() if valid and int(c)}
    day = scene.datetime.timetuple().tm_yday
    # Earth-Sun distance correction, the usual first-order formula
    sun_distance_factor = 1.0 / (1.0 - 0.01673 * math.cos(0.0172 * (day - 4))) ** 2
    take, gen = f"{datatake:%Y%m%dT%H%M%S}", f"{generated:%Y%m%dT%H%M%S}"
    rel = tile.relative_orbit
    payload = hashlib.sha256(scene.id.encode()).hexdigest()[:32]
    props: dict[str, Any] = {
        "created": stac_datetime(created)[:-4] + "Z",
        "platform": scene.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": scene.cloud_cover,
        "proj:epsg": scene.epsg,
        "mgrs:utm_zone": tile.utm_zone,
        "mgrs:latitude_band": tile.latitude_band,
        "mgrs:grid_square": tile.grid_square,
        "grid:code": f"MGRS-{tile.name}",
        "view:sun_azimuth": tile.sun_azimuth + 0.05 * scene.index,
        "view:sun_elevation": tile.sun_elevation - 0.02 * scene.index,
        "s2:degraded_msi_data_percentage": 0,
        "s2:nodata_pixel_percentage": scene.nodata_pixel_percentage,
    }
    props |= {name: round(shares.get(cls, 0.0), 6) for cls, name in _CLASS_PROPERTIES.items()}
    props |= {
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": scene.processing_baseline,
        "s2:product_uri": f"S2{sat}_MSIL2A_{take}_N{baseline}_R{rel:03d}_T{tile.name}_{gen}.SAFE",
        "s2:generation_time": stac_datetime(generated.replace(microsecond=0)),
        "s2:datatake_id": f"GS2{sat}_{take}_{orbit:06d}_N{pb}",
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": f"S2{sat}_OPER_MSI_L2A_DS_2{sat}PS_{gen}_S{take}_N{pb}",
        "s2:granule_id": f"S2{sat}_OPER_MSI_L2A_TL_2{sat}PS_{gen}_A{orbit:06d}_T{tile.name}_N{pb}",
        "s2:reflectance_conversion_factor": sun_distance_factor,
        "datetime": stac_datetime(scene.datetime),
        "s2:sequence": "0",
        "earthsearch:s3_path": (
            f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/{tile.utm_zone}/{tile.latitude_band}/"
            f"{tile.grid_square}/{scene.datetime.year}/{scene.datetime.month}/{scene.id}"
        ),
        "earthsearch:payload_id": f"roda-sentinel2/workflow-sentinel2-to-stac/{payload}",
        "earthsearch:boa_offset_applied": True,
        "processing:software": {"sentinel2-to-stac": "0.1.1"},
        "updated": stac_datetime(created)[:-4] + "Z",
    }
    return props


def collection_dict(scenes: Sequence[SceneSpec]) -> dict[str, Any]:
    """The ``sentinel-2-l2a`` collection, modelled on Earth Search's, with the world's extent."""
    bounds = [lonlat_geometry(s).bounds for s in scenes]
    times = sorted(s.datetime for s in scenes)
    sample = scenes[0]
    item_assets = {}
    for band in ALL_BANDS:
        asset = band_asset(sample, band, "")
        for key in ("href", "proj:shape", "proj:transform"):
            asset.pop(key)
        item_assets[BAND_ASSETS[band][0]] = asset
    return {
        "type": "Collection",
        "id": COLLECTION_ID,
        "stac_version": "1.0.0",
        "title": "Sentinel-2 Level-2A",
        "description": "Global Sentinel-2 data from the Multispectral Instrument (MSI) onboard "
        "Sentinel-2 (synthetic offline world served by scenestore)",
        "links": [
            {
                "rel": "license",
                "href": "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice",
                "title": "proprietary",
            }
        ],
        "stac_extensions": [
            "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
        ],
        "extent": {
            "spatial": {
                "bbox": [
                    [
                        min(b[0] for b in bounds),
                        min(b[1] for b in bounds),
                        max(b[2] for b in bounds),
                        max(b[3] for b in bounds),
                    ]
                ]
            },
            "temporal": {"interval": [[stac_datetime(times[0]), stac_datetime(times[-1])]]},
        },
        "license": "proprietary",
        "keywords": ["sentinel", "earth observation", "esa"],
        "providers": [
            {"name": "ESA", "roles": ["producer"], "url": "https://earth.esa.int/web/guest/home"},
            {"name": "scenestore", "roles": ["processor", "host"]},
        ],
        "summaries": {
            "platform": ["sentinel-2a", "sentinel-2b"],
            "constellation": ["sentinel-2"],
            "instruments": ["msi"],
            "gsd": [10, 20, 60],
            "eo:bands": [
                item_assets[BAND_ASSETS[b][0]]["eo:bands"][0]
                for b in ALL_BANDS
                if BAND_SPECS[b].is_reflectance
            ],
        },
        "item_assets": item_assets,
    }


__all__ = [
    "BAND_ASSETS",
    "COLLECTION_ID",
    "asset_href",
    "band_asset",
    "collection_dict",
    "footprint",
    "item_dict",
    "lonlat_geometry",
]
