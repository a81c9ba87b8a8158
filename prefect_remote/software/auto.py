"""Automatic package sync: this environment, captured once and found again by its fingerprint.

``@prefect_remote.function``, ``RemoteCluster`` and ``RemoteTaskRunner`` given neither ``software=``
nor ``image=`` call :func:`synced_environment` when their provider's machines do not share this
host's interpreter (``Provider.shares_host_software``), and run on the environment it names.

>>> synced_environment(ignore=["jupyterlab"]).name      # doctest: +SKIP
'senv-3f2a9c0e4b1d7a65'

A full capture (:func:`~prefect_remote.software.capture.capture_environment`: every installed
distribution, local packages built into wheels, the code under the working directory) is recorded
with what it read, and reused while none of that changed:

* in the same process, from memory: microseconds;
* in a new process, from ``$PREFECT_REMOTE_HOME/cache/package-sync/<key>.json``, after a ``stat``
  of everything it records (nothing is read): the package metadata (``*.dist-info``, ``*.egg-info``)
  of every ``sys.path`` folder, and each file and folder of the local packages' sources and of the
  code; and a check that the store still holds the environment: milliseconds.

The key is the request: the interpreter, its ``sys.path``, the working directory, ``arm``, ``gpu``,
``ignore``, and the variables naming the home, the store, the bundle size limit and the package
indexes (hashed: index URLs may hold credentials). Standard library only until a capture is needed.

On a machine whose payload runs a software environment (a flow run deployed with package sync),
this interpreter *is* that environment, rebuilt from the store: it is reused as it is (source
``machine``), never captured again, so a function the flow calls runs on the flow's own software.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Literal

from prefect_remote.atomic_files import write_json
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.software.scan import DEFAULT_INDEX_VARIABLES, EXTRA_INDEX_VARIABLES, normalize
from prefect_remote.software.stamps import stamp, unchanged

FORMAT = 1  # of the records; part of the key
METADATA_SUFFIXES = (".dist-info", ".egg-info")
# What else a capture depends on, from the environment (settings read by the capture, and indexes).
VARIABLES = (
    "PREFECT_REMOTE_HOME",
    "PREFECT_REMOTE_STORE",
    "PREFECT_REMOTE_MAX_BUNDLE_SIZE",
    *DEFAULT_INDEX_VARIABLES,
    *EXTRA_INDEX_VARIABLES,
)

logger = logging.getLogger("prefect_remote.software")

_memory: dict[tuple[Any, ...], SyncedEnvironment] = {}  # request -> what this process resolved (source "memory")
_lock = threading.Lock()
captures = 0  # full captures made by this process (read by tests and the benchmark)


class PackageSyncWarning(UserWarning):
    """A ``package_sync_ignore`` entry that matches no installed package."""


@dataclasses.dataclass(frozen=True)
class SyncedEnvironment:
    """A stored software environment matching this environment, and where the answer came from:
    ``memory`` (this process resolved it before), ``disk`` (recorded by an earlier process, still
    valid), ``capture`` (captured now) or ``machine`` (this interpreter is that environment, on a
    machine); ``seconds`` is what finding it took (0 from memory)."""

    name: str
    packages: int
    source: Literal["memory", "disk", "capture", "machine"]
    seconds: float


def synced_environment(
    *,
    ignore: list[str] | tuple[str, ...] | None = None,
    arm: bool = False,
    gpu: bool = False,
    python: str | None = None,
    root: str | Path = ".",
) -> SyncedEnvironment:
    """The stored environment of ``python`` (default: this interpreter) and the code under ``root``
    for ``arm``/``gpu`` machines, without the packages ``ignore`` names (distribution names,
    wildcards allowed): captured the first time, then found again while nothing it read changed.

    The first capture prints one line (packages, name, seconds) to stderr; reuses say nothing (a
    debug line on the ``prefect_remote.software`` logger). An ``ignore`` entry that matches no
    installed package is reported with a :class:`PackageSyncWarning`.
    """
    patterns = sorted({normalize(pattern) for pattern in ignore or ()})
    here = _is_this_interpreter(python)
    if here and not patterns and (running := machine_environment(arm=arm)) is not None:
        return running
    request = (
        sys.executable if here else os.path.abspath(python),  # type: ignore[arg-type]
        tuple(sys.path) if here else None,  # another interpreter's is recorded when captured
        os.path.abspath(root),
        bool(arm),
        bool(gpu),
        tuple(patterns),
        tuple(os.environ.get(name) for name in VARIABLES),
    )
    if (found := _memory.get(request)) is not None:
        return found
    with _lock:  # one capture at a time: concurrent first calls wait for it, then reuse it
        if (found := _memory.get(request)) is not None:
            return found
        started = time.perf_counter()
        key = hashlib.sha256(json.dumps([FORMAT, *request]).encode()).hexdigest()[:32]
        found = _recorded(key, patterns, python, started) or _capture(key, patterns, python, root, arm, gpu)
        _memory[request] = dataclasses.replace(found, source="memory", seconds=0.0)
        return found


def machine_environment(*, arm: bool = False) -> SyncedEnvironment | None:
    """The software environment this interpreter is, on a machine (``$PREFECT_REMOTE_MACHINE_ID``
    set by its agent) that rebuilt it for its payload, when it is for ``arm`` machines or not as
    asked; else None. Its folder holds the spec it was built from, which names it."""
    from prefect_remote.software.naming import env_name

    if not os.environ.get(MACHINE_ID_ENV):
        return None
    folder = Path(sys.prefix).parent  # <envs>/<name>/venv is the interpreter's prefix
    try:
        data = (folder / "spec.json").read_bytes()
        spec = json.loads(data)
    except (OSError, ValueError):
        return None
    if env_name(data) != folder.name or spec.get("platform") != f"linux-{'aarch64' if arm else 'x86_64'}":
        return None
    logger.debug("package sync: this machine runs environment %s; reusing it", folder.name)
    return SyncedEnvironment(folder.name, len(spec.get("packages", [])), "machine", 0.0)


def _is_this_interpreter(python: str | None) -> bool:
    return python is None or os.path.abspath(python) == os.path.abspath(sys.executable)


def _record_file(key: str, settings: Any) -> Path:
    return settings.home / "cache" / "package-sync" / f"{key}.json"


# -- installed distributions ----------------------------------------------------------------------


def _import_folders(python: str | None) -> list[str]:
    """The folders whose distributions the capture scans: ``python``'s ``sys.path``."""
    if _is_this_interpreter(python):
        entries = sys.path
    else:  # as scan.py sees them there (isolated mode)
        result = subprocess.run([str(python), "-I", "-c", "import json, sys; print(json.dumps(sys.path))"], capture_output=True, text=True)
        entries = json.loads(result.stdout) if result.returncode == 0 else []
    return list(dict.fromkeys(os.path.abspath(entry or ".") for entry in entries))


