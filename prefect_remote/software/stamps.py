"""The state of files and folders as ``(mtime_ns, size)`` stamps, like git's index: a stat per path,
nothing read. Standard library only: checking a recorded capture must cost milliseconds.

>>> stamp("/no/such/path") is None
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

Stamp = tuple[int, int]


def stamp(path: str | Path) -> Stamp | None:
    """``(mtime_ns, size)`` of ``path``, or None if it is gone."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def unchanged(stamps: Mapping[str, Sequence[int] | None]) -> bool:
    """Whether every recorded path still has its stamp. A folder's mtime changes when an entry is
    added, removed or renamed in it, so a new file in a recorded folder is noticed too."""
    for path, was in stamps.items():
        now = stamp(path)
        if (None if now is None else list(now)) != (None if was is None else list(was)):
            return False
    return True
