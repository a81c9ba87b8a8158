"""Prefect worker types ``remote`` (hybrid) and ``remote:push``: one flow run, one fresh machine."""

from prefect_remote.workers.config import RemoteJobConfiguration, RemoteJobVariables, RemoteProviderCredentials
from prefect_remote.workers.worker import RemotePushWorker, RemoteWorker, RemoteWorkerResult

__all__ = [
    "RemoteJobConfiguration",
    "RemoteJobVariables",
    "RemoteProviderCredentials",
    "RemotePushWorker",
    "RemoteWorker",
    "RemoteWorkerResult",
]
