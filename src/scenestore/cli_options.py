"""Command-line options shared by :mod:`scenestore.cli` and :mod:`scenestore.cli_store`.

They live in a module of their own so that both command modules use the very same option:
``cli_store`` importing them from ``cli`` would import ``cli`` a second time under
``python -m scenestore.cli`` (once as ``__main__``), a circular import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _store_location(text: str) -> Any:
    """A Path, or a store URL kept as text (validated in the command: one-line errors)."""
    from scenestore.store import MEMORY_SCHEME, is_object_url

    if not text.strip():
        # Path("") is ".": an empty variable in a script would make the working directory a store.
        raise typer.BadParameter(
            f"{text!r} is empty; expected a store directory or an s3:// URL."
        )
    return text if is_object_url(text) or text.startswith(MEMORY_SCHEME) else Path(text)


StoreOpt = Annotated[
    Any,
    typer.Option(
        "--store",
        parser=_store_location,
        help="Store directory, or an object-store URL such as s3://bucket/prefix "
        "(endpoint from AWS_ENDPOINT_URL, credentials from the AWS_* variables).",
    ),
]

__all__ = ["StoreOpt"]
