"""A store in a local directory: fsync'd write-then-rename, link() for put-if-absent, file locks.

A store directory is often shared with cron jobs and other users, so no key is ever followed
out of it through a symlink (:mod:`scenestore.fsafety`): every operation, and every chunk zarr
reads or writes (:class:`GuardedLocalStore`), checks its path first, and removals delete real
directories inside the store only. Renaming a directory is atomic here (``supports_rename``):
a replaced band is promoted, and a removed scene leaves every listing, in one step.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from scenestore.errors import LeaseHeldError, StoreError, UnsafePathError, store_io_error
from scenestore.fsafety import (
    UMASK,
    atomic_write,
    check_nofollow,
    inside_store,
    mkdir_inside,
    read_nofollow,
    remove_tree_inside,
    unlink_inside,
)
from scenestore.store.layout import LOCKS_DIR

logger = logging.getLogger(__name__)


class _FileLockHeld:
    """A held ``fcntl`` lock: the kernel releases it when its process dies, so it cannot be lost."""

    def check(self) -> None:
        """Nothing to check: a file lock is held until released."""


class LocalClient:
    """The objects of a store directory, keys relative to it.

    Args:
        root: The store directory (created on the first write).
    """

    supports_rename = True

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.location = str(root)

    def __repr__(self) -> str:
        return f"LocalClient({self.location!r})"

    def _path(self, key: str) -> Path:
        return inside_store(self.root, self.root / key)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (UnsafePathError, StoreError):
            raise
        except OSError as err:
            local = store_io_error(err)
            if local is not None:
                raise local from err
            raise StoreError(
                f"Store {self.location!r}: cannot {doing} ({err.strerror or err}); expected a "
                "directory this user can read and write."
            ) from err

    def get(self, key: str) -> bytes | None:
        with self._errors(f"read {key!r}"):
            return read_nofollow(self.root, key)

    def exists(self, key: str) -> bool:
        check_nofollow(self.root, key)
        return os.path.isfile(os.path.join(self.root, key))

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors(f"write {key!r}"):
            self._mkdirs(path.parent)
            atomic_write(path, data, mode=0o666 & ~UMASK)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._errors(f"create {key!r}"):
            self._mkdirs(path.parent)
            # A whole temp file hard-linked into place: link() fails if the name exists (as
            # O_EXCL would), and no reader ever sees a half-written record.
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    os.fchmod(fh.fileno(), 0o666 & ~UMASK)
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        head = prefix.strip("/")
        found: list[tuple[str, int]] = []
        with self._errors(f"list {prefix!r}"):
            if head:
                check_nofollow(self.root, head)
            todo = [(os.path.join(self.root, head), head)]
            while todo:
                directory, key = todo.pop()
                try:
                    entries = list(os.scandir(directory))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    if entry.is_symlink():  # not an object of the store: never followed
                        continue
                    name = f"{key}/{entry.name}" if key else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        todo.append((entry.path, name))
                        continue
                    try:
                        found.append((name, entry.stat(follow_symlinks=False).st_size))
                    except FileNotFoundError:  # a concurrent writer moved it
                        continue
        return sorted(found)

    def children(self, prefix: str = "") -> builtins.list[str]:
        if prefix.strip("/"):
            check_nofollow(self.root, prefix.strip("/"))
        top = os.path.join(self.root, prefix.strip("/"))
        names = []
        with self._errors(f"list {prefix or 'the store'!r}"):
            try:
                entries = list(os.scandir(top))
            except (FileNotFoundError, NotADirectoryError):
                return []
            for entry in entries:
                if entry.is_symlink():
                    logger.warning(
                        "Skipping %s, never following a link out of the store %s.",
                        entry.path,
                        self.location,
                    )
                elif entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
        return sorted(names)

    def stamp(self, prefix: str) -> str | None:
        try:
            # lstat: a linked directory's own time, never its target's (the link is refused
            # when the scene is read).
            return str(os.lstat(os.path.join(self.root, prefix.strip("/"))).st_mtime_ns)
        except OSError:
            return None

    def delete(self, keys: builtins.list[str]) -> None:
        for key in keys:
            with self._errors(f"delete {key!r}"):
                unlink_inside(self.root, self.root / key)

    def delete_prefix(self, prefix: str) -> None:
        with self._errors(f"delete {prefix!r}"):
            remove_tree_inside(self.root, self.root / prefix.strip("/"))

    def move(self, source: str, target: str) -> None:
        src, dst = self._path(source), self._path(target)
        with self._errors(f"move {source!r} to {target!r}"):
            self._mkdirs(dst.parent)
            os.replace(src, dst)  # one atomic rename (dst is absent or an empty directory)

    @contextmanager
    def lock(self, key: str, *, timeout_s: float) -> Iterator[_FileLockHeld]:
        path = self._path(key)  # filelock opens with O_TRUNC: a linked lock file is refused
        with self._errors(f"lock {key!r}"):
            self._mkdirs(path.parent)
            lock = FileLock(path, timeout=max(timeout_s, 0.0))
            try:
                lock.acquire()
            except Timeout:
                raise LeaseHeldError(
                    f"Scene lock {str(path)!r} is still held by another writer after "
                    f"{timeout_s:g} s; expected it to finish first."
                ) from None
        try:
            yield _FileLockHeld()
        finally:
            lock.release()

    def lock_held(self, key: str) -> bool:
        path = self._path(key)
        if not path.exists():
            return False
        try:
            with FileLock(path, timeout=0):
                return False
        except Timeout:
            return True
        except OSError:  # a read-only store: no writer can be running in it either
            return False

    def zarr_store(self, *, read_only: bool = False) -> Any:
        # zarr is imported here, not at the top: listing a store from its index needs none.
        from scenestore.store._local_zarr import GuardedLocalStore

        return GuardedLocalStore(self.root, read_only=read_only)

    def href(self, key: str) -> str:
        return str((self.root / key).absolute())

    def check_readable(self) -> None:
        if not self.root.exists():
            raise StoreError(f"Store {self.location!r} does not exist; expected a store directory.")
        if not self.root.is_dir():
            raise StoreError(f"Store path {self.location!r} is a file; expected a directory.")

    def check_writable(self) -> None:
        try:
            self._mkdirs(self.root / LOCKS_DIR)
            with tempfile.NamedTemporaryFile(dir=self.root / LOCKS_DIR, prefix=".probe-"):
                pass
        except (UnsafePathError, StoreError):
            raise
        except OSError as err:
            raise StoreError(
                f"Store {self.location!r} is not writable ({err.strerror}); expected a directory "
                "this user can write to."
            ) from err

    def local_root(self) -> Path:
        return self.root

    def io_error(self, err: BaseException) -> Exception | None:
        return store_io_error(err, self.root)

    def _mkdirs(self, path: Path) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"Store path {self.location!r} is a file; expected a directory (or a path to "
                "create)."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        mkdir_inside(self.root, path)


__all__ = ["LocalClient"]
