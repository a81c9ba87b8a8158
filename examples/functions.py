"""prefect_remote.function: one call, many calls, futures — on machines of the configured provider
(the local one by default; EC2 after `prefect-remote sandbox aws` or with PREFECT_REMOTE_PROVIDER=aws).

Run it twice within a minute: the second run attaches to the warm cluster and starts in about a second.
"""

import prefect_remote


@prefect_remote.function(cpu=1, n_workers=[0, 2], keepalive="1 minute")
def simulate(trial: int, group: str = "A") -> float:
    import random

    print(f"trial {trial} of group {group}")  # shows up here, in the caller's output
    return random.Random(trial).random()


if __name__ == "__main__":
    print("one call:", simulate(1))  # runs remotely, blocks
    futures = [simulate.submit(t, group="B") for t in range(3)]  # Dask futures, right away
    print("futures:", [round(f.result(), 3) for f in futures])
    results = simulate.map(range(100), group="C", retries=2)  # an iterator, immediately
    print("mean of 100 trials:", round(sum(results) / 100, 3))
    print("cluster:", simulate.cluster.cluster_name, simulate.cluster.dashboard_link)
