"""The payload of a cluster's machines: ``python -m prefect_remote.cluster.node scheduler|worker``.

The scheduler closes itself after ``idle_timeout`` without work (Dask's own check) or ``keepalive``
after its last client left (the controller); then its machine ends. A worker closes when its
scheduler connection breaks or cannot be made within ``WORKER_DEATH_TIMEOUT``; then its machine ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from prefect_remote.cluster.credentials import ClusterCredentials
from prefect_remote.cluster.plan import CREDENTIALS_ENV, SCHEDULER_ENV, WORKER_ENV, ClusterPlan
from prefect_remote.on_machine import MACHINE_ID_ENV


async def run_scheduler() -> None:
    from distributed import Scheduler

    from prefect_remote.cluster import dashboard
    from prefect_remote.cluster.controller import ClusterController

    plan = ClusterPlan.from_environ()
    if plan.store:  # the workers' software environment is in the creator's store, not this machine's default one
        os.environ["PREFECT_REMOTE_STORE"] = plan.store
    credentials = ClusterCredentials.from_json(plan.credentials)
    scheduler = Scheduler(
        port=plan.scheduler_port,
        protocol="tls",
        security=credentials.security(),
        dashboard_address="127.0.0.1:0",  # plain HTTP with no authentication: this machine's loopback only
        idle_timeout=plan.idle_timeout,
    )
    scheduler.add_plugin(ClusterController(plan, os.environ[MACHINE_ID_ENV]))
    # The dashboard port admits the cluster's certificate holders only (its client's tunnel), over TLS.
    # It listens before the scheduler does (Dask's HTTP server is already up once the Scheduler is
    # made): a client that finds the scheduler up may give out the dashboard's link at once.
    async with await dashboard.serve(credentials, plan.dashboard_port, scheduler.http_server.port):
        async with scheduler:
            print(f"scheduler {plan.name} listening at {scheduler.address}, dashboard port {plan.dashboard_port} (TLS)", flush=True)
            await scheduler.finished()


async def run_worker() -> None:
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


def main(argv: list[str]) -> int:
    roles = {"scheduler": run_scheduler, "worker": run_worker}
    if len(argv) != 1 or argv[0] not in roles:
        print("usage: python -m prefect_remote.cluster.node scheduler|worker (the payload of a cluster machine)", file=sys.stderr)
        return 2
    asyncio.run(roles[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
