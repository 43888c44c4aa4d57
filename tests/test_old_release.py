"""Stores written by release 0.1.0 open unchanged, verify clean and take new bands.

``tests/data/release-0.1.0`` holds one scene as release 0.1.0 wrote it, to a local directory
and to S3 (its commit records in that release's formats: ``blake2b:`` locally, ``blake2b-tree:``
on S3); ``tests/data/make_release_store.py`` made it. Each test works on a copy (a temporary
directory, or a fresh prefix of the test's S3 server) and uses only public interfaces: the
``StoreManager`` API and the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from release_scene import (
    ADDED_BAND,
    BANDS,
    CHUNK,
    IDENTIFIER,
    ITEM_ID,
    NORTH,
    SIZE,
    WEST,
    expected_pixels,
    release_dataset,
)
from scenestore import CoordinateMismatchError, IncompleteSceneError, StacStoreManager
from scenestore.cli import app

FIXTURE = Path(__file__).parent / "data" / "release-0.1.0"


def fixture_files(backend: str) -> dict[str, bytes]:
    """Every file of the fixture's ``backend`` store, by its path inside the store."""
    root = FIXTURE / backend
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class Backend:
    """A writable copy of one fixture store, with a way to read and damage its files."""

    def __init__(
        self, kind: str, store: str | Path, client=None, bucket: str = "", prefix: str = ""
    ) -> None:
        self.kind, self.store = kind, store
        self._client, self._bucket, self._prefix = client, bucket, prefix

    def files(self) -> dict[str, bytes]:
        """Every file or object in the store (lock files left out), by its path in the store."""
        if self._client is None:
            root = Path(self.store)
            found = {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in root.rglob("*")
                if p.is_file()
            }
        else:
            found = {}
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=f"{self._prefix}/"
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    body = self._client.get_object(Bucket=self._bucket, Key=obj["Key"])["Body"]
                    found[obj["Key"][len(self._prefix) + 1 :]] = body.read()
        return {k: v for k, v in found.items() if not k.startswith(".locks/")}

    def overwrite(self, key: str, data: bytes) -> None:
        """Replace one file of the store, as damage from outside scenestore would."""
        if self._client is None:
            (Path(self.store) / key).write_bytes(data)
        else:
            self._client.put_object(Bucket=self._bucket, Key=f"{self._prefix}/{key}", Body=data)


@pytest.fixture(params=["local", "s3"])
def old_store(request, tmp_path) -> Backend:
    """A copy of the release-0.1.0 store: a local directory, or uploaded to a fresh S3 prefix."""
    if request.param == "local":
        store = tmp_path / "store"
        shutil.copytree(FIXTURE / "local", store)
        return Backend("local", store)
    import boto3

    server = request.getfixturevalue("s3_server")
    url = request.getfixturevalue("s3_store")
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.credentials["AWS_SECRET_ACCESS_KEY"],
    )
    for key, data in fixture_files("s3").items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)
    return Backend("s3", url, client, bucket, prefix)


