"""Scene-id lists: the files of item ids a user keeps to ingest the same scenes again offline.

Two formats are read. A text file holds one id per line, a STAC item id
(``S2B_33UUP_20240601_0_L2A``) or a store identifier (``es-l2a_S2B_33UUP_20240601_0_L2A``);
``#`` starts a comment (a whole line or the rest of one) and blank lines are ignored. A JSON
file that is a STAC ItemCollection (a GeoJSON FeatureCollection of items, e.g. a saved search
result) gives the ids of its features, and one STAC item its own id. ``ingest --ids-file`` and
``prune --not-in`` read the same formats. ``scenestore search --ids-out`` writes the text format
with a ``#`` header naming the query (:func:`format_id_file`).

Entries are kept as written, each with where it came from (``ids.txt:3``), so a message about
one names its line. Store identifiers are mapped back to item ids by stripping the profile's
prefix (:func:`item_ids`), the inverse of :meth:`scenestore.stac.StacStoreManager.identifier`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scenestore.errors import InvalidIdentifierError, InvalidRequestError
from scenestore.fsafety import atomic_write
from scenestore.ids import validate_identifier
from scenestore.profiles import PROFILES, Profile, get_profile


@dataclass(frozen=True)
class IdEntry:
    """One id of a list, as written.

    Attributes:
        value: The item id or store identifier.
        source: Where it was read, e.g. ``"ids.txt:3"``, ``"items.json: feature 2"`` or
            ``"--ids"``.
    """

    value: str
    source: str


def parse_id_text(text: str, *, source: str) -> list[IdEntry]:
    """Parse the text format: one id per line, ``#`` comments and blank lines allowed (pure).

    Args:
        text: The file's content.
        source: The file name, used in entries' sources and messages (``source:line``).

    Returns:
        Every id in order, duplicates included (see :func:`unique`).

    Raises:
        InvalidRequestError: If a line holds more than one word or an unsafe id; the message
            names ``source:line``.
    """
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        # Ids never contain '#' or blanks (validate_identifier), so cutting there is safe.
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}:{number}"
        if len(words) > 1:
            raise InvalidRequestError(
                f"{where}: {line.strip()[:80]!r} holds {len(words)} words; expected one item id "
                "or store identifier per line (comments start with '#')."
            )
        entries.append(IdEntry(_checked(words[0], where), where))
    return entries


def parse_id_values(values: Iterable[str], *, source: str = "--ids") -> list[IdEntry]:
    """Parse ids given as comma-separated text, e.g. ``--ids A,B --ids C`` (pure).

    Raises:
        InvalidRequestError: If an id is unsafe; the message names ``source``.
    """
    words = [word.strip() for value in values for word in value.split(",")]
    return [IdEntry(_checked(word, source), source) for word in words if word]


def parse_item_collection(text: str, *, source: str) -> list[IdEntry]:
    """The ids of a STAC ItemCollection (GeoJSON FeatureCollection) or one item's (pure).

    Raises:
        InvalidRequestError: If the text is not JSON, not a FeatureCollection, or a feature
            has no usable ``id``; the message names the file and the feature.
    """
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise InvalidRequestError(
            f"{source} is not valid JSON ({err}); expected a STAC ItemCollection or a text "
            "file with one item id per line."
        ) from err
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        doc = {"type": "FeatureCollection", "features": [doc]}  # one STAC item file
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise InvalidRequestError(
            f"{source} is a JSON {kind!r}, not an ItemCollection; expected a GeoJSON "
            "FeatureCollection of STAC items, one STAC item, or a text file with one id per "
            "line."
        )
    features = doc.get("features")
    if not isinstance(features, list):
        raise InvalidRequestError(
            f"{source} has no 'features' list; expected a STAC ItemCollection."
        )
    entries = []
    for number, feature in enumerate(features, start=1):
        where = f"{source}: feature {number}"
        item_id = feature.get("id") if isinstance(feature, dict) else None
        if not isinstance(item_id, str):
            raise InvalidRequestError(
                f"{where} has no string 'id' (got {item_id!r}); expected STAC items with ids."
            )
        entries.append(IdEntry(_checked(item_id, where), where))
    return entries


def read_id_file(path: str | Path) -> list[IdEntry]:
    """Read an id list: the text format, or a STAC ItemCollection when it is JSON.

    A file whose first non-blank character is ``{`` is read as JSON.

    Args:
        path: The file.

    Returns:
        Every id in file order, duplicates included (see :func:`unique`).

    Raises:
        InvalidRequestError: If the file cannot be read or a line or feature is bad; the
            message names the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidRequestError(
            f"Cannot read id file {str(path)!r}: {err.strerror}; expected a readable text file "
            "with one item id per line, or a STAC ItemCollection JSON file."
        ) from err
    except UnicodeDecodeError as err:
        raise InvalidRequestError(
            f"Id file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
            "expected one item id per line, or a STAC ItemCollection JSON file."
        ) from err
    if text.lstrip().startswith("{"):
        return parse_item_collection(text, source=str(path))
    return parse_id_text(text, source=str(path))


def unique(entries: Iterable[IdEntry]) -> list[IdEntry]:
    """Drop repeated values, keeping the first of each and the order (pure)."""
    seen: set[str] = set()
    kept = []
    for entry in entries:
        if entry.value not in seen:
            seen.add(entry.value)
            kept.append(entry)
    return kept


def item_ids(entries: Iterable[IdEntry], profile: str | Profile) -> dict[str, IdEntry]:
    """Map each entry to its STAC item id, dropping entries that name the same item (pure).

    A store identifier is ``<profile id_prefix>_<item id>``; the prefix is stripped. An item id
    and the identifier of the same scene count as one, the first one written wins.

    Args:
        entries: Ids as read.
        profile: The provider profile the ids belong to.

    Returns:
        ``{item id: first entry naming it}`` in order.

    Raises:
        InvalidRequestError: If an entry is the identifier of another profile's scene (the
            message names it and the profile to use instead).
    """
    prof = get_profile(profile)
    mapped: dict[str, IdEntry] = {}
    for entry in entries:
        item_id = to_item_id(entry, prof)
        mapped.setdefault(item_id, entry)
    return mapped


def to_item_id(entry: IdEntry, profile: Profile) -> str:
    """The STAC item id of one entry under ``profile`` (see :func:`item_ids`)."""
    own = f"{profile.id_prefix}_"
    if entry.value.startswith(own):
        return entry.value[len(own) :]
    for other in PROFILES.values():
        if other.id_prefix != profile.id_prefix and entry.value.startswith(f"{other.id_prefix}_"):
            raise InvalidRequestError(
                f"{entry.source}: {entry.value!r} is a store identifier of profile "
                f"{other.name!r}, not {profile.name!r}; expected ids of {profile.name!r} "
                f"(or choose profile {other.name!r})."
            )
    return entry.value


def format_id_file(ids: Sequence[str], *, header: Sequence[str] = ()) -> str:
    """Render ids in the text format, each header line as a ``#`` comment (pure).

    ``parse_id_text(format_id_file(ids, header=h))`` gives back ``ids`` for any header.

    Raises:
        InvalidRequestError: If an id is unsafe (it could not be read back).
    """
    lines: list[str] = []
    for text in header:
        lines.extend(f"# {part}".rstrip() for part in str(text).splitlines() or [""])
    lines.extend(_checked(value, "id list") for value in ids)
    return "\n".join(lines) + "\n"


def write_id_file(path: str | Path, ids: Sequence[str], *, header: Sequence[str] = ()) -> None:
    """Write an id list atomically (readers never see half a file).

    Raises:
        InvalidRequestError: If the file cannot be written or an id is unsafe.
    """
    path = Path(path)
    data = format_id_file(ids, header=header).encode()
    try:
        atomic_write(path, data, mode=0o644)
    except OSError as err:
        raise InvalidRequestError(
            f"Cannot write id file {str(path)!r}: {err.strerror}; expected a writable path in "
            "an existing directory."
        ) from err


def _checked(value: str, where: str) -> str:
    try:
        return validate_identifier(value)
    except InvalidIdentifierError as err:
        raise InvalidRequestError(f"{where}: {err}") from err


__all__ = [
    "IdEntry",
    "format_id_file",
    "item_ids",
    "parse_id_text",
    "parse_id_values",
    "parse_item_collection",
    "read_id_file",
    "to_item_id",
    "unique",
    "write_id_file",
]
