"""Scene-id lists: the file format, fetching by ids in pages, and the CLI end to end."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scenestore.errors import InvalidRequestError
from scenestore.idlist import (
    IdEntry,
    format_id_file,
    item_ids,
    parse_id_text,
    parse_id_values,
    read_id_file,
    unique,
    write_id_file,
)
from scenestore.search import fetch_items
from scenestore.stac import StacStoreManager
from test_cli import run

#: An id no world has (a tile and a day the world never generates).
MISSING = "S2A_33UUP_20990101_0_L2A"


def values(entries: list[IdEntry]) -> list[str]:
    return [e.value for e in entries]


# -- the format (pure) ------------------------------------------------------------------------


def test_comments_blank_lines_and_sources():
    text = "# made by hand\n\nS2A_39QTA_20240601_0_L2A\n  es-l2a_S2B_39QUA_20240604_0_L2A  # ok\n"
    entries = parse_id_text(text, source="ids.txt")
    assert values(entries) == ["S2A_39QTA_20240601_0_L2A", "es-l2a_S2B_39QUA_20240604_0_L2A"]
    assert [e.source for e in entries] == ["ids.txt:3", "ids.txt:4"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("A_1\nA_2 A_3\n", r"ids\.txt:2: 'A_2 A_3' holds 2 words"),
        ("A_1\n\n../etc/passwd\n", r"ids\.txt:3: Scene identifier '\.\./etc/passwd' is not safe"),
        ("A,B\n", r"ids\.txt:1: Scene identifier 'A,B' is not safe"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(text, match):
    with pytest.raises(InvalidRequestError, match=match):
        parse_id_text(text, source="ids.txt")


def test_duplicates_are_dropped_keeping_the_first_and_the_order():
    entries = parse_id_values(["B_1,A_1", "B_1", "C_1,A_1"])
    assert values(unique(entries)) == ["B_1", "A_1", "C_1"]


def test_identifiers_map_to_item_ids_and_meet_their_item_id():
    entries = unique(parse_id_values(["es-l2a_S2A_X_1,S2A_X_1,S2B_Y_2"]))
    mapped = item_ids(entries, "earth-search")
    assert list(mapped) == ["S2A_X_1", "S2B_Y_2"]
    assert mapped["S2A_X_1"].value == "es-l2a_S2A_X_1"  # the first written wins
    with pytest.raises(InvalidRequestError, match=r"--ids: 'cdse-l2a_S2A_X_1' is a store.*'cdse'"):
        item_ids(parse_id_values(["cdse-l2a_S2A_X_1"]), "earth-search")


def test_an_item_collection_file_gives_its_ids(tmp_path):
    path = tmp_path / "found.json"
    features = [{"type": "Feature", "id": i, "properties": {}} for i in ("S2A_1", "S2B_2")]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert values(read_id_file(path)) == ["S2A_1", "S2B_2"]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"id": 3}]}))
    with pytest.raises(InvalidRequestError, match=r"found\.json: feature 1 has no string 'id'"):
        read_id_file(path)
    path.write_text(json.dumps({"type": "Feature", "id": "x"}))  # one STAC item file
    assert values(read_id_file(path)) == ["x"]
    path.write_text(json.dumps({"type": "Polygon"}))
    with pytest.raises(InvalidRequestError, match=r"JSON 'Polygon', not an ItemCollection"):
        read_id_file(path)


def test_an_unreadable_file_is_one_clear_error(tmp_path):
    with pytest.raises(InvalidRequestError, match=r"Cannot read id file .*nothere.txt"):
        read_id_file(tmp_path / "nothere.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidRequestError, match=r"is not UTF-8 text"):
        read_id_file(tmp_path / "bin.txt")


# Ids as validate_identifier accepts them: no '..', 1-200 characters.
safe_ids = st.from_regex(re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,60}"), fullmatch=True).filter(
    lambda s: ".." not in s
)


@given(ids=st.lists(safe_ids, max_size=30), header=st.lists(st.text(max_size=40), max_size=4))
def test_ids_out_then_ids_file_round_trip(ids, header):
    """What `search --ids-out` writes, `ingest --ids-file` reads back: same ids, same order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ids.txt"
        write_id_file(path, ids, header=header)
        back = read_id_file(path)
    assert values(back) == ids
    assert values(unique(back)) == list(dict.fromkeys(ids))
    assert values(parse_id_text(format_id_file(ids, header=header), source="x")) == ids


