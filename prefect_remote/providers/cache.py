"""Small JSON caches a provider keeps under ``$PREFECT_REMOTE_HOME/cache/`` (a region's instance
types, its prices), written whole or not at all.

>>> save_cache(Path(tempfile.mkdtemp()) / "aws" / "types.json", {"fetched_at": 0})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect_remote.atomic_files import write_json


def save_cache(path: Path, document: dict[str, Any]) -> None:
    """Writes ``document`` as JSON to ``path`` (folders made, owner-only), replacing it atomically
    for concurrent readers; a cache that cannot be written is skipped: it only costs the next
    process the calls that fill it again."""
    try:
        write_json(path, document, make_folder=True)
    except OSError:
        pass
