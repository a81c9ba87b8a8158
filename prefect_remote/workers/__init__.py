"""Prefect worker types ``remote`` (hybrid) and ``remote:push``: one flow run, one fresh machine."""

from typing import Any

from prefect_remote.workers.config import RemoteJobConfiguration, RemoteJobVariables, RemoteProviderBlock
from prefect_remote.workers.worker import RemotePushWorker, RemoteWorker, RemoteWorkerResult

__all__ = [
    "RemoteJobConfiguration",
    "RemoteJobVariables",
    "RemoteProviderBlock",
    "RemotePushWorker",
    "RemoteWorker",
    "RemoteWorkerResult",
]


def __getattr__(name: str) -> Any:
    from prefect_remote.workers.config import renamed

    return renamed(name, stacklevel=3)  # RemoteProviderCredentials, the old name
