"""Three real providers, proven on their recorded responses: Earth Search v1, Planetary
Computer and CDSE.

Everything STAC here was recorded from the real services (``shared/fixtures``, see its
PROVENANCE.md). Search pages are replayed by a loopback server that follows the recorded
paging tokens, or served by ``rustac serve``; pixels are synthetic COGs on each item's real
grid (cut to its top-left 1200 m), behind a loopback gate that checks SAS tokens (Planetary
Computer) and S3 credentials (CDSE) as the real asset servers do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.recorded import (
    cassette_body,
    crop_item,
    features,
    load,
    origin,
    parquet_items,
    serve_bands,
)
from providers.servers import Gate, ReplayAPI, rustac_api
from scenestore import ALL_BANDS, StacStoreManager, build_query, search_scenes
from scenestore.bands import BAND_SPECS
from scenestore.errors import InvalidRequestError, SourceError, TransientSourceError
from scenestore.hrefs import HrefSigning, S3Access, s3_credential_source, s3_options, sas_expiry
from scenestore.ids import validate_identifier
from scenestore.profiles import (
    PROFILES,
    get_profile,
    parse_baseline,
    processing_baseline,
    require_utm,
)
from scenestore.redact import redact
from scenestore.reflectance import harmonize, reflectance_of
from scenestore.search import select_items

pytestmark = pytest.mark.filterwarnings("ignore:Could not parse bucket:UserWarning")

NAMES = ("earth-search", "earth-search-c1", "planetary-computer", "cdse")
ES_PAGES = (
    "earth-search/pystac-client__es-v1-search-filter__page1.json",
    "earth-search/pystac-client__es-v1-search-filter__page2.json",
)
ES_L2A_3 = "earth-search/eodm__es-v1-sentinel-2-l2a__3items.json"
ES_C1_10 = "earth-search/rustac__es-v1-sentinel-2-c1-l2a__13TDE__10items.json"
PC_TWO = "planetary-computer/rustac__pc-two-sentinel-2-items__13TDE.json"
PC_100 = "planetary-computer/rustac__pc-100-sentinel-2-items__13TDE.parquet"
CDSE_ITEMS = (
    "cdse/openeo-gpsd__cdse-search__S2B_MSIL2A_20200322T074609_N0500_R135_T36NYH.json",
    "cdse/openeo-gpsd__cdse-search__S2C_MSIL2A_20260527T014651_N0512_R017_T55WFR.json",
    "cdse/eometadatatool__cdse-example-item__S2A_MSIL2A_20220217T183431_N0510_R027_T13VEK_"
    "20240516T022440.json",
)

#: Every recorded L2A item of each provider: (file, collection the provider serves it in).
RECORDED = {
    "earth-search": [
        ES_L2A_3,
        *ES_PAGES,
        "earth-search/pystac-client__es-v1-search-multiple-collections__page1.json",
    ],
    "earth-search-c1": [ES_C1_10, *ES_PAGES],
    "planetary-computer": [
        PC_TWO,
        "planetary-computer/pystac-client__pc-search-s2l2a-2019-01-01-33items.json",
        "planetary-computer/rustac__pc-search-page-1.json",
        "planetary-computer/rustac__pc-search-page-2.json",
        "planetary-computer/rustac__pc-items-page-1.json",
        "planetary-computer/rustac__pc-items-page-2.json",
        "planetary-computer/stac-geoparquet__pc-4items-array.json",
        "planetary-computer/odc-stac__pc-items__site2-2020_jun_jul-35MNM.geojson",
        "planetary-computer/odc-stac__pc-item__S2B_MSIL2A_20190629T212529_R043_T06VVN_"
        "20201006T080531.json",
    ],
    "cdse": list(CDSE_ITEMS),
}


def recorded_items(name: str) -> list[dict]:
    """The recorded items of a provider's collection, from every file that has some."""
    collection = PROFILES[name].collection
    out = []
    for rel in RECORDED[name]:
        out += [f for f in features(rel) if f.get("collection", collection) == collection]
    return out


def band_keys(name: str) -> dict[str, str]:
    return {band: PROFILES[name].asset_key(band) for band in ALL_BANDS}


