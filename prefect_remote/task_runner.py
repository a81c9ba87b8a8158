"""``RemoteTaskRunner``: Prefect tasks on a :class:`~prefect_remote.cluster.remote.RemoteCluster`.

>>> from prefect import flow
>>> @flow(task_runner=RemoteTaskRunner(cpu=4, memory="8 GiB", n_workers=[1, 50]))  # doctest: +SKIP
... def pipeline(): ...
"""

from __future__ import annotations

from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from prefect_remote.cluster.options import ClusterOptions
from prefect_remote.cluster.prefect_tls import SharePrefectTLS
from prefect_remote.cluster.remote import RemoteCluster


class RemoteTaskRunner(DaskTaskRunner):
    """A :class:`prefect_dask.DaskTaskRunner` whose cluster is a :class:`RemoteCluster`, taking the same
    arguments (``cpu``, ``memory``, ``n_workers``, ``keepalive``, ``software``, ``package_sync``,
    ``package_sync_ignore``…), validated when the runner is made. The flow's run creates the cluster
    (capturing this environment then, by automatic package sync, when the provider's machines need
    it), or attaches to a warm one of the same name; at the end it shuts down a cluster it created
    and leaves an attached one running.

    Example::

        @flow(task_runner=RemoteTaskRunner(cpu=4, n_workers=[1, 50]))
        def pipeline(): ...
    """

    def __init__(self, *, client_kwargs: dict[str, Any] | None = None, performance_report_path: str | None = None, **cluster_arguments: Any) -> None:
        provider = ClusterOptions.build(**cluster_arguments).provider  # bad arguments fail where the flow is defined
        self._made(provider, cluster_arguments, client_kwargs, performance_report_path)

    def _made(self, provider: Any, cluster_arguments: dict[str, Any], client_kwargs: dict[str, Any] | None, performance_report_path: str | None) -> None:
        self.provider = provider
        self.cluster_arguments = cluster_arguments
        super().__init__(cluster_class=RemoteCluster, cluster_kwargs=dict(cluster_arguments), client_kwargs=client_kwargs, performance_report_path=performance_report_path)

    def __enter__(self) -> RemoteTaskRunner:
        # Tasks report to the flow's Prefect API from the worker machines, with the settings this
        # process hands them: give them the API's address as machines reach it (a loopback server is
        # forwarded onto the local provider's bridge).
        api_url = PREFECT_API_URL.value()
        if api_url and (reachable := self.provider.reachable_url(api_url)) != api_url:
            self._exit_stack.enter_context(temporary_settings({PREFECT_API_URL: reachable}))
        return super().__enter__()

    @property
    def client(self):
        """The Dask client, made on first use; its workers then share Prefect's TLS contexts
        (see :mod:`prefect_remote.cluster.prefect_tls`)."""
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
        runner._made(self.provider, self.cluster_arguments, self.client_kwargs, self.performance_report_path)
        return runner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteTaskRunner) and self.cluster_arguments == other.cluster_arguments and self.client_kwargs == other.client_kwargs

    __hash__ = None  # type: ignore[assignment]
