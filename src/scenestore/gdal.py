"""GDAL settings for reading Cloud-Optimized GeoTIFFs over HTTP, applied once per process."""

from __future__ import annotations

import threading

_configured = False
_lock = threading.Lock()

#: Options tuned for COGs: no sidecar probing on open, merged and multiplexed range requests,
#: a per-file block cache, and GDAL's own retry of 429/503 answers.
COG_OPTIONS: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MAX_RETRY": 5,
    "GDAL_HTTP_RETRY_DELAY": 0.5,
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.jp2",
    "VSI_CACHE": "TRUE",
    "GDAL_CACHEMAX": 256,
}


def configure_gdal() -> None:
    """Apply :data:`COG_OPTIONS` to odc-stac's rasterio readers (idempotent)."""
    global _configured
    with _lock:
        if _configured:
            return
        from odc.stac import configure_rio

        configure_rio(cloud_defaults=True, **COG_OPTIONS)
        _configured = True
