"""zarr's local store, guarded: no key is read, written or deleted through a symlink."""

from __future__ import annotations

from typing import Any

from zarr.storage import LocalStore

from scenestore.fsafety import check_nofollow


class GuardedLocalStore(LocalStore):
    """zarr's ``LocalStore``, but no key is read, written or deleted through a symlink."""

    def _guard(self, key: str) -> None:
        check_nofollow(self.root, key)

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        self._guard(key)
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self._guard(key)
        return await super().get_partial_values(prototype, key_ranges)

    async def set(self, key: str, value: Any) -> None:
        self._guard(key)
        await super().set(key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        self._guard(key)
        await super().set_if_not_exists(key, value)

    async def delete(self, key: str) -> None:
        self._guard(key)
        await super().delete(key)

    async def delete_dir(self, prefix: str) -> None:
        self._guard(prefix)
        await super().delete_dir(prefix)

    async def exists(self, key: str) -> bool:
        self._guard(key)
        return await super().exists(key)


__all__ = ["GuardedLocalStore"]
