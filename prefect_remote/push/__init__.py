"""Push execution for ``remote:push`` pools on a self-hosted Prefect server: no worker to host.

* :mod:`service`: a perpetual service that runs inside ``prefect server start``;
* ``prefect-remote push serve``: the same executor as a standalone process (fallback);
* :mod:`provisioner`: what ``prefect work-pool create --type remote:push --provision-infra`` runs.
"""
