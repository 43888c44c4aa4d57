"""The scenestore error hierarchy: one module, each class also a matching builtin.

Messages name what is wrong, the bad value and what would be right, so a user (or the CLI,
which prints ``str(error)`` as one line) can act without reading a traceback.
"""

from __future__ import annotations

import errno
import os


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


class UnsafePathError(StoreError):
    """A path inside the store is a symlink or resolves outside the store; it is never followed."""


class StoreIOError(StoreError):
    """A local read or write failed (disk full, permission, I/O error).

    Not the source's fault, so never retried as a source failure.
    """


class DamagedSceneError(StoreError):
    """Stored data or metadata fails its checks (checksum, commit record, zarr.json).

    ``scenestore verify --repair`` withdraws what is damaged so a rerun fetches it again.
    """


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


class SourceMismatchError(SourceError):
    """An asset's bytes disagree with the item's metadata (grid, transform, CRS, dtype, no data)."""


class TransientSourceError(SourceError):
    """A source failure worth retrying: HTTP 5xx or 429, a timeout, a reset connection."""


class ItemError(SourceError):
    """A STAC item lacks what scenestore needs (an asset for a band, a UTM CRS...)."""


#: errno values that mean the local disk failed us, never the source: disk full, file too
#: large, quota, permission, read-only filesystem, I/O error.
LOCAL_IO_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
)


def store_io_error(err: BaseException, where: object = None) -> StoreIOError | None:
    """The :class:`StoreIOError` for a local I/O failure (ENOSPC, EACCES, EROFS, EIO...), else None.

    A GDAL/HTTP failure carries no such errno, so it stays a source error.

    Args:
        err: The failure.
        where: The path written, named when the error carries no file name.
    """
    if isinstance(err, StoreIOError):
        return err
    if not isinstance(err, OSError) or err.errno not in LOCAL_IO_ERRNOS:
        return None
    if err.filename is not None:
        where = err.filename
    where = "the store" if where is None else where
    return StoreIOError(
        f"Cannot write {str(where)!r}: {err.strerror or os.strerror(err.errno)} "
        f"({errno.errorcode.get(err.errno, err.errno)}); expected a writable store with free "
        "space (free some space or fix its permissions, then run again)."
    )


__all__ = [
    "store_io_error",
    "CoordinateMismatchError",
    "DamagedSceneError",
    "IncompleteSceneError",
    "InvalidIdentifierError",
    "InvalidRequestError",
    "ItemError",
    "LeaseHeldError",
    "SceneBusyError",
    "SceneNotFoundError",
    "ScenestoreError",
    "SourceError",
    "SourceMismatchError",
    "StoreError",
    "StoreIOError",
    "StoreRequiredError",
    "TransientSourceError",
    "UnsafePathError",
]
