"""The scenestore error hierarchy: one module, each class also a matching builtin.

Messages name what is wrong, the bad value and what would be right, so a user (or the CLI,
which prints ``str(error)`` as one line) can act without reading a traceback.
"""

from __future__ import annotations


class ScenestoreError(Exception):
    """Root of every error scenestore raises on purpose."""


class InvalidRequestError(ScenestoreError, ValueError):
    """A user-supplied value is malformed or out of range (band, identifier, bbox, date...)."""


class InvalidIdentifierError(InvalidRequestError):
    """A scene identifier cannot safely become a path name inside the store."""


class StoreRequiredError(ScenestoreError, RuntimeError):
    """An operation that needs a store was called on a manager created with ``store=None``."""


class StoreError(ScenestoreError, OSError):
    """The store location is unusable (a file, read-only, unreachable)."""


class LeaseHeldError(StoreError):
    """Another writer holds an object-store scene's lease lock for longer than the wait."""


class SceneNotFoundError(ScenestoreError, FileNotFoundError):
    """The scene is not in the store (offline open) or not at the source."""


class IncompleteSceneError(ScenestoreError, LookupError):
    """The scene is stored but lacks bands that were asked for."""


class SceneBusyError(ScenestoreError, BlockingIOError):
    """Another process holds the scene's lock (an ingest is writing it)."""


class CoordinateMismatchError(ScenestoreError, ValueError):
    """New bands do not lie on the grid of the scene already stored."""


class SourceError(ScenestoreError, IOError):
    """The source (STAC API or asset server) answered with something unusable.

    Attributes:
        status: The HTTP status code, when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientSourceError(SourceError):
    """A source failure worth retrying: HTTP 5xx or 429, a timeout, a reset connection."""


class ItemError(SourceError):
    """A STAC item lacks what scenestore needs (an asset for a band, a UTM CRS...)."""


__all__ = [
    "CoordinateMismatchError",
    "IncompleteSceneError",
    "InvalidIdentifierError",
    "InvalidRequestError",
    "ItemError",
    "LeaseHeldError",
    "SceneBusyError",
    "SceneNotFoundError",
    "ScenestoreError",
    "SourceError",
    "StoreError",
    "StoreRequiredError",
    "TransientSourceError",
]
