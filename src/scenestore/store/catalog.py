"""A static STAC catalog of what a store holds, and checking it against the STAC schemas offline.

:func:`write_catalog` writes ``<out>/catalog.json`` with one item per stored scene
(``<out>/<identifier>/<identifier>.json``). Each item has:

* the scene's footprint in lon/lat, computed from its stored grid;
* ``proj:code`` (or ``proj:wkt2``), ``proj:shape`` and ``proj:transform`` of the 10 m grid;
* the stored scene attributes (cloud cover, MGRS tile, processing baseline...) as properties;
* one asset per committed band, pointing at the band's zarr v3 array (by a relative href for a
  local store; by its absolute ``s3://...`` URL for an object store), with STAC 1.1 ``bands``
  (``eo:common_name``, ``eo:center_wavelength``, ``data_type``, ``nodata``, ``scale``,
  ``offset``), one ``zarr`` asset for the group, and a ``thumbnail`` asset when the scene has
  a quicklook in the store's ``.quicklooks/``.

:func:`validate_catalog` validates every object with pystac's JSON-schema validator against
the STAC core schemas that pystac ships, never fetching anything: extension schemas are
checked when they are in a local schema directory (``$SCENESTORE_STAC_SCHEMAS``, JSON schema
files keyed by their ``$id``) and otherwise reported as not checked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pystac
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.validation import GetSchemaError, JsonSchemaSTACValidator

from scenestore.bands import BAND_SPECS
from scenestore.errors import InvalidRequestError, UnsafePathError
from scenestore.fsafety import inside_store
from scenestore.store.arrays import crs_of
from scenestore.store.entries import grid_footprint
from scenestore.store.inventory import SceneInfo, list_scenes
from scenestore.store.layout import quicklook_key, scene_key
from scenestore.store.native import GRID_ATTR
from scenestore.store.scenes import SceneStore

logger = logging.getLogger(__name__)

#: Media type of a zarr store or array (pystac's name for it).
ZARR_MEDIA_TYPE = pystac.MediaType.VND_ZARR
#: Environment variable naming a directory of extra JSON schemas (e.g. STAC extensions).
SCHEMA_DIR_ENV = "SCENESTORE_STAC_SCHEMAS"
#: Centre wavelengths in micrometres (Sentinel-2A MSI), for ``eo:center_wavelength``.
CENTER_WAVELENGTH_UM = {
    "B01": 0.443,
    "B02": 0.490,
    "B03": 0.560,
    "B04": 0.665,
    "B05": 0.704,
    "B06": 0.740,
    "B07": 0.783,
    "B08": 0.842,
    "B8A": 0.865,
    "B09": 0.945,
    "B11": 1.610,
    "B12": 2.190,
}
#: Scene attributes scenestore keeps for itself; the catalog names them ``scenestore:*``.
_INTERNAL = {
    "stac_id": "scenestore:item_id",
    "stac_collection": "scenestore:collection",
    "scenestore_profile": "scenestore:profile",
}
_DROPPED = {
    "coordinates",
    "datetime",
    "proj:code",
    "proj:epsg",
    "proj:wkt2",
    "scenestore_footprint",
}


@dataclass(frozen=True)
class CatalogCheck:
    """What :func:`validate_catalog` checked.

    Attributes:
        objects: STAC objects (catalog and items) validated against the core schema.
        extensions_checked: Extension schema URIs that were validated.
        extensions_unchecked: Extension schema URIs without a local schema (not validated).
    """

    objects: int
    extensions_checked: tuple[str, ...] = field(default=())
    extensions_unchecked: tuple[str, ...] = field(default=())


def build_item(scenes: SceneStore, info: SceneInfo) -> pystac.Item:
    """Build the STAC item of one stored scene from its zarr group, asset hrefs absolute.

    A band's asset is ``<scene href>/<band>``; the ``thumbnail`` is the quicklook the ingest
    flow (or ``scenestore quicklook``) rendered into the store, if there is one.

    Raises:
        InvalidRequestError: If the scene records no sensing datetime.
    """
    group: Any = scenes.group(info.identifier)  # zarr types its items as a wide union
    scene_href = scenes.client.href(scene_key(info.identifier))
    look = quicklook_key(info.identifier)
    try:
        thumbnail_href = scenes.client.href(look) if scenes.client.exists(look) else None
    except UnsafePathError:  # a quicklook reached through a link is no asset of the store
        thumbnail_href = None
    # An entry of the store index carries no attributes: the group has them.
    attrs = info.attrs or {
        k: v for k, v in dict(group.attrs).items() if k != "scenestore_footprint"
    }
    x, y = group["x"][...], group["y"][...]
    res_x = float(x[1] - x[0]) if x.size > 1 else 10.0
    res_y = float(y[1] - y[0]) if y.size > 1 else -10.0
    transform = [res_x, 0.0, float(x[0]) - res_x / 2, 0.0, res_y, float(y[0]) - res_y / 2]
    # Any CRS form pyproj accepts (a subclass may store "EPSG:32633" rather than WKT).
    crs = crs_of(dict(group["spatial_ref"].attrs), what=f"Scene {info.identifier!r}")
    footprint = grid_footprint(crs, transform, (int(y.size), int(x.size)))
    geometry, bbox = footprint["geometry"], footprint["bbox"]
    item = pystac.Item(
        id=info.identifier,
        geometry=geometry,
        bbox=bbox,
        datetime=_when(info),
        properties={_INTERNAL.get(k, k): v for k, v in attrs.items() if k not in _DROPPED},
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    if epsg:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [int(y.size), int(x.size)]
    proj.transform = transform
    EOExtension.add_to(item)
    item.add_asset(
        "zarr",
        pystac.Asset(
            href=scene_href,
            media_type=ZARR_MEDIA_TYPE,
            roles=["data"],
            title="The scene as one zarr v3 group (open with xarray.open_zarr)",
        ),
    )
    if thumbnail_href is not None:
        item.add_asset(
            "thumbnail",
            pystac.Asset(
                href=thumbnail_href,
                media_type=pystac.MediaType.PNG,
                roles=["thumbnail"],
                title="True-colour quicklook (B04, B03, B02)",
            ),
        )
    for band in sorted(scenes.committed_bands(info.identifier)):
        try:
            array = group[band]
        except KeyError:  # being replaced by a writer right now: its commit is gone too
            continue
        asset = _band_asset(f"{scene_href.rstrip('/')}/{band}", band, array)
        grid = array.attrs.get(GRID_ATTR)
        if isinstance(grid, dict):  # layout 2: the band keeps its own, coarser grid
            f = int(grid["factor"])
            asset.extra_fields["proj:shape"] = [int(n) for n in array.shape]
            asset.extra_fields["proj:transform"] = [
                transform[0] * f,
                0.0,
                transform[2],
                0.0,
                transform[4] * f,
                transform[5],
            ]
        item.add_asset(band, asset)
    return item


def write_catalog(scenes: SceneStore, out: Path, *, title: str | None = None) -> pystac.Catalog:
    """Write a self-contained static STAC catalog of every stored scene to ``out``.

    The catalog is written to a sibling temporary directory and moved into place, so ``out``
    never holds a mix of an old and a new catalog, and items of removed scenes disappear. For
    a local store asset hrefs are relative to each item file, so store and catalog can move
    together; for an object store they are the objects' absolute URLs (``s3://...``), since no
    path relative to a local catalog reaches them.

    Returns:
        The written ``pystac.Catalog``, read back.

    Raises:
        StoreError: If the store is missing or cannot be read.
        InvalidRequestError: If ``out`` is the store itself, inside a scene, a file, or holds
            other files.
    """
    infos = [i for i in list_scenes(scenes, scan=True) if i.bands]
    root = scenes.client.local_root()
    out = check_catalog_dir(out, root)
    name = root.name if root is not None else str(scenes)
    catalog = pystac.Catalog(
        id="scenestore",
        title=title or f"Scenes in {name}",
        description=f"Sentinel-2 L2A scenes stored by scenestore in the store {name!r}",
    )
    for info in infos:
        try:
            catalog.add_item(build_item(scenes, info))
        except (FileNotFoundError, KeyError):  # removed (rm/prune) since it was listed
            logger.info("Scene %s was removed while the catalog was written", info.identifier)
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    catalog.normalize_hrefs(f"{staging}{os.sep}")  # the slash: ".catalog.1a2b" is no file
    if root is not None:
        for item in catalog.get_items():
            # Relative to the item file; staging sits beside out, so they hold once renamed.
            # normalize_hrefs gave every item a self href; pystac types it as optional.
            item_dir = Path(cast("str", item.get_self_href())).parent
            for asset in item.assets.values():
                asset.href = os.path.relpath(asset.href, item_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    if out.exists():
        old = out.with_name(f".{out.name}.old.{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    return pystac.Catalog.from_file(str(out / "catalog.json"))


def check_catalog_dir(out: Path, store: Path | None) -> Path:
    """Check that ``out`` may be (re)written whole as a catalog directory; return it absolute.

    It must be new, empty, or hold a catalog written before (``catalog.json``): the directory
    is replaced whole, so pointing ``--out`` at a directory of other files must not delete them.
    ``store`` is the local store (None for an object store, which no local path can be inside).

    Raises:
        InvalidRequestError: If ``out`` is the store, inside a scene, a file, or a directory
            that holds other things than a catalog.
        UnsafePathError: If ``out`` is a symlink.
    """
    out = out.absolute()
    # The directory is replaced whole: a link here would be renamed, and its target left behind.
    inside_store(out.parent, out)
    is_store = store is not None and out == store.absolute()
    if is_store or any(p.suffix == ".zarr" for p in (out, *out.parents)):
        raise InvalidRequestError(
            f"Catalog directory {str(out)!r} is the store or inside a scene; expected a "
            "directory of its own, e.g. next to the store."
        )
    if out.exists() and not out.is_dir():
        raise InvalidRequestError(
            f"Catalog directory {str(out)!r} is a file; expected a directory (or a path to create)."
        )
    if out.is_dir() and any(out.iterdir()) and not (out / "catalog.json").is_file():
        raise InvalidRequestError(
            f"Catalog directory {str(out)!r} holds files but no catalog.json; expected a new or "
            "empty directory, or one a previous `scenestore catalog` wrote (it is replaced whole)."
        )
    return out


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator restricted to local schemas: it never fetches.

    Core schemas come with pystac; extension schemas come from ``schemas`` (URI -> schema).
    An extension without a local schema is recorded in :attr:`unchecked` instead.
    """

    def __init__(self, schemas: Mapping[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.schema_cache.update(schemas or {})
        self.checked: set[str] = set()
        self.unchecked: set[str] = set()

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise GetSchemaError(
                schema_uri, LookupError(f"no local copy of {schema_uri} (offline validation)")
            )
        return self.schema_cache[schema_uri]

    def validate_extension(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: pystac.STACObjectType,
        stac_version: str,
        extension_id: str,
        href: str | None = None,
    ) -> str | None:
        """Validate one extension if its schema is local; otherwise record it as unchecked."""
        if extension_id not in self.schema_cache:
            self.unchecked.add(extension_id)
            return None
        self.checked.add(extension_id)
        return super().validate_extension(
            stac_dict, stac_object_type, stac_version, extension_id, href
        )


def local_schemas(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Read JSON schemas from a directory (default ``$SCENESTORE_STAC_SCHEMAS``), by ``$id``."""
    directory = directory or (
        Path(os.environ[SCHEMA_DIR_ENV]) if SCHEMA_DIR_ENV in os.environ else None
    )
    if directory is None or not directory.is_dir():
        return {}
    schemas = {}
    for path in sorted(directory.rglob("*.json")):
        schema = json.loads(path.read_text())
        if isinstance(schema, dict) and isinstance(schema.get("$id"), str):
            schemas[schema["$id"]] = schema
    return schemas


def validate_catalog(
    root: Path, *, schemas: Mapping[str, dict[str, Any]] | None = None
) -> CatalogCheck:
    """Validate a written catalog and every item in it against the STAC JSON schemas, offline.

    Args:
        root: The catalog directory (holding ``catalog.json``) or the catalog file.
        schemas: Extra schemas by URI (default: :func:`local_schemas`).

    Raises:
        pystac.errors.STACValidationError: If an object does not match a schema.
        OSError, ValueError: If a linked file is missing or not JSON.
    """
    href = root / "catalog.json" if root.is_dir() else root
    validator = OfflineValidator(local_schemas() if schemas is None else schemas)
    # Validate the JSON as written (not pystac's re-serialisation), walking child/item links.
    todo, seen = [href.resolve()], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        doc = json.loads(path.read_text())
        pystac.validation.validate_dict(doc, href=str(path), validator=validator)
        todo.extend(
            (path.parent / link["href"]).resolve()
            for link in doc.get("links", [])
            if link.get("rel") in ("child", "item") and "://" not in link["href"]
        )
    return CatalogCheck(
        len(seen), tuple(sorted(validator.checked)), tuple(sorted(validator.unchecked))
    )


def _band_asset(href: str, band: str, array: Any) -> pystac.Asset:
    attrs = dict(array.attrs)
    spec = BAND_SPECS.get(band)
    info: dict[str, Any] = {"name": band, "data_type": str(array.dtype)}
    if spec and spec.common_name:
        info["eo:common_name"] = spec.common_name
    if band in CENTER_WAVELENGTH_UM:
        info["eo:center_wavelength"] = CENTER_WAVELENGTH_UM[band]
    info["nodata"] = attrs.get(
        "nodata", array.fill_value.item() if hasattr(array.fill_value, "item") else array.fill_value
    )
    for key in ("scale", "offset"):
        if isinstance(attrs.get(key), int | float):
            info[key] = attrs[key]
    extra: dict[str, Any] = {"bands": [info]}
    if isinstance(attrs.get("native_resolution"), int | float):
        extra["gsd"] = attrs["native_resolution"]
    kind = (
        "reflectance (DN; reflectance = DN * scale + offset)"
        if (spec and spec.is_reflectance)
        else "scene classification"
    )
    return pystac.Asset(
        href=href,
        media_type=ZARR_MEDIA_TYPE,
        roles=["data"] if spec is None or spec.is_reflectance else ["data", "classification"],
        title=f"{band} {kind}, zarr v3 array",
        extra_fields=extra,
    )


def _when(info: SceneInfo) -> datetime:
    if not info.datetime:
        raise InvalidRequestError(
            f"Scene {info.identifier!r} records no sensing datetime; expected the 'datetime' "
            "attribute every ingested scene has."
        )
    return datetime.fromisoformat(str(info.datetime).replace("Z", "+00:00"))


__all__ = [
    "CENTER_WAVELENGTH_UM",
    "CatalogCheck",
    "OfflineValidator",
    "ZARR_MEDIA_TYPE",
    "build_item",
    "check_catalog_dir",
    "local_schemas",
    "validate_catalog",
    "write_catalog",
]
