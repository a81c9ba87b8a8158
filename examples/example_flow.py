"""The flow from the Prefect-on-VMs guide, deployed by prefect.yaml.example onto a fresh machine.

python examples/example_flow.py      # runs it here, to try it
"""

from prefect import flow, task


@task
def f(n: int) -> int:
    return n**2


@task
def do_something(x: list[int]) -> None:
    print(x)


@flow(log_prints=True)
def my_flow() -> list[int]:
    print("Hello from your Prefect flow!")
    squares = f.map(list(range(10))).result()
    do_something(squares)
    return squares


if __name__ == "__main__":
    my_flow()
