"""Package sync: capture the local Python environment, store it by content, rebuild it on machines.

>>> env = capture_environment(check=True)          # doctest: +SKIP
>>> env.name                           # doctest: +SKIP
'senv-3f2a9c0e4b1d7a65'

Then launch machines with ``software=env.name``: each rebuilds (or reuses) the environment with uv
and runs its payload with that environment's interpreter. Names load lazily: machines import the
rebuild side at boot and must not pay for the capture side.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "CaptureError": "capture",
    "CapturedEnvironment": "capture",
    "UnresolvableEnvironment": "capture",
    "capture_environment": "capture",
    "RebuildError": "rebuild",
    "load_spec": "rebuild",
    "rebuild_environment": "rebuild",
    "LocalStore": "store",
    "Store": "store",
    "StoreError": "store",
    "TamperedBlob": "store",
    "open_store": "store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"prefect_remote.software.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'prefect_remote.software' has no attribute {name!r}")


__all__ = sorted(_LAZY)
