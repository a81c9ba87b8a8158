"""Files that concurrent readers and writers see whole: written aside, then put in place at once."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _written_aside(path: Path, content: bytes, mode: int, make_folder: bool) -> str:
    """A new file beside ``path`` holding ``content`` with permissions ``mode``; its folder made
    (owner-only) only when asked: a folder that is gone (a machine's, removed) must stay gone."""
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(content)
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def write_atomically(path: Path, content: bytes, *, mode: int = 0o600, make_folder: bool = False) -> None:
    """Writes ``content`` to ``path`` so that readers see the old file or the new one, never part of one.

    >>> write_atomically(Path("/tmp/example.json"), b"{}")
    """
    temporary = _written_aside(path, content, mode, make_folder)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json(path: Path, data: Any, *, mode: int = 0o600, make_folder: bool = False) -> None:
    """``data`` as JSON, written as :func:`write_atomically` writes."""
    write_atomically(path, json.dumps(data).encode(), mode=mode, make_folder=make_folder)


def create_once(path: Path, content: bytes, *, mode: int = 0o600, make_folder: bool = False) -> bool:
    """Creates ``path`` holding ``content`` unless it exists: ``True`` if this call created it. Of
    concurrent callers the first wins, and every reader sees a whole file."""
    temporary = _written_aside(path, content, mode, make_folder)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
