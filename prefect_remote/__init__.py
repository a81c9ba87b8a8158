"""prefect-remote: run Prefect flows and Dask work on machines you choose, in your own cloud.

Public names load lazily, so ``import prefect_remote`` stays cheap for every machine's agent; next
to Prefect it also registers prefect-remote's worker types (see :mod:`prefect_remote._prefect`).
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "MachineSpec": "prefect_remote.spec",
    "RemoteSettings": "prefect_remote.settings",
    "get_settings": "prefect_remote.settings",
    "BootPayload": "prefect_remote.providers.base",
    "Machine": "prefect_remote.providers.base",
    "Provider": "prefect_remote.providers.base",
    "InstanceType": "prefect_remote.providers.base",
    "get_provider": "prefect_remote.providers",
    "launch": "prefect_remote.machines",
    "terminate": "prefect_remote.machines",
    "RemoteCluster": "prefect_remote.cluster.remote",
    "function": "prefect_remote.functions",
    "Function": "prefect_remote.functions",
    "RemoteTaskRunner": "prefect_remote.task_runner",
    "PackageSync": "prefect_remote.deployments.package_sync",
}

if TYPE_CHECKING:
    from prefect_remote.cluster.remote import RemoteCluster
    from prefect_remote.deployments.package_sync import PackageSync
    from prefect_remote.functions import Function, function
    from prefect_remote.machines import launch, terminate
    from prefect_remote.providers import get_provider
    from prefect_remote.providers.base import BootPayload, InstanceType, Machine, Provider
    from prefect_remote.settings import RemoteSettings, get_settings
    from prefect_remote.spec import MachineSpec
    from prefect_remote.task_runner import RemoteTaskRunner


if "prefect" in sys.modules:
    # Loaded next to Prefect (as one of its collections, or by user code): register the worker types,
    # block, provisioner and, in a server, the push service. Without Prefect (the agent on every
    # machine boot), stay light.
    import prefect_remote._prefect


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prefect_remote' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
