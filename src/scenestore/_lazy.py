"""Lazy re-exports for package ``__init__`` modules (PEP 562).

Importing ``scenestore`` or ``scenestore_world`` should not pay for xarray, dask, odc-stac or
rasterio until a name that needs them is used: the CLI's ``--help`` and the world's server
child process start in a fraction of the time.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module ``__getattr__`` and ``__dir__`` that import ``exports`` on first use.

    Args:
        package: The package's ``__name__``.
        exports: Public name -> module that defines it.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        vars(sys.modules[package])[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__


def import_in_background(*modules: str) -> threading.Thread:
    """Start importing ``modules`` in a daemon thread; join it before relying on them.

    For a start that waits on the network anyway (a search, a Prefect run being created):
    the pixel stack (odc-stac, rasterio, dask, ~0.5 s of one core) loads meanwhile instead of
    at the first scene. An import that fails here is ignored: the caller's own import
    raises the same error where it matters.
    """

    def load() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="scenestore-imports", daemon=True)
    thread.start()
    return thread


#: What the first scene download imports (:meth:`scenestore.stac.StacStoreManager.download_native`).
PIXEL_STACK = ("rasterio", "dask.array", "odc.stac")