def everything() -> object:
    return build_query(start="2015-01-01", end="2030-12-31", bbox=(-180, -85, 180, 85))


# -- profiles: band keys, CRS, identifiers ---------------------------------------------------


def test_profiles_are_data_with_one_prefix_per_provider_and_collection():
    assert get_profile("earth-search") is PROFILES["earth-search"]
    assert PROFILES["earth-search"].id_prefix == "es-l2a", "existing stores keep their names"
    prefixes = {(p.stac_url, p.collection): p.id_prefix for p in PROFILES.values()}
    assert len(set(prefixes.values())) == len(PROFILES) == len(prefixes)
    assert {p.id_prefix for p in PROFILES.values()} == {"es-l2a", "es-c1l2a", "pc-l2a", "cdse-l2a"}
    with pytest.raises(InvalidRequestError, match="Unknown provider profile 'usgs'; expected"):
        get_profile("usgs")


@pytest.mark.parametrize("name", NAMES)
def test_profile_maps_all_13_bands_and_finds_the_crs_in_every_recorded_item(name):
    profile = PROFILES[name]
    items = recorded_items(name)
    assert len(items) >= 3
    keys = band_keys(name)
    for item in items:
        missing = {b: k for b, k in keys.items() if k not in item["assets"]}
        assert not missing, f"{item['id']} lacks {missing}"
        epsg = require_utm(item["id"], profile.epsg(item, list(keys.values())))
        props = item["properties"]
        recorded = props.get("proj:epsg") or item["assets"][keys["B04"]].get("proj:code")
        assert f"EPSG:{epsg}" == recorded or epsg == recorded
        for band, key in keys.items():
            transform = item["assets"][key].get("proj:transform")
            if transform:  # each band at its native resolution, never a resampled twin
                assert transform[0] == BAND_SPECS[band].resolution, (item["id"], key)
    assert not any(k.endswith("-jp2") for k in keys.values())
    if name == "cdse":
        assert keys["B01"] == "B01_60m" and keys["SCL"] == "SCL_20m"
        assert all("proj:epsg" not in i["properties"] for i in items), "CRS only on assets"


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"S2[ABC]_[A-Za-z0-9_]{1,60}", fullmatch=True))
def test_identifiers_never_collide_across_providers_and_round_trip(item_id):
    managers = [StacStoreManager(["B04"], None, profile=name) for name in NAMES]
    identifiers = [m.identifier(item_id) for m in managers]
    assert len(set(identifiers)) == len(NAMES)
    for manager, identifier in zip(managers, identifiers, strict=True):
        assert validate_identifier(identifier) == identifier
        assert manager.identifier(identifier) == identifier, "stable when given back"
        assert manager.item_id(identifier) == item_id


def test_identifiers_of_recorded_items_are_unique_per_provider():
    seen: dict[str, str] = {}
    for name in NAMES:
        manager = StacStoreManager(["B04"], None, profile=name)
        for item in recorded_items(name):
            identifier = manager.identifier(item["id"])
            assert seen.setdefault(identifier, name) == name, identifier
    # the same acquisition at Earth Search l2a and c1-l2a: two scenes, two names
    assert "es-l2a_S2B_24MVV_20250731_0_L2A" in seen
    assert "es-c1l2a_S2B_T24MVV_20250731T130245_L2A" in seen


# -- paging: recorded pages replayed ----------------------------------------------------------


def es_replay(collection: str) -> ReplayAPI:
    page1, page2 = (load(p) for p in ES_PAGES)
    token = page1["links"][0]["body"]["next"]
    return ReplayAPI(
        origins=("https://earth-search.aws.element84.com",),
        landing=cassette_body(
            "earth-search/pystac-client__cassette__es-v1-search-filter-2pages.yaml", 0
        ),
        pages={None: page1, token: page2},
        end_tokens=(page2["links"][0]["body"]["next"],),
        keep_collection=collection,
    )


