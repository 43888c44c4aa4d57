"""Lazy re-exports for package ``__init__`` modules (PEP 562).

Importing ``scenestore`` or ``scenestore_world`` should not pay for xarray, dask, odc-stac or
rasterio until a name that needs them is used: the CLI's ``--help`` and the world's server
child process start in a fraction of the time.
"""

from __future__ import annotations

import importlib
import sys
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
