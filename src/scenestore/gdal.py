"""GDAL settings for reading Cloud-Optimized GeoTIFFs over HTTP, applied once per process."""

from __future__ import annotations

import ctypes
import logging
import threading
import warnings
from typing import Any

from scenestore.network import retry_backoff_s, timeouts

logger = logging.getLogger(__name__)

_configured = False
_lock = threading.Lock()

#: Options tuned for COGs: no sidecar probing on open, merged and multiplexed range requests,
#: a block cache, and GDAL's own retry of 429/503 answers.
COG_OPTIONS: dict[str, str | int | float] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # One GET for the merged tile ranges of a strip: the default (parallel range requests)
    # reads ahead in 10 MB pieces past the strip's last tile, and with several strips in
    # flight those bytes leave GDAL's small HTTP cache before the next strip wants them.
    "GDAL_HTTP_MULTIRANGE": "SINGLE_GET",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MAX_RETRY": 5,
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.jp2",
    # No VSI_CACHE layer: it rounds every read to 32 KB pieces of its own, so the header read
    # overlapped the first tiles of a small COG, which the strip's merged GET then fetched
    # again. /vsicurl/'s own cache keeps the header for the second open.
    "VSI_CACHE": "FALSE",
    "GDAL_CACHEMAX": 256,
    # The GTiff driver fetches a window's tiles in one merged request only up to this many
    # bytes (10 MB by default) and reads the rest with growing read-ahead, which ran past the
    # strip into the next strip's tiles (fetched again by that strip): 7 % more bytes on a
    # full tile. A strip's compressed tiles are held only while it is decoded.
    "GDAL_MAX_RAW_BLOCK_CACHE_SIZE": 128 * 1024 * 1024,
}


def cog_options() -> dict[str, Any]:
    """:data:`COG_OPTIONS` with the timeouts and retry delay in force (:mod:`scenestore.network`).

    Raises:
        InvalidRequestError: If a timeout or backoff variable is not a positive number.
    """
    limits = timeouts()
    return {
        **COG_OPTIONS,
        # Without these a COG server that accepts and never answers hangs the read forever.
        "GDAL_HTTP_CONNECTTIMEOUT": f"{limits.connect_s:g}",
        "GDAL_HTTP_TIMEOUT": f"{limits.read_s:g}",
        # GDAL's in-read retries wait half scenestore's first retry delay (0.5 s by default).
        "GDAL_HTTP_RETRY_DELAY": f"{retry_backoff_s() / 2:g}",
    }


def configure_gdal() -> None:
    """Apply :func:`cog_options` to odc-stac's rasterio readers (idempotent)."""
    global _configured
    with _lock:
        if _configured:
            return
        from odc.stac import configure_rio

        # GDAL options go in configure_rio's **params, beside its own typed keywords.
        options = cog_options()
        configure_rio(cloud_defaults=True, **options)
        # odc-loader resamples in-memory blocks with rasterio.warp, which warns that a bare
        # array has no geotransform; the transforms are passed explicitly, so it is noise.
        from rasterio.errors import NotGeoreferencedWarning

        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio")
        _configured = True


def clear_http_cache(hrefs: list[str] | None = None) -> bool:
    """Forget what GDAL's process-wide ``/vsicurl/`` cache holds, failures included.

    GDAL keeps file sizes, downloaded byte ranges and failed opens of remote files for the
    life of the process. A download meant to read the source again (``load(force=True)``, a
    band deleted from the store and asked for again) must not be served stale bytes, and a
    retry after a transient error (a HEAD answered 503) must not fail on a remembered failure
    without sending a request. rasterio does not wrap ``VSICurlClearCache``; it is called
    through ctypes on the libgdal this process has loaded.

    Args:
        hrefs: URLs to forget; None forgets every remote file.

    Returns:
        Whether the cache was cleared (False when no loaded libgdal could be found).
    """
    lib = _libgdal()
    if lib is None:
        return False
    if hrefs is None:
        lib.VSICurlClearCache()
    else:
        for href in hrefs:
            if href.startswith(("http://", "https://")):
                lib.VSICurlPartialClearCache(f"/vsicurl/{href}".encode())
    return True


_LIBGDAL: ctypes.CDLL | None = None


def _libgdal() -> ctypes.CDLL | None:
    """The libgdal rasterio loaded (dlopen of the same file returns the loaded library)."""
    global _LIBGDAL
    if _LIBGDAL is None:
        import rasterio  # noqa: F401  (loads libgdal into the process)

        try:
            with open("/proc/self/maps") as maps:
                paths = sorted({ln.split()[-1] for ln in maps if "libgdal" in ln.split()[-1]})
            lib = ctypes.CDLL(paths[0])
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            lib.VSICurlPartialClearCache.restype = None
            lib.VSICurlClearCache.restype = None
        except (OSError, AttributeError, IndexError) as err:
            logger.warning("Cannot reach GDAL's HTTP cache (%s); it will not be cleared.", err)
            return None
        _LIBGDAL = lib
    return _LIBGDAL