def cli(*args: str):
    """Run the command line in-process; a crash (not a clean exit) fails the test."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: crashed with {result.exception!r}"
    )
    assert "Traceback" not in result.output
    return result


def band_files(files: dict[str, bytes], bands: list[str]) -> dict[str, bytes]:
    """The files that make up the given bands: their arrays and their commit records."""
    scene = f"{IDENTIFIER}.zarr/"
    keep = tuple(f"{scene}{b}/" for b in bands) + tuple(f"{scene}_commits/{b}.json" for b in bands)
    return {k: v for k, v in files.items() if k.startswith(keep)}


def assert_release_pixels(ds, bands: list[str]) -> None:
    """Check each band's pixels and dtype against what the fixture's maker wrote."""
    for band in bands:
        np.testing.assert_array_equal(ds[band].values, expected_pixels(band), err_msg=band)
        assert ds[band].dtype == expected_pixels(band).dtype, band


def test_the_fixture_is_what_release_0_1_0_wrote():
    # The fixture must hold each format as it was written, or the tests below test nothing old.
    for backend, prefix in [("local", "blake2b:"), ("s3", "blake2b-tree:")]:
        files = fixture_files(backend)
        assert not any(k.startswith(".locks") for k in files)
        for band in BANDS:
            record = json.loads(files[f"{IDENTIFIER}.zarr/_commits/{band}.json"])
            assert record["checksum"].startswith(prefix), (backend, record)
            assert record["chunk_count"] == 3, "the nodata chunk has no file"


def test_an_old_store_opens_with_the_pixels_and_attributes_it_was_written_with(old_store):
    before = old_store.files()
    manager = StacStoreManager(BANDS, old_store.store)
    assert manager.exists(IDENTIFIER)
    assert manager.missing_bands(IDENTIFIER) == []
    assert manager.complete(IDENTIFIER)

    lazy = manager.open(IDENTIFIER)
    assert lazy["B02"].chunks is not None, "open stays lazy"
    assert_release_pixels(lazy, BANDS)
    ds = manager.open(IDENTIFIER, eager=True, verify=True)
    assert_release_pixels(ds, BANDS)
    np.testing.assert_allclose(ds["x"].values, WEST + 5 + 10 * np.arange(SIZE))
    np.testing.assert_allclose(ds["y"].values, NORTH - 5 - 10 * np.arange(SIZE))
    assert "spatial_ref" in ds.coords
    assert ds.attrs["stac_id"] == ITEM_ID and ds.attrs["eo:cloud_cover"] == 12.5
    assert ds["B04"].attrs["scale"] == 0.0001 and ds["B04"].attrs["offset"] == -0.1

    reflectance = manager.open(IDENTIFIER, eager=True, harmonize=True)
    dn = expected_pixels("B04")
    want = np.where(dn == 0, np.nan, dn * 0.0001 - 0.1).astype("float32")
    np.testing.assert_allclose(reflectance["B04"].values, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(reflectance["SCL"].values, expected_pixels("SCL"))

    assert old_store.files() == before, "opening and verifying must not write to the store"


def test_a_band_the_old_store_lacks_is_missing_not_invented(old_store):
    manager = StacStoreManager([*BANDS, ADDED_BAND], old_store.store)
    assert manager.missing_bands(IDENTIFIER) == [ADDED_BAND]
    assert not manager.complete(IDENTIFIER)
    with pytest.raises(IncompleteSceneError, match=ADDED_BAND):
        manager.open(IDENTIFIER)


def test_the_cli_verifies_and_lists_an_old_store(old_store):
    before = old_store.files()
    result = cli("verify", "--store", str(old_store.store))
    assert result.exit_code == 0, result.output
    assert f"{len(BANDS)} committed bands checked" in result.output

    listed = cli("ls", "--store", str(old_store.store), "--json")
    assert listed.exit_code == 0, listed.output
    (record,) = json.loads(listed.stdout)
    assert record["identifier"] == IDENTIFIER
    assert record["bands"] == sorted(BANDS)
    assert record["damaged"] == []
    assert record["source_item"] == ITEM_ID
    assert record["tile"] == "33UVP"
    assert record["cloud_cover"] == 12.5
    assert record["datetime"].startswith("2023-06-15")
    after = old_store.files()
    # ls builds the store index the old release did not keep (derived data, beside the
    # scenes); nothing of the scenes changes.
    assert {k: v for k, v in after.items() if not k.startswith(".index/")} == before, (
        "verify and ls must not change the scenes"
    )
    assert ".index/scenes.gpkg" in after


def test_verify_still_finds_damage_in_an_old_store(old_store):
    # A checker that ignored the old record formats would pass the clean store too.
    key = f"{IDENTIFIER}.zarr/B03/c/1/1"
    data = bytearray(old_store.files()[key])
    data[-1] ^= 0xFF
    old_store.overwrite(key, bytes(data))
    result = cli("verify", "--store", str(old_store.store))
    assert result.exit_code == 1, result.output
    assert "B03" in result.output
    assert "B02" not in result.output.replace(IDENTIFIER, "")


def test_a_new_band_extends_an_old_store_and_leaves_the_old_bands_alone(old_store):
    before = old_store.files()
    manager = StacStoreManager([*BANDS, ADDED_BAND], old_store.store, chunk_size=CHUNK)
    manager.save_to_store(release_dataset([ADDED_BAND]), IDENTIFIER)

    assert manager.missing_bands(IDENTIFIER) == []
    ds = manager.open(IDENTIFIER, eager=True, verify=True)
    assert_release_pixels(ds, [*BANDS, ADDED_BAND])
    after = old_store.files()
    assert len(band_files(before, BANDS)) == 5 * len(BANDS), "3 chunks, zarr.json, record"
    assert band_files(after, BANDS) == band_files(before, BANDS), "old bands were rewritten"
    assert band_files(after, [ADDED_BAND]), "the new band has no files"

    result = cli("verify", "--store", str(old_store.store))
    assert result.exit_code == 0, result.output
    assert f"{len(BANDS) + 1} committed bands checked" in result.output
    (record,) = json.loads(cli("ls", "--store", str(old_store.store), "--json").stdout)
    assert record["bands"] == sorted([*BANDS, ADDED_BAND]) and record["damaged"] == []


def test_a_band_on_another_grid_is_refused_and_the_old_store_is_unchanged(old_store):
    before = old_store.files()
    shifted = release_dataset([ADDED_BAND])
    shifted = shifted.assign_coords(x=shifted["x"] + 10.0)
    manager = StacStoreManager([*BANDS, ADDED_BAND], old_store.store, chunk_size=CHUNK)
    with pytest.raises(CoordinateMismatchError, match=IDENTIFIER):
        manager.save_to_store(shifted, IDENTIFIER)
    assert old_store.files() == before
    assert manager.missing_bands(IDENTIFIER) == [ADDED_BAND]
