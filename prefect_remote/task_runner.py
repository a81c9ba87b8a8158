"""``RemoteTaskRunner``: Prefect tasks on a :class:`~prefect_remote.cluster.remote.RemoteCluster`.

>>> from prefect import flow
>>> @flow(task_runner=RemoteTaskRunner(cpu=4, memory="8 GiB", n_workers=[1, 50]))  # doctest: +SKIP
... def pipeline(): ...
"""

from __future__ import annotations

from typing import Any

import distributed
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner
from prefect_dask.client import PrefectDaskClient

from prefect_remote.cluster.options import ClusterOptionError, ClusterOptions
from prefect_remote.cluster.prefect_tls import SharePrefectTLS
from prefect_remote.cluster.remote import RemoteCluster

# DaskTaskRunner's own arguments choose and configure a cluster and its client. A RemoteTaskRunner
# always makes (or attaches to) a RemoteCluster from its own arguments, and connects to it with that
# cluster's TLS credentials: it refuses them, saying what to use instead.
_ATTACH = "to run on a running cluster, give the arguments (or the name=) of the RemoteCluster that runs it: the runner attaches to it"
DASK_ONLY_ARGUMENTS = {
    "cluster": _ATTACH,
    "address": _ATTACH,
    "cluster_class": "a RemoteTaskRunner always runs on a RemoteCluster (for another cluster class, use prefect_dask.DaskTaskRunner)",
    "cluster_kwargs": "give RemoteCluster's arguments to RemoteTaskRunner itself, e.g. RemoteTaskRunner(cpu=4, n_workers=[1, 10])",
    "adapt_kwargs": "for adaptive scaling, give n_workers=[minimum, maximum], e.g. RemoteTaskRunner(n_workers=[0, 20])",
    "client_kwargs": "the runner makes its Dask client, with its cluster's TLS credentials; for your own, use RemoteCluster.get_client()",
}


class RemoteTaskRunner(DaskTaskRunner):
    """A :class:`prefect_dask.DaskTaskRunner` whose cluster is a :class:`RemoteCluster`, taking the same
    arguments (``cpu``, ``memory``, ``n_workers``, ``keepalive``, ``software``, ``package_sync``,
    ``package_sync_ignore``…), validated when the runner is made. The flow's run creates the cluster
    (capturing this environment then, by automatic package sync, when the provider's machines need
    it), or attaches to a warm one of the same name; at the end it shuts down a cluster it created
    and leaves an attached one running.

    As on a ``DaskTaskRunner``, tasks may submit tasks, and ``performance_report_path`` saves Dask's
    performance report. ``DaskTaskRunner``'s own cluster and client arguments (``cluster``,
    ``address``, ``cluster_class``, ``cluster_kwargs``, ``adapt_kwargs``, ``client_kwargs``) are
    refused, each saying what to use instead.

    Example::

        @flow(task_runner=RemoteTaskRunner(cpu=4, n_workers=[1, 50]))
        def pipeline(): ...
    """

    def __init__(self, *, performance_report_path: str | None = None, **cluster_arguments: Any) -> None:
        for argument in sorted(DASK_ONLY_ARGUMENTS.keys() & cluster_arguments.keys()):
            raise ClusterOptionError(f"RemoteTaskRunner does not take DaskTaskRunner's {argument}=: {DASK_ONLY_ARGUMENTS[argument]}")
        provider = ClusterOptions.build(**cluster_arguments).provider  # bad arguments fail where the flow is defined
        self._made(provider, cluster_arguments, performance_report_path)

    def _made(self, provider: Any, cluster_arguments: dict[str, Any], performance_report_path: str | None) -> None:
        self.provider = provider
        self.cluster_arguments = cluster_arguments
        super().__init__(
            cluster_class=RemoteCluster, cluster_kwargs=dict(cluster_arguments), performance_report_path=performance_report_path
        )

    def __enter__(self) -> RemoteTaskRunner:
        # Tasks report to the flow's Prefect API from the worker machines, with the settings this
        # process hands them: give them the API's address as machines reach it (a loopback server is
        # forwarded onto the local provider's bridge). On a worker they have it already.
        api_url = PREFECT_API_URL.value()
        if api_url and _this_worker() is None and (reachable := self.provider.reachable_url(api_url)) != api_url:
            self._exit_stack.enter_context(temporary_settings({PREFECT_API_URL: reachable}))
        return super().__enter__()

    @property
    def client(self) -> PrefectDaskClient:
        """The Dask client, made on first use; its workers then share Prefect's TLS contexts
        (see :mod:`prefect_remote.cluster.prefect_tls`).

        In a task that submits tasks, this runner is a copy of the flow's, made on a worker (Prefect
        duplicates the flow's runner there): its client connects to that worker's scheduler with the
        worker's own TLS credentials, which reached the worker's machine through the provider's secret
        channel. No credentials travel with the runner."""
        if self._client is None and (worker := _this_worker()) is not None:
            client = PrefectDaskClient(worker.scheduler.address, security=worker.security, **self.client_kwargs)
            self._client = self._exit_stack.enter_context(client)
            return self._client
        created = self._client is None
        client = super().client
        if created:
            client.register_plugin(SharePrefectTLS())
        return client

    def duplicate(self) -> RemoteTaskRunner:
        """A new runner for the same cluster, as Prefect makes one per flow run and per worker."""
        # Prefect duplicates the flow's runner for each run, and on the workers for every task (from
        # the flow sent with it): the arguments were checked when this runner was made, and checking
        # them again there would ask the provider's API with settings the workers need not have.
        runner = type(self).__new__(type(self))
        runner._made(self.provider, self.cluster_arguments, self.performance_report_path)
        return runner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteTaskRunner) and self.cluster_arguments == other.cluster_arguments

    __hash__ = None  # type: ignore[assignment]


def _this_worker() -> distributed.Worker | None:
    """The Dask worker running the current task, if this code runs in one."""
    try:
        return distributed.get_worker()
    except ValueError:
        return None
