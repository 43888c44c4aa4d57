"""Scene identifiers: the rules that make an identifier safe to use as a path name (pure)."""

from __future__ import annotations

import re

from scenestore.errors import InvalidIdentifierError

#: Longest identifier accepted; keeps ``<identifier>.zarr`` well under common NAME_MAX (255).
MAX_IDENTIFIER_LENGTH = 200

# A whitelist rather than a blacklist: no separators, no leading dot (so no "." or ".."),
# no control characters, no spaces; everything a STAC item id realistically uses.
_IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]*")


def validate_identifier(identifier: object) -> str:
    """Check that an identifier can become ``<store>/<identifier>.zarr`` without escaping the store.

    Args:
        identifier: The candidate identifier.

    Returns:
        The identifier, unchanged.

    Raises:
        InvalidIdentifierError: If it is not a string, is empty, too long, contains a path
            separator, ``..``, a control character or anything outside ``[A-Za-z0-9._+-]``, or
            does not start with a letter or digit.
    """
    if not isinstance(identifier, str):
        raise InvalidIdentifierError(
            f"Scene identifier {identifier!r} is a {type(identifier).__name__}; expected a string."
        )
    expected = (
        "expected 1 to 200 characters from A-Z a-z 0-9 . _ + -, starting with a letter or digit, "
        "without '/', '\\' or '..'"
    )
    if not identifier:
        raise InvalidIdentifierError(f"Scene identifier {identifier!r} is empty; {expected}.")
    if len(identifier) > MAX_IDENTIFIER_LENGTH:
        raise InvalidIdentifierError(
            f"Scene identifier {identifier[:40]!r}... is {len(identifier)} characters long; "
            f"{expected}."
        )
    if ".." in identifier or not _IDENTIFIER_RE.fullmatch(identifier):
        raise InvalidIdentifierError(f"Scene identifier {identifier!r} is not safe; {expected}.")
    return identifier
