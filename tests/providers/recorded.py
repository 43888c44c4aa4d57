"""The recorded STAC material of ``shared/fixtures`` and the synthetic pixels put behind it.

Real items keep everything real except two things a unit test cannot afford: the grid is cut
to the top-left 1200 m of the real tile (120 px at 10 m, 60 at 20 m, 20 at 60 m, on the tile's
real origin and CRS), and the band hrefs point at synthetic COGs on exactly that grid, served
by the loopback asset gate at the same path as the real object.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from scenestore.bands import ALL_BANDS
from scenestore.profiles import Profile, parse_time
from scenestore_world.cogs import write_scene
from scenestore_world.scenes import SceneSpec

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"

#: Side of the cropped test scene in metres (120 px at 10 m; a multiple of 60 m).
CROP_M = 1200


def fixture(relative: str) -> Path:
    """Path of a recorded fixture; skips the test when the shared fixtures are absent."""
    path = FIXTURES / relative
    if not path.is_file():
        if os.environ.get("CI"):  # CI has shared/ beside the clone: missing means broken
            pytest.fail(f"recorded fixture {path} is missing")
        pytest.skip(f"recorded fixture {path} is not available")
    return path


def load(relative: str) -> Any:
    """A recorded JSON document."""
    return json.loads(fixture(relative).read_text())


def features(relative: str) -> list[dict[str, Any]]:
    """The items of a recorded FeatureCollection, item array or single item."""
    doc = load(relative)
    if isinstance(doc, list):
        return doc
    return doc.get("features", [doc])


def parquet_items(relative: str) -> list[dict[str, Any]]:
    """The items of a recorded stac-geoparquet file (read with rustac)."""
    import rustac

    return rustac.read_sync(str(fixture(relative)))["features"]


def cassette_body(relative: str, index: int) -> dict[str, Any]:
    """The JSON response body of interaction ``index`` of a recorded VCR cassette."""
    cassette = yaml.safe_load(fixture(relative).read_text())
    return json.loads(cassette["interactions"][index]["response"]["body"]["string"])


def crop_item(item: dict[str, Any], size_m: int = CROP_M) -> dict[str, Any]:
    """A copy of ``item`` whose gridded assets cover only the top-left ``size_m`` of the tile.

    Every asset with ``proj:shape``/``proj:transform`` keeps its transform (so the origin and
    pixel size stay the real ones) and gets the shape that covers ``size_m``; ``proj:bbox``
    follows.
    """
    out = copy.deepcopy(item)
    for asset in out["assets"].values():
        transform = asset.get("proj:transform")
        if not asset.get("proj:shape") or not transform:
            continue
        res = abs(float(transform[0]))
        n = round(size_m / res)
        asset["proj:shape"] = [n, n]
        x0, y0 = float(transform[2]), float(transform[5])
        if "proj:bbox" in asset:
            asset["proj:bbox"] = [x0, y0 - size_m, x0 + size_m, y0]
    return out


def origin(item: dict[str, Any], key: str) -> tuple[float, float]:
    """Upper-left corner of an asset's grid."""
    t = item["assets"][key]["proj:transform"]
    return float(t[2]), float(t[5])


def serve_bands(
    item: dict[str, Any],
    profile: Profile,
    *,
    root: Path,
    base_url: str,
    scratch: Path,
    seed: int = 0,
    nodata_corner: str | None = "upper-left",
) -> dict[str, Path]:
    """Write synthetic COGs on the (cropped) item's grid and point its band hrefs at them.

    Each band's file lands under ``root`` at the path of the real object (``s3://eodata/k``
    at ``eodata/k``, ``https://host/p`` at ``p``); https hrefs are rewritten to ``base_url``,
    ``s3://`` hrefs are kept (the gate is their S3 endpoint). ``item`` is changed in place.

    Returns:
        The served file of each canonical band.
    """
    keys = {band: profile.asset_key(band) for band in ALL_BANDS}
    ulx, uly = origin(item, keys["B04"])
    when = parse_time(item["properties"]["datetime"]) or datetime(2024, 1, 1)
    scene = SceneSpec(
        id=item["id"],
        index=seed,
        tile="XXXXX",
        epsg=profile.epsg(item),
        platform="sentinel-2a",
        datetime=when,
        size=round(CROP_M / 10),
        ulx=ulx,
        uly=uly,
        cloud_cover=20.0,
        processing_baseline="05.11",
        nodata_corner=nodata_corner,
        nodata_extent=0.3 if nodata_corner else 0.0,
        seed=seed,
    )
    write_scene(scene, scratch)
    served = {}
    for band, key in keys.items():
        asset = item["assets"][key]
        parts = urlsplit(asset["href"])
        relative = f"{parts.netloc}{parts.path}" if parts.scheme == "s3" else parts.path
        target = root / relative.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scratch / scene.id / f"{band}.tif", target)
        if parts.scheme in ("http", "https"):
            asset["href"] = f"{base_url}{parts.path}"
        served[band] = target
    return served
