"""The project's local code, ``.py`` and data files alike, packed as one reproducible archive.

Files are chosen under a root folder by gitignore-style patterns: everything, minus what the
project's ``.gitignore`` files ignore, minus virtual environments, caches and VCS folders, minus
``exclude``; ``include`` narrows the choice to matching files. The archive is byte-for-byte the
same for the same files (sorted entries, no timestamps or owners), so its hash names its content.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from prefect_remote.errors import RemoteError
from prefect_remote.software.stamps import stamp
from prefect_remote.units import format_size

ALWAYS_EXCLUDED = [
    ".git/",
    ".hg/",
    ".svn/",
    ".venv/",
    "venv/",
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".nox/",
    "node_modules/",
    ".ipynb_checkpoints/",
    "*.egg-info/",
    ".DS_Store",
    ".prefect/",
    # Secrets stay on the client: machines get theirs from their own environment.
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    ".netrc",
    ".pypirc",
]


class BundleTooLarge(RemoteError, ValueError):
    """The selected files exceed the size guard."""


@dataclass(frozen=True)
class Selection:
    root: Path
    files: list[str]  # relative POSIX paths, sorted
    size: int
    # What the choice was made from, as the walk saw it: absolute path -> (mtime_ns, size) of every
    # file chosen, every folder walked (stamped before it was listed) and every .gitignore read.
    # Unchanged stamps mean the same selection of the same files (see :mod:`.stamps`).
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)


def _gitignore_patterns(root: Path, folder: Path) -> list[str]:
    """The patterns of ``folder/.gitignore``, re-anchored to ``root``."""
    try:
        lines = (folder / ".gitignore").read_text().splitlines()
    except OSError:
        return []
    prefix = folder.relative_to(root).as_posix()
    if prefix == ".":
        return lines
    patterns = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        negated, body = (True, stripped[1:]) if stripped.startswith("!") else (False, stripped)
        anchored = body.lstrip("/") if ("/" in body.rstrip("/")) else f"**/{body}"
        patterns.append(("!" if negated else "") + f"{prefix}/{anchored}")
    return patterns


def select_files(
    root: str | Path,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    max_size: int | None = None,
) -> Selection:
    """The files a bundle of ``root`` holds. Raises :class:`BundleTooLarge` past ``max_size`` bytes."""
    root = Path(root).absolute()
    included = pathspec.GitIgnoreSpec.from_lines(include) if include else None
    ignore_lines = [*ALWAYS_EXCLUDED, *(exclude or [])]
    ignored = pathspec.GitIgnoreSpec.from_lines(ignore_lines)
    files, size, sizes = [], 0, []
    stamps: dict[str, tuple[int, int]] = {}
    if (root_stamp := stamp(root)) is not None:  # before os.walk lists it; subfolders are stamped below
        stamps[str(root)] = root_stamp
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        if ".gitignore" in filenames and (gitignore_stamp := stamp(here / ".gitignore")) is not None:
            stamps[str(here / ".gitignore")] = gitignore_stamp
            if more := _gitignore_patterns(root, here):
                ignore_lines += more
                ignored = pathspec.GitIgnoreSpec.from_lines(ignore_lines)
        relative = here.relative_to(root).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        dirnames[:] = sorted(d for d in dirnames if not ignored.match_file(f"{prefix}{d}/") and not (here / d / "pyvenv.cfg").exists())
        for d in dirnames:  # stamped before the walk lists them: an entry added meanwhile changes the stamp
            if (folder_stamp := stamp(here / d)) is not None:
                stamps[str(here / d)] = folder_stamp
        for name in filenames:
            path = f"{prefix}{name}"
            if ignored.match_file(path) or (included is not None and not included.match_file(path)):
                continue
            try:
                status = os.lstat(here / name)
            except OSError:
                continue
            if not stat.S_ISREG(status.st_mode):  # symlinks and special files stay out
                continue
            files.append(path)
            sizes.append((status.st_size, path))
            size += status.st_size
            stamps[str(here / name)] = (status.st_mtime_ns, status.st_size)
    if max_size is not None and size > max_size:
        largest = ", ".join(f"{p} ({format_size(s)})" for s, p in sorted(sizes, reverse=True)[:5])
        raise BundleTooLarge(
            f"the local code under {root} comes to {format_size(size)}, over the {format_size(max_size)} limit. "
            f"Largest files: {largest}. Leave data out with exclude=[...] or .gitignore, or raise "
            "PREFECT_REMOTE_MAX_BUNDLE_SIZE."
        )
    return Selection(root=root, files=sorted(files), size=size, stamps=stamps)


def without(selection: Selection, left_out: Iterable[str]) -> Selection:
    """``selection`` less the files ``left_out`` (their stamps stay: a change to one is a change)."""
    gone = set(left_out)
    kept = [relative for relative in selection.files if relative not in gone]
    size = sum(selection.stamps[str(selection.root / relative)][1] for relative in kept)
    return dataclasses.replace(selection, files=kept, size=size)


def fingerprint(selection: Selection) -> str:
    """A cheap key for the selected files' state (path, size, modification time, as the walk saw
    them), like git's index: unchanged files give the same key without reading them."""
    digest = hashlib.sha256()
    for relative in selection.files:
        mtime_ns, size = selection.stamps[str(selection.root / relative)]
        digest.update(f"{relative}\0{size}\0{mtime_ns}\0".encode())
    return digest.hexdigest()


def write_bundle(selection: Selection, destination: Path) -> Path:
    """A reproducible ``.tar.gz`` of the selected files: same files, same bytes."""
    with open(destination, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=3) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for relative in selection.files:
                full = selection.root / relative
                info = tarfile.TarInfo(relative)
                info.size = full.stat().st_size
                info.mode = 0o755 if os.access(full, os.X_OK) else 0o644
                with open(full, "rb") as handle:
                    archive.addfile(info, io.BufferedReader(handle))  # type: ignore[arg-type]
    return destination
