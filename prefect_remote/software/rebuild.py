"""Rebuild a software environment on a machine: fetch, verify, ``uv venv`` + ``uv pip sync``, unpack.

Environments are cached by name (their content hash) under ``envs_dir``: the first machine on a
host builds ``envs_dir/<name>`` under a lock, later ones (and concurrent ones, once the lock is
free) reuse it at once. A build that died half-way has no completion marker and is redone.
Standard library only: the agent runs this while the machine boots.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect_remote.errors import RemoteError
from prefect_remote.filelock import file_lock
from prefect_remote.software.naming import NAME_PATTERN, env_name
from prefect_remote.software.store import Store, StoreError, TamperedBlob

COMPLETE = ".complete"


class RebuildError(RemoteError):
    """An environment could not be rebuilt; the message names the package and the reason in one line,
    ``details`` holds uv's whole output (which the machine's log shows)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


_UV_CAUSE = re.compile(r"^\s*(?:caused by|cause):\s*", re.I)


def uv_error_summary(output: str) -> str:
    """uv's error in one line: what failed and its innermost cause. uv prints the error, then a chain
    of causes, one per line (``Caused by:``, or ``cause:``), with hints and progress around them.

    >>> uv_error_summary("error: Failed to download `six`\\n  Caused by: request failed\\n  Caused by: timed out")
    'Failed to download `six`: timed out'
    """
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    causes = [_UV_CAUSE.sub("", line) for line in lines if _UV_CAUSE.match(line)]
    what = errors[0] if errors else (lines[-1] if lines else "uv failed with no output")
    return f"{what}: {causes[-1]}" if causes else what


def canonical(spec: dict[str, Any]) -> bytes:
    return json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()


def load_spec(store: Store, name: str) -> dict[str, Any]:
    """The spec stored under ``name``, checked to be the content that name was made from."""
    if not NAME_PATTERN.fullmatch(name):
        raise RebuildError(f"software={name!r}: expected an environment name such as 'senv-0123456789abcdef'")
    data = store.get_env(name)
    if env_name(data) != name:
        raise TamperedBlob(f"environment spec {name} in {store.url} does not match its name: the store was changed")
    return json.loads(data)


def requirement_lines(spec: dict[str, Any], wheel_dir: Path) -> list[str]:
    """Requirements that install exactly the spec's packages, local wheels from ``wheel_dir``."""
    return [f"{p['name']} @ {(wheel_dir / p['wheel']['file']).as_uri()}" if p.get("wheel") else p["requirement"] for p in spec["packages"]]


def fetch_requirements(spec: dict[str, Any], store: Store, folder: Path) -> Path:
    """Fetches the spec's local wheels into ``folder/wheels`` and writes ``folder/requirements.txt``,
    which installs exactly the spec's packages; returns that file."""
    wheels = folder / "wheels"
    for package in spec["packages"]:
        if package.get("wheel"):
            store.get_file(package["wheel"]["sha256"], wheels / package["wheel"]["file"])
    requirements = folder / "requirements.txt"
    requirements.write_text("\n".join(requirement_lines(spec, wheels)) + "\n")
    return requirements


def index_arguments(spec: dict[str, Any]) -> list[str]:
    """Index options for uv; credentials were never stored, so uv takes them from the machine
    (``UV_INDEX_*`` variables, netrc or keyring)."""
    indexes = spec.get("indexes") or {}
    arguments = ["--index-url", indexes["default"]] if indexes.get("default") else []
    for extra in indexes.get("extra", []):
        arguments += ["--extra-index-url", extra]
    return arguments


def find_uv() -> str:
    found = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except Exception:
        raise RebuildError("uv was not found on this machine; install it (`pip install uv`) in the boot image") from None