def pc_replay(kind: str) -> ReplayAPI:
    page1, page2 = (load(f"planetary-computer/rustac__pc-{kind}-page-{n}.json") for n in (1, 2))

    def token(page: dict) -> str:
        link = next(lk for lk in page["links"] if lk["rel"] == "next")
        return link["body"]["token"] if "body" in link else link["href"].split("token=")[1]

    return ReplayAPI(
        origins=("https://planetarycomputer.microsoft.com",),
        landing=cassette_body(
            "planetary-computer/pystac-client__cassette__pc-collection-sentinel-2-l2a.yaml", 0
        ),
        pages={None: page1, token(page1): page2},
        end_tokens=(token(page2),),
        collections={
            "sentinel-2-l2a": load("planetary-computer/rustac__pc-collection-sentinel-2-l2a.json")
        },
    )


def cdse_replay() -> ReplayAPI:
    """CDSE was recorded one page at a time: page 1 gets the ``next`` link (pgstac-style
    ``token`` in a POST body) that leads to the second recorded response."""
    page1, page2 = (load(p) for p in CDSE_ITEMS[:2])
    token = f"next:{page1['features'][0]['id']}"
    page1 = {
        **page1,
        "links": [
            *page1["links"],
            {
                "rel": "next",
                "method": "POST",
                "merge": True,
                "type": "application/geo+json",
                "href": "https://stac.dataspace.copernicus.eu/v1/search",
                "body": {"token": token},
            },
        ],
    }
    return ReplayAPI(
        origins=("https://stac.dataspace.copernicus.eu", "https://stac.dataspace.copernicus.test"),
        landing=load("cdse/openeo-gpsd__cdse-root-catalog__hosts-anonymized.json"),
        pages={None: page1, token: page2},
    )


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("earth-search", lambda: es_replay("sentinel-2-l2a")),
        ("earth-search-c1", lambda: es_replay("sentinel-2-c1-l2a")),
        ("planetary-computer", lambda: pc_replay("search")),
        ("cdse", cdse_replay),
    ],
)
def test_search_returns_every_item_of_every_recorded_post_page(name, make):
    with make() as api:
        expected = {
            f["id"]
            for page in api.pages.values()
            for f in page["features"]
            if f.get("collection") == PROFILES[name].collection
        }
        found = search_scenes(
            everything(), stac_url=api.url(api.landing_self()), profile=name, page_size=10
        )
        searches = [r for r in api.requests if r[1].endswith("/search")]
    assert {i.id for i in found} == expected and len(found) == len(expected) >= 2
    assert [r[0] for r in searches] == ["POST"] * len(searches)
    tokens = [r[2] for r in searches]
    assert tokens[0] is None and tokens[1] in api.pages, "page 2 asked with the recorded token"
    if name.startswith("earth-search"):
        assert searches[1][3] == {"next": tokens[1]}, "merge: false sends the token alone"
        assert len(searches) == 3, "the token on page 2 is followed too"
    else:
        assert searches[1][3]["collections"] == ["sentinel-2-l2a"], "the search goes along"


def test_get_paging_with_a_token_query_parameter_returns_every_item():
    from pystac_client import Client

    with pc_replay("items") as api:
        client = Client.open(api.url(api.landing_self()))
        items = list(client.get_collection("sentinel-2-l2a").get_items())
        gets = [r for r in api.requests if r[1].endswith("/items")]
    recorded = [f["id"] for page in api.pages.values() for f in page["features"]]
    assert [i.id for i in items] == recorded and len(recorded) == 2
    assert [r[0] for r in gets] == ["GET"] * 3
    assert [r[2] for r in gets] == [None, *[t for t in api.pages if t], *api.end_tokens]


