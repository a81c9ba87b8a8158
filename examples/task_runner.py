"""RemoteTaskRunner: a Prefect flow whose tasks run on a RemoteCluster (local provider here)."""

from prefect import flow, task

from prefect_remote import RemoteTaskRunner


@task
def square(n: int) -> int:
    return n * n


@flow(task_runner=RemoteTaskRunner(cpu=1, n_workers=[1, 2], keepalive="30 seconds"))
def sum_of_squares(n: int = 50) -> int:
    return sum(square.map(range(n)).result())


if __name__ == "__main__":
    print("result:", sum_of_squares())