def _metadata_listing(folder: str) -> str | None:
    """A digest of the package metadata in ``folder``: each ``*.dist-info``/``*.egg-info`` name and
    stamp (an install, upgrade or reinstall replaces one). For a file on ``sys.path`` (a zip), its stamp."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(entry.name for entry in entries if entry.name.endswith(METADATA_SUFFIXES))
    except NotADirectoryError:
        return json.dumps(stamp(folder))
    except OSError:
        return None
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{stamp(os.path.join(folder, name))}\0".encode())
    return digest.hexdigest()


def _distributions_state(folders: list[str]) -> dict[str, list[Any]]:
    return {folder: [stamp(folder), _metadata_listing(folder)] for folder in folders}


def _distributions_unchanged(recorded: dict[str, list[Any]]) -> bool:
    """A folder whose own stamp is unchanged has the same entries; one that changed (a file written
    into the working directory) is compared by its package metadata alone."""
    for folder, (was, listing) in recorded.items():
        now = stamp(folder)
        if (None if now is None else list(now)) != was and _metadata_listing(folder) != listing:
            return False
    return True


# -- recorded captures ------------------------------------------------------------------------------


def _recorded(key: str, patterns: list[str], python: str | None, started: float) -> SyncedEnvironment | None:
    """What an earlier process captured for ``key``, if nothing it read has changed and the store
    still holds it."""
    from prefect_remote.settings import get_settings
    from prefect_remote.software.store import StoreError
    from prefect_remote.software.stores import open_store

    try:
        settings = get_settings()
        record = json.loads(_record_file(key, settings).read_text())
        if record.get("format") != FORMAT or record["max_bundle_size"] != settings.max_bundle_size:
            return None
        store = open_store(settings=settings)
        if record["store"] != store.url:
            return None
        if not (_distributions_unchanged(record["distributions"]) and unchanged(record["inputs"])):
            return None
        if not store.has_env(record["name"]):  # removed with `prefect-remote env rm`
            return None
    except (OSError, ValueError, KeyError, TypeError, StoreError):
        return None
    _warn_unmatched(patterns, record["installed"], python)
    logger.debug("package sync: environment %s unchanged (recorded capture %s)", record["name"], key)
    return SyncedEnvironment(record["name"], record["packages"], "disk", time.perf_counter() - started)


def _capture(key: str, patterns: list[str], python: str | None, root: str | Path, arm: bool, gpu: bool) -> SyncedEnvironment:
    global captures
    from prefect_remote.settings import get_settings
    from prefect_remote.software.capture import capture_environment

    started = time.perf_counter()
    settings = get_settings()
    distributions = _distributions_state(_import_folders(python))  # before the scan: a later install is noticed
    env = capture_environment(root=root, python=python, arm=arm, gpu=gpu, ignore=patterns)
    captures += 1
    installed = sorted({p["name"] for p in env.spec["packages"]} | {d["name"] for d in env.spec["dropped"]})
    record = {
        "format": FORMAT,
        "name": env.name,
        "packages": len(env.spec["packages"]),
        "installed": installed,
        "store": env.store_url,
        "max_bundle_size": settings.max_bundle_size,
        "distributions": distributions,
        "inputs": env.inputs,
    }
    _write(_record_file(key, settings), record)
    _warn_unmatched(patterns, installed, python)
    seconds = time.perf_counter() - started
    print(f"package sync: captured {record['packages']} packages into {env.name} in {seconds:.1f} s", file=sys.stderr)
    return SyncedEnvironment(env.name, record["packages"], "capture", seconds)


def _write(path: Path, record: dict[str, Any]) -> None:
    """Written whole or not at all (concurrent processes may capture the same request)."""
    try:
        write_json(path, record, make_folder=True)
    except OSError as error:  # the next process captures again: slower, not wrong
        logger.warning("package sync: could not record the capture in %s: %s", path, error)


def _warn_unmatched(patterns: list[str], installed: list[str], python: str | None) -> None:
    missing = [pattern for pattern in patterns if not any(fnmatch.fnmatch(name, pattern) for name in installed)]
    if missing:
        warnings.warn(
            f"package_sync_ignore: {', '.join(map(repr, missing))} matches no package installed in {python or sys.executable}, "
            "so nothing was left out for it; give distribution names as `pip list` shows them",
            PackageSyncWarning,
            stacklevel=3,
        )