@pytest.mark.parametrize("name", NAMES)
def test_rustac_serves_the_recorded_items_and_search_pages_through_them(name, tmp_path, caplog):
    items = {
        "earth-search": lambda: features(ES_L2A_3),
        "earth-search-c1": lambda: features(ES_C1_10),
        "planetary-computer": lambda: parquet_items(PC_100),
        "cdse": lambda: [f for rel in CDSE_ITEMS for f in features(rel)],
    }[name]()
    collection = {
        "earth-search": "earth-search/eodm__es-v1-collection-sentinel-2-l2a.json",
        "earth-search-c1": "earth-search/rustac__es-v1-collection-sentinel-2-c1-l2a.json",
        "planetary-computer": "planetary-computer/rustac__pc-collection-sentinel-2-l2a.json",
        "cdse": "cdse/eometadatatool__cdse-collection-sentinel-2-l2a.json",
    }[name]
    bboxes = np.array([i["bbox"] for i in items])
    days = sorted(i["properties"]["datetime"][:10] for i in items)
    query = build_query(
        start=days[0],
        end=days[-1],
        bbox=(*bboxes[:, :2].min(axis=0) - 0.01, *bboxes[:, 2:].max(axis=0) + 0.01),
    )
    caplog.set_level(logging.INFO, logger="scenestore.search")
    with rustac_api(tmp_path, load(collection), items) as url:
        page_size = 2 if len(items) < 20 else 25
        found = search_scenes(query, stac_url=url, profile=name, page_size=page_size)
    dropped = [r.getMessage() for r in caplog.records if "Dropped duplicate" in r.getMessage()]
    assert len(found) + len(dropped) == len(items) > page_size, "several pages, every item"
    if name == "planetary-computer":  # the recording holds one real duplicate
        assert dropped == [
            "Dropped duplicate S2B_MSIL2A_20240530T174909_R141_T13TDE_20240530T231838 of "
            "S2B_MSIL2A_20240530T174909_R141_T13TDE_20240531T000206 (same tile and sensing "
            "time; kept baseline 05.10, generated 2024-05-31T00:02:06.921951+00:00)"
        ]
    else:
        assert not dropped


# -- duplicates ---------------------------------------------------------------------------------


def sibling(
    item: dict, name: str, *, seq: int, baseline: str, generated: datetime, updated: str
) -> dict:
    """The same tile and sensing time as another product of the provider would list it."""
    twin = json.loads(json.dumps(item))
    props = twin["properties"]
    stamp = generated.strftime("%Y%m%dT%H%M%S")
    if name == "earth-search":  # a second product of the same day counts up the sequence
        twin["id"] = re.sub(r"_(\d)_L2A$", f"_{seq}_L2A", twin["id"])
    if name.startswith("earth-search"):
        if name == "earth-search-c1":  # (no recorded c1 duplicate: any other id will do)
            twin["id"] = twin["id"].replace("_L2A", f"_{seq}_L2A")
        props["s2:processing_baseline"] = baseline
        props["s2:generation_time"] = generated.isoformat().replace("+00:00", "Z")
    elif name == "planetary-computer":  # ids lack the baseline
        twin["id"] = re.sub(r"_\d{8}T\d{6}$", f"_{stamp}", twin["id"])
        props["s2:processing_baseline"] = baseline
        props["s2:generation_time"] = generated.isoformat().replace("+00:00", ".000000Z")
    else:  # CDSE: baseline and generation time in the id, processing:* properties
        twin["id"] = re.sub(r"_N\d{4}_", f"_N{baseline.replace('.', '')}_", twin["id"])
        twin["id"] = re.sub(r"_\d{8}T\d{6}$", f"_{stamp}", twin["id"])
        props["processing:version"] = baseline
        props["processing:datetime"] = generated.isoformat().replace("+00:00", ".000000Z")
        props["datetime"] = props["datetime"].replace(".024Z", ".024000Z")  # other format
    props["updated"] = updated
    return twin


@pytest.mark.parametrize("name", NAMES)
def test_duplicates_keep_the_newest_baseline_then_the_newest_generation(name, caplog):
    real = recorded_items(name)[0]
    base = processing_baseline(real)
    assert base is not None, "every provider's items name their baseline somewhere"
    t0 = datetime(2024, 6, 1, tzinfo=UTC)
    older_baseline = sibling(
        real,
        name,
        seq=1,
        baseline="02.14",
        generated=t0 + timedelta(days=900),
        updated="2030-01-01T00:00:00Z",
    )
    newer_baseline = sibling(
        real, name, seq=2, baseline="05.99", generated=t0, updated="2024-06-01T00:00:00Z"
    )
    newest_generation = sibling(
        real,
        name,
        seq=3,
        baseline="05.99",
        generated=t0 + timedelta(hours=1),
        updated="2024-01-01T00:00:00Z",
    )
    ids = {older_baseline["id"], newer_baseline["id"], newest_generation["id"], real["id"]}
    assert len(ids) == 4
    caplog.set_level(logging.INFO, logger="scenestore.search")
    for order in (
        [older_baseline, newer_baseline, newest_generation, real],
        [newest_generation, real, newer_baseline, older_baseline],
    ):
        caplog.clear()
        kept = select_items([pystac.Item.from_dict(i) for i in order], everything())
        assert [i.id for i in kept] == [newest_generation["id"]]
        dropped = {
            re.search(r"Dropped duplicate (\S+)", r.getMessage()).group(1) for r in caplog.records
        }
        assert dropped == ids - {newest_generation["id"]}


