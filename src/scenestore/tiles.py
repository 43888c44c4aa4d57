"""MGRS tile ids: normalising them and reading them from an item's properties (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from scenestore.errors import InvalidRequestError

_TILE_RE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})$")


def normalize_tile(tile: str) -> str:
    """Return an MGRS tile id as ``33UUP`` (zone without leading zero, upper case).

    Raises:
        InvalidRequestError: If the text is not an MGRS 100 km tile id.
    """
    m = _TILE_RE.match(str(tile).strip().upper())
    if not m or not 1 <= int(m.group(1)) <= 60:
        raise InvalidRequestError(
            f"Invalid MGRS tile {tile!r}; expected a zone 1-60, a latitude band and two letters, "
            "e.g. '33UUP'."
        )
    return f"{int(m.group(1))}{m.group(2)}{m.group(3)}"


def tile_of(item: Mapping[str, Any]) -> str | None:
    """Return the MGRS tile of an item from whichever property the provider uses."""
    props = item.get("properties", {})
    code = props.get("grid:code")
    if isinstance(code, str) and code.startswith("MGRS-"):
        return normalize_tile(code[5:])
    if props.get("s2:mgrs_tile"):
        return normalize_tile(props["s2:mgrs_tile"])
    if props.get("mgrs:utm_zone") and props.get("mgrs:latitude_band"):
        zone, band = props["mgrs:utm_zone"], props["mgrs:latitude_band"]
        return normalize_tile(f"{zone}{band}{props.get('mgrs:grid_square', '')}")
    m = re.search(r"_T?(\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z]{2})_", str(item.get("id", "")))
    return normalize_tile(m.group(1)) if m else None


__all__ = ["normalize_tile", "tile_of"]
