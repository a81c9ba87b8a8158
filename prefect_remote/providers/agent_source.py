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
    wheel, digest = _stored_wheel(machines.url, str(source))
    return AgentSource(
        f"{DISTRIBUTION}{extra} ({wheel})",
        python=python,
        full=full,
        extras=tuple(extras),
        bootstrap=pinned,
        wheel=wheel,
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


@lru_cache(maxsize=8)
def _stored_wheel(store_url: str, source: str) -> tuple[str, str]:
    """(file name, SHA-256) of the wheel of ``source``, built (cached by its files) and stored once per process."""
    from prefect_remote.settings import get_settings
    from prefect_remote.software.capture import build_wheel
    from prefect_remote.software.stores import open_store

    path = Path(source)
    wheel = path if path.suffix == ".whl" else build_wheel(path, get_settings().home / "cache" / "wheels")
    return wheel.name, open_store(store_url).put_file(wheel)