def test_real_planetary_computer_duplicates_keep_the_newest_generation():
    items = [pystac.Item.from_dict(i) for i in parquet_items(PC_100)]
    kept = {i.id for i in select_items(items, everything())}
    assert len(kept) == len(items) - 1
    assert "S2B_MSIL2A_20240530T174909_R141_T13TDE_20240531T000206" in kept
    assert "S2B_MSIL2A_20240530T174909_R141_T13TDE_20240530T231838" not in kept


# -- reflectance ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "key", "expected"),
    [
        (ES_L2A_3, "red", (1e-4, 0.0, "earthsearch:boa_offset_applied=true")),
        (ES_C1_10, "red", (1e-4, -0.1, "raster metadata")),
        (PC_TWO, "B04", (1e-4, -0.1, "processing baseline 05.11")),
        (
            "planetary-computer/odc-stac__pc-item__S2B_MSIL2A_20190629T212529_R043_T06VVN_"
            "20201006T080531_raster_ext.json",
            "B04",
            (1e-4, 0.0, "processing baseline 02.12"),
        ),
        (CDSE_ITEMS[0], "B04_10m", (1e-4, -0.1, "raster metadata")),
        (CDSE_ITEMS[1], "B04_10m", (1e-4, -0.1, "raster metadata")),
    ],
)
def test_reflectance_of_recorded_items(rel, key, expected):
    item = features(rel)[0]
    got = reflectance_of(item, item["assets"][key])
    assert (got.scale, got.offset) == pytest.approx(expected[:2])
    assert got.basis == expected[2]


def test_earth_search_flag_false_follows_the_baseline_not_raster_bands():
    item = json.loads(json.dumps(features(ES_L2A_3)[0]))
    item["properties"]["earthsearch:boa_offset_applied"] = False
    asset = item["assets"]["red"]
    assert asset["raster:bands"][0]["offset"] == -0.1
    assert reflectance_of(item, asset).offset == pytest.approx(-0.1)  # 05.09
    item["properties"]["s2:processing_baseline"] = "02.14"
    assert reflectance_of(item, asset).offset == 0.0, "no offset before 04.00, whatever -0.1 says"


