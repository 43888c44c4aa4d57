"""Paths inside a local store that are never followed out of it (symlinks refused).

A store is often a shared directory that cron jobs or other users also write to. A symlink
planted in it (a scene directory, a band, ``_commits``, ``_staging``, ``.trash``, ``.locks``,
``.quicklooks``) must never make scenestore read, write or delete what it points to. Every
path the store code touches below the store root goes through :func:`inside_store` first;
deletions go through :func:`remove_tree_inside` (real directories inside the store only) and
writes of whole files through :func:`atomic_write_inside` (a ``mkstemp`` temp file beside the
target, then a rename). The store root itself may be a symlink: that is the user's choice.

The local store backend (:mod:`scenestore.store._local`) is built on these; object stores
have no symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from scenestore.errors import UnsafePathError

# mkstemp creates 0600 files; what is written gets the mode a plain open() would give.
# Read once at import (os.umask can only be read by setting it), before any thread runs.
UMASK = os.umask(0)
os.umask(UMASK)


def unsafe_reason(store: Path, path: Path) -> str | None:
    """Why ``path`` is not safe to follow inside ``store`` (naming the culprit), or None.

    Every existing component from below ``store`` down to ``path`` itself must be a real
    directory or file (no symlink), and ``path`` must resolve under the resolved store.
    Components that do not exist yet are fine (they are about to be created).
    """
    store = Path(store)
    path = Path(path)
    try:
        relative = path.relative_to(store)
    except ValueError:
        return f"Path {str(path)!r} is not inside {str(store)!r}"
    if ".." in relative.parts:
        return f"Path {str(path)!r} is not inside {str(store)!r}"
    current = store
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            return f"Path {str(current)!r} is a symlink"
        if not os.path.lexists(current):
            break
    if not path.resolve().is_relative_to(store.resolve()):
        return f"Path {str(path)!r} resolves outside {str(store)!r}"
    return None


def inside_store(store: Path, path: Path) -> Path:
    """Return ``path`` after checking it never leaves ``store`` through a symlink.

    Raises:
        UnsafePathError: If ``path`` or a directory between ``store`` and it is a symlink, or
            it resolves outside the store; the message names the link.
    """
    reason = unsafe_reason(store, path)
    if reason is not None:
        raise UnsafePathError(
            f"{reason}; expected a real directory or file inside {str(store)!r} (scenestore "
            "never follows a link out of it): remove the link."
        )
    return Path(path)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _refused(store: Path, key: str, link: str) -> UnsafePathError:
    return UnsafePathError(
        f"Path {str(Path(store) / link)!r} is a symlink; expected a real directory or file "
        f"inside {str(store)!r} (scenestore never follows a link out of it): remove the link."
    )


def read_nofollow(store: Path, key: str) -> bytes | None:
    """The bytes of the file ``key`` below ``store``, opened without following any link.

    Each directory is opened relative to its parent with ``O_NOFOLLOW`` and the file last, so
    a link anywhere below the store is refused without a race between check and use, in a few
    system calls (what the read-side hot paths, commit records and chunks, need). The store
    root itself may be a link: that is the user's choice.

    Returns:
        The bytes, or None when the file (or a directory above it) does not exist.

    Raises:
        UnsafePathError: If a component below the store is a symlink (or ``key`` holds ``..``).
    """
    fd = _open_parent(store, key)
    if fd is None:
        return None
    name = key.strip("/").rsplit("/", 1)[-1]
    try:
        try:
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                              dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _refused(store, key, key) from err
            if err.errno in (errno.EISDIR, errno.ENOTDIR):
                return None
            raise
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as fh:
        return fh.read()


def check_nofollow(store: Path, key: str) -> None:
    """Raise unless no component of ``key`` below ``store`` is a symlink (missing ones are fine).

    Raises:
        UnsafePathError: If one is (or ``key`` holds ``..``).
    """
    fd = _open_parent(store, key)
    if fd is None:
        return
    name = key.strip("/").rsplit("/", 1)[-1]
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    finally:
        os.close(fd)
    if stat.S_ISLNK(st.st_mode):
        raise _refused(store, key, key)


def _open_parent(store: Path, key: str) -> int | None:
    """An fd of the directory holding ``key``, reached without following links; None if absent."""
    parts = key.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(
            f"Key {key!r} is not a plain path inside {str(store)!r}; expected names without "
            "'..' or empty segments."
        )
    try:
        fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    for i, part in enumerate(parts[:-1]):
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            return None
        except OSError as err:
            # A link opened with O_NOFOLLOW | O_DIRECTORY fails with ELOOP or ENOTDIR
            # (kernels differ); ENOTDIR is also a plain file in the way, which is no link.
            is_link = err.errno == errno.ELOOP or (
                err.errno == errno.ENOTDIR
                and stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
            )
            os.close(fd)
            if is_link:
                raise _refused(store, key, "/".join(parts[: i + 1])) from err
            if err.errno == errno.ENOTDIR:
                return None
            raise
        os.close(fd)
        fd = child
    return fd


def mkdir_inside(store: Path, path: Path) -> Path:
    """Create ``path`` (and its parents) inside ``store``, refusing any symlink on the way."""
    inside_store(store, path)
    path.mkdir(parents=True, exist_ok=True)
    # A link planted between the check and mkdir would be caught here, before anything is written.
    return inside_store(store, path)


def remove_tree_inside(store: Path, path: Path) -> None:
    """Delete a real directory (or file) inside ``store``; a missing path is no error.

    The top is checked here: ``shutil.rmtree`` refuses a symlinked top on its own but would
    delete a real directory reached through a symlinked parent. Below the top, rmtree never
    follows symlinks (it unlinks them).

    Raises:
        UnsafePathError: If ``path`` or a directory above it inside the store is a symlink.
    """
    inside_store(store, path)
    if path.is_dir():
        with contextlib.suppress(FileNotFoundError):  # a concurrent remover was faster
            shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def unlink_inside(store: Path, path: Path) -> None:
    """Remove one file inside ``store`` (a symlink there: only the link); missing is no error.

    Raises:
        UnsafePathError: If a directory between ``store`` and ``path`` is a symlink.
    """
    inside_store(store, path.parent)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # unlink never follows a final symlink: it removes the link


def atomic_write_inside(store: Path, path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` inside ``store`` atomically; return ``path``.

    The temp file comes from ``mkstemp`` in the target's directory (an unpredictable name
    created with ``O_EXCL``, so a planted file or link is never written through), is fsynced
    and renamed over ``path``; rename replaces a link at ``path`` rather than writing into
    what it points to, but a link there is refused all the same.

    Raises:
        UnsafePathError: If ``path`` or a directory above it inside ``store`` is a symlink.
        OSError: If the write fails (the temp file is removed).
    """
    inside_store(store, path)
    mkdir_inside(store, path.parent)
    atomic_write(path, data, mode=0o666 & ~UMASK)
    return path


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a ``mkstemp`` file beside it, fsynced, then renamed.

    Readers see the old file or the new one, never half of one; fsync before the rename, or
    a power cut can leave a renamed but empty file. The caller checks the path.

    Args:
        path: The file to write (its directory must exist).
        data: The whole content.
        mode: File mode to set (``mkstemp`` creates 0600), or None to keep 0600.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = [
    "atomic_write",
    "check_nofollow",
    "read_nofollow",
    "atomic_write_inside",
    "inside_store",
    "mkdir_inside",
    "remove_tree_inside",
    "unlink_inside",
    "unsafe_reason",
]