@lru_cache(maxsize=1)
def uv_cache_dir() -> str | None:
    """This host's uv cache, which local machines share so that rebuilds start warm."""
    result = subprocess.run([find_uv(), "cache", "dir"], capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def rebuild_environment(
    name: str,
    store: Store,
    envs_dir: str | Path,
    *,
    workdir: str | Path | None = None,
    uv_cache_dir: str | None = None,
    proxy: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """The Python interpreter of environment ``name``, building it first unless this host has it.
    The code bundle, if any, is unpacked into ``workdir``.

    Example::

        python = rebuild_environment("senv-0123456789abcdef", open_store(), "/var/lib/prefect-remote/envs", workdir=".")
    """
    envs_dir = Path(envs_dir)
    env = envs_dir / name
    if (env / COMPLETE).exists():
        log(f"software environment {name}: cached on this host")
    else:
        envs_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(envs_dir / f".{name}.lock"):
            if (env / COMPLETE).exists():
                log(f"software environment {name}: built by another machine meanwhile")
            else:
                _build(name, store, env, find_uv(), _uv_env(uv_cache_dir, proxy), log)
    if workdir is not None and (env / "code.tar.gz").exists():
        with tarfile.open(env / "code.tar.gz") as archive:
            _extract(archive, Path(workdir))
        log(f"software environment {name}: local code unpacked into {workdir}")
    return env / "venv" / "bin" / "python"


def _extract(archive: tarfile.TarFile, folder: Path) -> None:
    """Unpacks plain files and folders only, inside ``folder`` (tarfile's "data" filter, which Pythons
    before 3.11.4, as some images have, lack)."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(folder, filter="data")
        return
    root = folder.resolve()
    for member in archive.getmembers():
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise RebuildError(f"the code bundle holds {member.name!r}, which is not a plain file inside the working folder")
    archive.extractall(folder)


def _uv_env(uv_cache_dir: str | None, proxy: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if uv_cache_dir:
        env["UV_CACHE_DIR"] = uv_cache_dir
    if proxy:
        env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy)
    return env


def _build(name: str, store: Store, env: Path, uv: str, uv_env: dict[str, str], log: Callable[[str], None]) -> None:
    started = time.monotonic()
    shutil.rmtree(env, ignore_errors=True)  # what a build that died half-way left
    env.mkdir(parents=True)
    try:
        spec = load_spec(store, name)
        requirements = fetch_requirements(spec, store, env)
        if spec.get("code"):
            store.get_file(spec["code"]["sha256"], env / "code.tar.gz")
    except StoreError:
        shutil.rmtree(env, ignore_errors=True)
        raise
    as_captured, why = _make_venv(env / "venv", spec, uv, uv_env)
    log(f"software environment {name}: a virtual environment on {why}")
    log(f"software environment {name}: installing {len(spec['packages'])} packages with uv")
    sync = [uv, "pip", "sync", "--quiet", "--python", str(env / "venv" / "bin" / "python"), *index_arguments(spec), str(requirements)]
    try:
        # From uv's cache alone first: no index round-trips, and it works where the machine has no way out.
        _run([*sync, "--offline"], uv_env, spec, "installing packages")
    except RebuildError:
        log(f"software environment {name}: some packages are not in uv's cache; downloading them")
        _run(sync, uv_env, spec, "installing packages")
    if not as_captured:
        _add_what_this_patch_needs(name, env / "venv", requirements, spec, uv, uv_env, log)
    (env / "spec.json").write_bytes(canonical(spec))
    (env / COMPLETE).touch()
    log(f"software environment {name}: built in {time.monotonic() - started:.1f}s")


def _add_what_this_patch_needs(
    name: str, venv: Path, requirements: Path, spec: dict[str, Any], uv: str, uv_env: dict[str, str], log: Callable[[str], None]
) -> None:
    """On another patch of the captured Python, the same pinned packages may need more: a dependency
    under a ``python_full_version`` marker (redis needs async-timeout below 3.11.3), which the
    capture, on its own patch, never had. Installed with dependencies, the pins stay and what this
    patch needs is added; if that cannot be resolved, the environment stays as captured."""
    install = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *index_arguments(spec), "-r", str(requirements)]
    try:
        _run(install, uv_env, spec, "adding what this Python needs")
    except RebuildError as error:
        log(f"software environment {name}: kept as captured; {error}")


def _make_venv(venv: Path, spec: dict[str, Any], uv: str, uv_env: dict[str, str]) -> tuple[bool, str]:
    """Makes ``venv`` on the Python the environment was captured with, patch included, where this
    machine has it or uv can download it (a Dask client compares its Python with its cluster's);
    else at once on one of the same minor version. Returns whether it is the captured Python, and
    which Python it is and why, for the log."""
    wanted, here = spec["python"], platform.python_version()
    if wanted == here:
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], uv_env, spec, f"creating a Python {wanted} environment")
        return True, f"Python {wanted}, as captured"
    exact = subprocess.run(  # no retries: a machine with no route to the download host learns it at once
        [uv, "venv", "--quiet", "--python", wanted, str(venv)], env={**uv_env, "UV_HTTP_RETRIES": "0"}, capture_output=True, text=True
    )
    if exact.returncode == 0:
        return True, f"Python {wanted}, as captured"
    minor = ".".join(wanted.split(".")[:2])
    same_minor = sys.executable if here.startswith(f"{minor}.") else minor  # the running Python when it fits: no search
    _run([uv, "venv", "--quiet", "--python", same_minor, str(venv)], uv_env, spec, f"creating a Python {minor} environment")
    cause = uv_error_summary(exact.stderr or exact.stdout)
    return False, f"Python {minor} (not {wanted}, which this machine has not and uv could not download: {cause})"


def packages_named(spec: dict[str, Any], message: str) -> list[str]:
    """The spec's packages that a uv error message names."""
    return sorted({p["name"] for p in spec["packages"] if re.search(rf"\b{re.escape(p['name'])}\b", message, re.I)})


def _run(command: list[str], env: dict[str, str], spec: dict[str, Any], doing: str) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        named = packages_named(spec, output)
        which = f" (package{'s' if len(named) > 1 else ''}: {', '.join(named)})" if named else ""
        raise RebuildError(f"{doing} failed{which}: {uv_error_summary(output)}", details=output)
