"""RemoteTaskRunner: a Prefect flow whose tasks run on a RemoteCluster (local provider here)."""

import os

from prefect import flow, task

from prefect_remote import RemoteTaskRunner


# Tasks report to the flow's Prefect server; this example uses Prefect's ephemeral server on loopback,
# which only process-isolated local machines share (see the README's known limits).
os.environ.setdefault("PREFECT_REMOTE_LOCAL_ISOLATION", "process")


@task
def square(n: int) -> int:
    return n * n


@flow(task_runner=RemoteTaskRunner(cpu=1, n_workers=[1, 2], keepalive="30 seconds"))
def sum_of_squares(n: int = 50) -> int:
    return sum(square.map(range(n)).result())


if __name__ == "__main__":
    print("result:", sum_of_squares())