# -- fetching by ids against the world's STAC API --------------------------------------------


def searches(world) -> int:
    """Search requests the world's STAC API answered since the last reset."""
    return sum(r.path == "search" for r in world.stac_http.requests())


@pytest.mark.parametrize(("chunk", "requests"), [(100, 1), (2, 3), (1, 5)])
def test_fetch_by_ids_asks_in_chunks_and_names_the_missing(world, chunk, requests):
    ids = [i.id for i in world.items] + [MISSING, world.items[0].id]
    world.stac_http.reset_stats()
    fetched = fetch_items(ids, stac_url=world.stac_url, chunk_size=chunk)
    assert [i.id for i in fetched.items] == [i.id for i in world.items]
    assert fetched.missing == [MISSING]
    assert searches(world) == requests  # 5 distinct ids: ceil(5 / chunk) search requests


# -- the command line end to end --------------------------------------------------------------


def stored_now(store: Path) -> set[str]:
    return {p.name.removesuffix(".zarr") for p in store.glob("*.zarr")}


def test_ingest_ids_file_stores_the_found_names_the_missing(world, tmp_path):
    first, second = world.items[0], world.items[1]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(
        f"# two scenes, one twice (as identifier), one missing\n{first.id}\n"
        f"{MISSING}\n\nes-l2a_{first.id}\n"
    )
    store = tmp_path / "store"
    world.stac_http.reset_stats()
    proc = run(
        "ingest", "--store", str(store), "--stac-url", world.stac_url, "--bands", "B04",
        "--ids-file", str(ids_file), "--ids", second.id,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"not found: {MISSING} ({ids_file}:3)" in " ".join(proc.stderr.split())
    assert proc.stderr.count("not found:") == 1
    assert searches(world) == 1, "3 distinct ids are one search request, not one per id"
    mgr = StacStoreManager(["B04"], store, stac_url=world.stac_url)
    assert stored_now(store) == {mgr.identifier(first), mgr.identifier(second)}
    assert "2 scenes" in proc.stdout

    # Ids and a search together: the scenes of both, each once (items 0 and 3 share a tile).
    w, s, e, n = first.bbox
    again = run(
        "ingest", "--store", str(store), "--stac-url", world.stac_url, "--bands", "B04",
        "--ids", f"{first.id},{second.id}", "--bbox", f"{w},{s},{e},{n}",
        "--start", "2024-06-01", "--end", "2024-06-30",
    )
    assert again.returncode == 0, again.stderr
    assert "3 scenes" in again.stdout
    assert stored_now(store) == {mgr.identifier(i) for i in (first, second, world.items[3])}


def test_search_ids_out_feeds_ingest_ids_file(world, tmp_path):
    ids_file = tmp_path / "found.txt"
    w, s, e, n = world.items[0].bbox
    proc = run(
        "search", "--stac-url", world.stac_url, "--bbox", f"{w},{s},{e},{n}",
        "--start", "2024-06-01", "--end", "2024-06-30", "--ids-out", str(ids_file),
        check=True,
    )
    text = ids_file.read_text()
    assert text.startswith(f"# scenestore search --start 2024-06-01 --end 2024-06-30 --bbox {w},")
    assert "# query: {" in text
    found = [line for line in text.splitlines() if not line.startswith("#")]
    assert found and all(i in proc.stdout for i in found)
    assert values(read_id_file(ids_file)) == found

    store = tmp_path / "store"
    ingest = run(
        "ingest", "--store", str(store), "--stac-url", world.stac_url, "--bands", "B04",
        "--ids-file", str(ids_file), check=True,
    )
    assert f"{len(found)} scenes" in ingest.stdout
    assert len(list(store.glob("*.zarr"))) == len(found)


def test_ids_with_item_files_is_a_user_error(world, tmp_path):
    proc = run("ingest", "--store", str(tmp_path / "s"), "--ids", "A_1", "--item", "x.json")
    assert proc.returncode == 2
    assert "either --item files or ids" in proc.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("A_1\nA_2 A_3\n")
    proc = run("ingest", "--store", str(tmp_path / "s"), "--ids-file", str(bad))
    assert proc.returncode == 2 and f"{bad}:2" in proc.stderr
    assert not (tmp_path / "s").exists(), "a bad id list must not create the store"
