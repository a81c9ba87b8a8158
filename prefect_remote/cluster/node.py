"""The payload of a cluster's machines: ``python -m prefect_remote.cluster.node scheduler|worker``.

The scheduler closes itself after ``idle_timeout`` without work (Dask's own check) or ``keepalive``
after its last client left (the controller); then its machine ends. A worker closes when its
scheduler connection breaks or cannot be made within ``WORKER_DEATH_TIMEOUT``; then its machine ends.

In a cluster with an image, both run in it with the agent's ``prefect_remote`` mounted in (see
:mod:`prefect_remote.cluster.provider_relay`): this module imports only the standard library and
``distributed`` (tests/cluster/test_image.py runs it in an image of Dask alone). There the scheduler first compares the image's
Dask with its client's and, when they differ, says so on one line starting with
:data:`VERSION_MISMATCH` and exits with :data:`VERSION_MISMATCH_EXIT`, before any Dask server or
worker starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from prefect_remote.cluster.credentials import ClusterCredentials
from prefect_remote.cluster.plan import CREDENTIALS_ENV, SCHEDULER_ENV, WORKER_ENV, ClusterPlan
from prefect_remote.on_machine import MACHINE_ID_ENV

VERSION_MISMATCH = "version mismatch:"
VERSION_MISMATCH_EXIT = 78  # EX_CONFIG: the image is not what the cluster needs


async def run_scheduler() -> int:
    from distributed import Scheduler

    from prefect_remote.cluster import dashboard
    from prefect_remote.cluster.controller import ClusterController
    from prefect_remote.cluster.provider_relay import RELAY_ENV, RelayedProvider, relay_key
    from prefect_remote.cluster.versions import dask_versions, image_mismatch

    plan = ClusterPlan.from_environ()
    if plan.image and plan.client_versions:
        mismatch = image_mismatch(plan.image, plan.client_versions, dask_versions())
        if mismatch:
            print(f"{VERSION_MISMATCH} {mismatch}", flush=True)
            return VERSION_MISMATCH_EXIT
    if plan.store:  # the workers' software environment is in the creator's store, not this machine's default one
        os.environ["PREFECT_REMOTE_STORE"] = plan.store
    # In an image, the provider's calls go through the relay beside it; elsewhere, to the provider here.
    relay = os.environ.get(RELAY_ENV)
    provider = await asyncio.to_thread(RelayedProvider, relay, relay_key(plan)) if relay else None
    credentials = ClusterCredentials.from_json(plan.credentials)
    scheduler = Scheduler(
        port=plan.scheduler_port,
        protocol="tls",
        security=credentials.security(),
        dashboard_address="127.0.0.1:0",  # plain HTTP with no authentication: this machine's loopback only
        idle_timeout=plan.idle_timeout,
    )
    scheduler.add_plugin(ClusterController(plan, os.environ[MACHINE_ID_ENV], provider))
    # The dashboard port admits the cluster's certificate holders only (its client's tunnel), over TLS.
    # It listens before the scheduler does (Dask's HTTP server is already up once the Scheduler is
    # made): a client that finds the scheduler up may give out the dashboard's link at once.
    async with await dashboard.serve(credentials, plan.dashboard_port, scheduler.http_server.port):
        async with scheduler:
            print(f"scheduler {plan.name} listening at {scheduler.address}, dashboard port {plan.dashboard_port} (TLS)", flush=True)
            await scheduler.finished()
    return 0


async def run_worker() -> int:
    from distributed import Worker

    options = json.loads(os.environ[WORKER_ENV])
    security = ClusterCredentials.from_json(os.environ[CREDENTIALS_ENV]).security()
    async with Worker(
        os.environ[SCHEDULER_ENV],
        name=os.environ[MACHINE_ID_ENV],
        security=security,
        dashboard=False,
        **options,
    ) as worker:
        await worker.finished()
    return 0


def main(argv: list[str]) -> int:
    roles = {"scheduler": run_scheduler, "worker": run_worker}
    if len(argv) != 1 or argv[0] not in roles:
        print("usage: python -m prefect_remote.cluster.node scheduler|worker (the payload of a cluster machine)", file=sys.stderr)
        return 2
    return asyncio.run(roles[argv[0]]())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