baselines = st.tuples(st.integers(0, 9), st.integers(0, 99))
rasters = st.one_of(
    st.just({}),
    st.builds(
        lambda s, o: {"raster:bands": [{"scale": s, "offset": o}]},
        st.sampled_from([1e-4, 1e-3]),
        st.sampled_from([-0.1, 0.0, -0.05]),
    ),
    st.builds(
        lambda s, o: {"raster:scale": s, "raster:offset": o},
        st.sampled_from([1e-4, 1e-3]),
        st.sampled_from([-0.1, 0.0]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    baseline=st.one_of(st.none(), baselines),
    style=st.sampled_from(["es", "cdse", "pc-id"]),
    flag=st.sampled_from([None, True, False]),
    asset=rasters,
    day=st.dates(min_value=datetime(2015, 6, 1).date(), max_value=datetime(2030, 1, 1).date()),
)
def test_reflectance_rules(baseline, style, flag, asset, day):
    props: dict = {"datetime": f"{day.isoformat()}T10:00:00Z"}
    item_id = "S2A_MSIL2A_20240101T000000_R001_T33UUP_20240101T010101"
    if baseline is not None:
        text = f"{baseline[0]:02d}.{baseline[1]:02d}"
        if style == "es":
            props["s2:processing_baseline"] = text
        elif style == "cdse":
            props["processing:version"] = text
        else:
            item_id = item_id.replace("_R001_", f"_N{text.replace('.', '')}_R001_")
    if flag is not None:
        props["earthsearch:boa_offset_applied"] = flag
    item = {"id": item_id, "properties": props}
    got = reflectance_of(item, asset)
    assert processing_baseline(item) == baseline
    declared = (asset.get("raster:bands") or [asset])[0]
    declared_scale = declared.get("scale", declared.get("raster:scale"))
    assert got.scale == (declared_scale or 1e-4) > 0
    has_offset = baseline >= (4, 0) if baseline else day >= datetime(2022, 1, 25).date()
    if flag is True:
        assert got.offset == 0.0
    elif flag is False and baseline is not None or not declared:
        assert got.offset == pytest.approx(-1000 * got.scale if has_offset else 0.0)
    else:
        assert got.offset == declared.get("offset", declared.get("raster:offset"))


@given(major=st.integers(0, 9), minor=st.integers(0, 99))
def test_baseline_spellings_agree(major, minor):
    text = f"{major:02d}.{minor:02d}"
    assert parse_baseline(text) == parse_baseline(f"N{major:02d}{minor:02d}") == (major, minor)
    assert parse_baseline(f"{major}.{minor:02d}") == (major, minor)


def test_harmonize_needs_scale_and_offset_on_reflectance_bands():
    ds = xr.Dataset({"B04": (("y", "x"), np.ones((2, 2), np.uint16), {"nodata": 0})})
    with pytest.raises(InvalidRequestError, match="Band 'B04' has no 'scale'/'offset'"):
        harmonize(ds)
    scl = xr.Dataset({"SCL": (("y", "x"), np.full((2, 2), 4, np.uint8))})
    xr.testing.assert_identical(harmonize(scl), scl)


# -- pixels: recorded items on synthetic COGs, read through each provider's access ----------


PIXEL_ITEMS = {
    "earth-search": ES_L2A_3,
    "earth-search-c1": ES_C1_10,
    "planetary-computer": PC_TWO,
    "cdse": CDSE_ITEMS[0],
}
EXPECTED_OFFSET = {
    "earth-search": 0.0,
    "earth-search-c1": -0.1,
    "planetary-computer": -0.1,
    "cdse": -0.1,
}
S3_KEY_ID = "CDSETESTKEY0001XYZW"
S3_SECRET = "cdse/Secret+Value0123456789abcdef"


class LocalSigner:
    """Signs like Planetary Computer, offline: one cached SAS-like token until refreshed.

    Args:
        sigs: The ``sig`` of each token it will mint, in order.
        expired: How many of the first tokens are minted already expired.
    """

    def __init__(self, sigs: list[str], *, expired: int = 0) -> None:
        self.sigs, self.expired = list(sigs), expired
        self.minted: list[str] = []
        self._token: str | None = None

    def sign(self, href: str) -> str:
        if self._token is None:
            sig = self.sigs[len(self.minted)]
            stale = len(self.minted) < self.expired
            start = datetime.now(UTC) - timedelta(hours=2)
            end = start + (timedelta(hours=1) if stale else timedelta(hours=3))
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            self._token = f"st={start:{fmt}}&se={end:{fmt}}&sp=rl&sv=2021-06-08&sr=c&sig={sig}"
            self.minted.append(sig)
        return f"{href}?{self._token}"

    def refresh(self) -> None:
        self._token = None

    def signing(self) -> HrefSigning:
        return HrefSigning(sign=self.sign, refresh=self.refresh)


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    with Gate(tmp_path_factory.mktemp("assets") / "root", s3_key_id=S3_KEY_ID) as g:
        yield g


def served_item(name: str, gate: Gate, scratch: Path, **profile_changes):
    """A recorded item of the provider on synthetic COGs behind the gate, and its profile."""
    profile = dataclasses.replace(PROFILES[name], **profile_changes)
    if name == "cdse":
        profile = dataclasses.replace(profile, s3=S3Access(endpoint=gate.url))
    item = crop_item(features(PIXEL_ITEMS[name])[0])
    files = serve_bands(
        item, profile, root=gate.root, base_url=gate.url, scratch=scratch, seed=NAMES.index(name)
    )
    return pystac.Item.from_dict(item), profile, files


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.parametrize("name", NAMES)
def test_recorded_item_is_stored_on_its_real_grid(name, gate, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    signer = LocalSigner(["pc-sig-1", "pc-sig-2"])
    changes = {"signing": signer.signing()} if name == "planetary-computer" else {}
    item, profile, files = served_item(name, gate, tmp_path / "cogs", **changes)
    mark = gate.mark()
    manager = StacStoreManager(list(ALL_BANDS), tmp_path / "store", profile=profile)
    result = manager.ingest(item)
    ident = f"{profile.id_prefix}_{item.id}"
    assert result.identifier == ident and result.fetched == tuple(ALL_BANDS)
    requests = gate.requests(mark)
    assert requests and all(r["status"] == 200 for r in requests)
    if name == "planetary-computer":
        assert {r["sig"] for r in requests} == {"pc-sig-1"}, "every read signed, one token"
    elif name == "cdse":
        assert {r["key_id"] for r in requests} == {S3_KEY_ID}, "S3 credentials on every read"
        assert {r["path"].split("/")[0] for r in requests} == {"eodata"}

    ds = manager.open(item.id)
    recorded = item.to_dict(transform_hrefs=False)
    ulx, uly = origin(recorded, profile.asset_key("B04"))
    assert ds.odc.geobox.affine == Affine(10, 0, ulx, 0, -10, uly), "origin = the real tile's"
    assert ds.odc.crs.epsg == profile.epsg(recorded) and ds.sizes == {"y": 120, "x": 120}
    for band in ALL_BANDS:
        factor = BAND_SPECS[band].resolution // 10
        expected = np.repeat(np.repeat(read(files[band]), factor, 0), factor, 1)
        np.testing.assert_array_equal(ds[band].values, expected, err_msg=band)
        attrs = ds[band].attrs
        assert attrs["asset_key"] == profile.asset_key(band) and "?" not in attrs["source"]
        if band == "SCL":
            assert "scale" not in attrs and ds[band].dtype == np.uint8
        else:
            assert (attrs["scale"], attrs["offset"]) == pytest.approx((1e-4, EXPECTED_OFFSET[name]))

    refl = manager.open(item.id, harmonize=True)
    dn = ds["B04"].values
    assert refl["B04"].dtype == np.float32 and ds["B04"].dtype == np.uint16
    assert (dn == 0).any() and np.isnan(refl["B04"].values[dn == 0]).all(), "nodata -> NaN"
    np.testing.assert_allclose(
        refl["B04"].values[dn > 0], dn[dn > 0] * 1e-4 + EXPECTED_OFFSET[name], atol=1e-6
    )
    xr.testing.assert_identical(refl["SCL"], ds["SCL"])


def test_token_already_expired_when_signed_is_signed_again_before_any_read(gate, tmp_path):
    signer = LocalSigner(["stale-sig", "fresh-sig"], expired=1)
    item, profile, _ = served_item(
        "planetary-computer", gate, tmp_path / "cogs", signing=signer.signing()
    )
    mark = gate.mark()
    StacStoreManager(["B04", "SCL"], tmp_path / "store", profile=profile).download_and_store(item)
    assert signer.minted == ["stale-sig", "fresh-sig"]
    requests = gate.requests(mark)
    assert requests and {(r["sig"], r["status"]) for r in requests} == {("fresh-sig", 200)}


def test_token_refused_mid_run_is_signed_again_not_failed(gate, tmp_path, caplog):
    signer = LocalSigner(["revoked-sig", "second-sig"])
    gate.control("revoke", {"sig": "revoked-sig"})  # valid by its se=, refused by the server
    item, profile, files = served_item(
        "planetary-computer", gate, tmp_path / "cogs", signing=signer.signing()
    )
    mark = gate.mark()
    manager = StacStoreManager(["B04", "B8A"], tmp_path / "store", profile=profile)
    manager.download_and_store(item)
    requests = gate.requests(mark)
    assert {r["status"] for r in requests if r["sig"] == "revoked-sig"} == {403}
    assert {r["status"] for r in requests if r["sig"] == "second-sig"} == {200}
    assert signer.minted == ["revoked-sig", "second-sig"]
    np.testing.assert_array_equal(manager.open(item.id)["B04"].values, read(files["B04"]))
    assert "signing again with a fresh token" in caplog.text


def test_s3_options_for_cdse_are_gdal_config_without_credentials(tmp_path):
    cdse = PROFILES["cdse"].s3
    assert s3_options(cdse, {}) == {
        "AWS_S3_ENDPOINT": "eodata.dataspace.copernicus.eu",
        "AWS_HTTPS": "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    env = {"AWS_S3_ENDPOINT": "eodata.ams.dataspace.copernicus.eu", "AWS_SECRET_ACCESS_KEY": "x"}
    assert s3_options(cdse, env)["AWS_S3_ENDPOINT"] == "eodata.ams.dataspace.copernicus.eu"
    local = dataclasses.replace(cdse, endpoint="http://127.0.0.1:9000/", aws_profile="cdse")
    assert s3_options(local, env) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_PROFILE": "cdse",
    }
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert s3_credential_source(cdse, keys, home=tmp_path) == "environment"
    with pytest.raises(SourceError, match="No S3 credentials found; expected AWS_ACCESS_KEY_ID"):
        s3_credential_source(cdse, {}, home=tmp_path)
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[cdse]\n")
    assert s3_credential_source(local, keys, home=tmp_path) == "AWS profile 'cdse'"


def test_recorded_sas_token_is_read_and_redacted():
    body = cassette_body(
        "planetary-computer/stac-asset__cassette__pc-sas-token-and-signed-head.yaml", 0
    )
    signed = f"https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/x/B04.tif?{body['token']}"
    assert sas_expiry(signed) == datetime(2024, 5, 14, 19, 0, 49, tzinfo=UTC)
    sig = re.search(r"sig=([^&]+)", body["token"]).group(1)
    for text in (signed, json.dumps(body), f"GDAL: {signed!r} failed"):
        assert sig not in redact(text) and "sig=REDACTED" in redact(text)


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%+/=-_",
        min_size=12,
        max_size=60,
    )
)
def test_redact_hides_query_tokens_and_sigv4_parts(secret):
    url = f"https://acct.blob.core.windows.net/c/B04.tif?st=2024&se=2025&sp=rl&sig={secret}"
    auth = f"Authorization: AWS4-HMAC-SHA256 Credential={secret}/20240101/us/s3, Signature={secret}"
    for text in (url, auth, f"<AWSAccessKeyId>{secret}</AWSAccessKeyId>"):
        assert secret not in redact(text)


def test_redact_hides_the_values_of_secret_environment_variables(monkeypatch):
    """CDSE access keys have no recognisable shape: their values are matched instead."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "CDSEWRONGKEY98765432")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    text = redact(f"S3 said: key CDSEWRONGKEY98765432 unknown; secret was {S3_SECRET}")
    assert text == "S3 said: key <AWS_ACCESS_KEY_ID> unknown; secret was <AWS_SECRET_ACCESS_KEY>"


@pytest.mark.parametrize("name", ["planetary-computer", "cdse"])
def test_secrets_never_reach_logs_errors_or_artifacts(name, gate, tmp_path, monkeypatch, caplog):
    from scenestore.ingest import ingest_items

    wrong_key = "CDSEWRONGKEY98765432"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", wrong_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("CPL_DEBUG", "ON")  # GDAL's own debug output, through rasterio's logger
    sigs = [f"SeCrEtSiG-{n:04d}-abcdefghijklmnop" for n in range(4)]
    for sig in sigs:
        gate.control("revoke", {"sig": sig})
    signer = LocalSigner(sigs)
    changes = {"signing": signer.signing()} if name == "planetary-computer" else {}
    item, profile, _ = served_item(name, gate, tmp_path / "cogs", **changes)
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "store"
    manager = StacStoreManager(["B04", "SCL"], store, profile=profile)
    with pytest.raises(SourceError) as failure:
        manager.download_and_store(item)
    assert failure.value.status == 403
    if name == "planetary-computer":
        assert isinstance(failure.value, TransientSourceError), "retried once, then given up"
        assert signer.minted == sigs[:2]
    (result,) = ingest_items(manager, [item], retries=0)
    secrets = [*sigs, wrong_key, S3_SECRET]
    texts = {"error": str(failure.value), "logs": caplog.text, "result": result.error or ""}
    texts["artifacts"] = "".join(
        f.read_text(errors="replace") for f in store.rglob("*") if f.is_file()
    )
    assert result.error and caplog.records
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret[:6]}... leaked into {where}"
