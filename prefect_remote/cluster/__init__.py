"""Dask clusters on machines: :class:`~prefect_remote.cluster.remote.RemoteCluster` (client side),
and the controller and node payloads that run on the scheduler and worker machines."""
