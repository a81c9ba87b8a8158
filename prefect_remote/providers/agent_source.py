"""Where a stock-image machine gets prefect-remote for its agent: the package index for a released
version, else a wheel of the launcher's own source put in the store (built once per state of the
source, stored by content).

>>> source = agent_source(provider.machine_store, extras=("aws",), requirements=("boto3",), full=False)  # doctest: +SKIP
>>> source.requirement  # doctest: +SKIP
'prefect-remote[aws]==0.1.0'
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from prefect_remote.machine.boot import AgentSource
from prefect_remote.software.store import Store

DISTRIBUTION = "prefect-remote"


def agent_source(store: Callable[[], Store], *, extras: Sequence[str], requirements: Sequence[str], full: bool) -> AgentSource:
    """The :class:`AgentSource` for this launcher's prefect-remote; ``store`` gives the store the
    machines read (asked for only when the version is not released). ``requirements`` (what the
    machine runtime imports, e.g. boto3) are pinned to the versions installed here when they are."""
    python = platform.python_version()  # patch included: the machine gets it where it can (boot script, software.rebuild)
    pinned = tuple(_pinned(name) for name in requirements)
    version, source = _installed()
    extra = f"[{','.join(extras)}]" if extras else ""
    if source is None:
        return AgentSource(f"{DISTRIBUTION}{extra}=={version}", python=python, full=full, extras=tuple(extras), bootstrap=pinned)
    machines = store()
    wheel = _built_wheel(str(source))
    # Put (one existence check when it is there) at every launch, not once per process: a teardown,
    # `env gc` or the bucket's lifecycle may have deleted it since, and a long-lived launcher (a
    # worker, the push service) would boot every later machine on a wheel that is gone.
    digest = machines.put_file(wheel)
    return AgentSource(
        f"{DISTRIBUTION}{extra} ({wheel.name})",
        python=python,
        full=full,
        extras=tuple(extras),
        bootstrap=pinned,
        wheel=wheel.name,
        digest=digest,
        store=machines.url,
        fetch=machines.machine_fetch(digest),
    )


def _installed() -> tuple[str, Path | None]:
    """This prefect-remote's version, and its source folder when it is not from an index (PEP 610)."""
    distribution = metadata.distribution(DISTRIBUTION)
    direct = distribution.read_text("direct_url.json")
    if not direct:
        return distribution.version, None
    url = json.loads(direct)["url"]
    return distribution.version, Path(unquote(urlsplit(url).path)) if url.startswith("file:") else Path(url)


def _pinned(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _built_wheel(source: str) -> Path:
    """The wheel of ``source`` (itself, if it is one), built once per process and wheel cache (and
    cached by its files there); built again if the cached file has gone since (its home removed)."""
    from prefect_remote.settings import get_settings

    path = Path(source)
    if path.suffix == ".whl":
        return path
    folder = str(get_settings().home / "cache" / "wheels")
    wheel = _build(source, folder)
    if not wheel.exists():
        _build.cache_clear()
        wheel = _build(source, folder)
    return wheel


@lru_cache(maxsize=8)
def _build(source: str, folder: str) -> Path:
    from prefect_remote.software.capture import build_wheel

    return build_wheel(Path(source), Path(folder))
