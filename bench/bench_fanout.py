"""Fan-out on the local provider: map throughput, cold start, warm attach, and a 500-task flow.

(1) ``f.map`` over 10,000 trivial items vs raw ``client.map`` + ``gather`` on the same cluster
(goal >= 5x throughput: ``.map`` batches items into tasks), and its client's peak memory over a
generator of 100,000 items vs 1,000,000 (goal ~1x: bounded by the batches in flight, not the input);
(2) cold start to first result, scheduler + 1 worker, vs
``LocalCluster(n_workers=1)`` + submit (goal <= 2x); (3) warm attach to first result from another
process vs our cold start (goal <= 0.25x); (4) a flow of 500 Prefect tasks with RemoteTaskRunner vs
DaskTaskRunner over a LocalCluster with the same worker count, alternating (goal >= 1.0x throughput).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

from common import bench_home

ITEMS = 10_000
MEMORY_ITEMS = (100_000, 1_000_000)
TASKS = 500
FLOW_ROUNDS = 3


def identity(x):
    return x


def bench_map(provider: str | None = None, *, memory: bool = True) -> list[str]:
    """``.map`` vs raw ``client.map`` on the same cluster of ``provider``'s machines (default: the
    configured one); with ``memory``, the client's peak memory over generators too."""
    import dask

    import prefect_remote

    @prefect_remote.function(n_workers=2, keepalive="30 seconds", name=f"bench-map-{provider or 'default'}", provider=provider)
    def trivial(x):
        return x

    trivial(0)  # cluster up, workers warm
    client = trivial.client
    raw_function = trivial.__wrapped__  # the same user function, without prefect-remote's wrapper
    client.gather([client.submit(raw_function, i, pure=False) for i in range(2)])
    raw, ours = [], []
    for _ in range(2):  # alternating, best of two each: the two cores are shared with the cluster
        started = time.perf_counter()
        assert len(client.gather(client.map(raw_function, range(ITEMS), pure=False))) == ITEMS
        raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert len(list(trivial.map(range(ITEMS)))) == ITEMS
        ours.append(time.perf_counter() - started)
    raw_best, ours_best = min(raw), min(ours)
    lines = [
        f"map {ITEMS:,} items{f' on {provider}' if provider else ''}: {ITEMS / ours_best:,.0f}/s vs raw client.map + gather "
        f"{ITEMS / raw_best:,.0f}/s -> {raw_best / ours_best:.1f}x throughput (goal >= 5x)",
    ]
    if not memory:
        trivial.cluster.close()
        return lines
    # Dask's client keeps its last 1,000 messages (under 1 MB each) for debugging: up to ~22 KiB per
    # batch of 5,000 small items here, bounded by that count, not by the map. Off for this figure.
    trivial.client.close()
    with dask.config.set({"distributed.admin.low-level-log-length": 0}):
        (small, small_seconds), (large, large_seconds) = (peak_memory(trivial, items) for items in MEMORY_ITEMS)
    trivial.cluster.close()
    return [
        *lines,
        f"map over a generator, peak client memory: {large:.1f} MiB for {MEMORY_ITEMS[1]:,} items "
        f"({MEMORY_ITEMS[1] / large_seconds:,.0f}/s) "
        f"vs {small:.1f} MiB for {MEMORY_ITEMS[0]:,} ({MEMORY_ITEMS[0] / small_seconds:,.0f}/s) -> {large / small:.2f}x for 10x the items "
        "(goal ~1x: bounded by the batches in flight, not the input; Dask's debug log of recent messages off)",
    ]


def peak_memory(function, items: int) -> tuple[float, float]:
    """Peak memory (MiB) this process allocates while mapping ``function`` over a generator of
    ``items`` (tracemalloc: every thread, the client's included), and how long it took."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        assert sum(1 for _ in function.map(x for x in range(items))) == items
        seconds = time.perf_counter() - started
        return tracemalloc.get_traced_memory()[1] / 2**20, seconds
    finally:
        tracemalloc.stop()


def first_result(cluster) -> None:
    from distributed import Client

    with Client(cluster) as client:
        assert client.submit(identity, 1, pure=False).result() == 1


ATTACH = textwrap.dedent(
    """
    import time
    from distributed import Client
    from prefect_remote import RemoteCluster
    started = time.perf_counter()
    cluster = RemoteCluster(name="bench-cold", n_workers=1, keepalive="30 seconds")
    assert cluster.attached
    with Client(cluster) as client:
        assert client.submit(sum, [1, 2], pure=False).result() == 3
    print(time.perf_counter() - started)
    """
)


def bench_start() -> list[str]:
    from distributed import LocalCluster

    from prefect_remote import RemoteCluster

    started = time.perf_counter()
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as local:
        first_result(local)
        baseline = time.perf_counter() - started
    started = time.perf_counter()
    cluster = RemoteCluster(name="bench-cold", n_workers=1, keepalive="30 seconds", shutdown_on_close=False)
    first_result(cluster)
    cold = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as folder:
            script = Path(folder, "attach.py")
            script.write_text(ATTACH)
            warm = float(
                subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            )
    finally:
        cluster.close()
    return [
        f"cold start to first result: {cold:.2f} s vs LocalCluster(n_workers=1) {baseline:.2f} s -> {cold / baseline:.2f}x (goal <= 2x)",
        f"warm attach to first result (another process): {warm:.2f} s vs our cold start {cold:.2f} s -> {warm / cold:.2f}x (goal <= 0.25x)",
    ]


def bench_flow() -> str:
    from distributed import LocalCluster
    from prefect import flow, task
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_dask import DaskTaskRunner

    from prefect_remote import RemoteTaskRunner
    from prefect_remote.devserver import local_prefect_server

    @task
    def square(n: int) -> int:
        return n * n

    def timed(runner) -> float:
        @flow(task_runner=runner)
        def fan_out() -> int:
            return sum(square.map(range(TASKS)).result())

        started = time.perf_counter()
        assert fan_out() == sum(n * n for n in range(TASKS))
        return time.perf_counter() - started

    def local_runner() -> DaskTaskRunner:
        kwargs = {"n_workers": 2, "threads_per_worker": os.cpu_count() or 1, "dashboard_address": ":0"}
        return DaskTaskRunner(cluster_class=LocalCluster, cluster_kwargs=kwargs)

    # Rounds alternate which runner goes first: the server's database grows with every run, and the
    # two cores are shared, so a fixed order favours whichever runs first.
    baseline, ours = [], []
    with (
        tempfile.TemporaryDirectory() as home,
        local_prefect_server(Path(home), env={"PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}) as api_url,
    ):
        with temporary_settings({PREFECT_API_URL: api_url}):
            for round_ in range(FLOW_ROUNDS):
                pair = [(baseline, local_runner), (ours, lambda: RemoteTaskRunner(n_workers=2, keepalive="30 seconds"))]
                for times, make in pair if round_ % 2 == 0 else reversed(pair):
                    times.append(timed(make()))
    ratios = ", ".join(f"{b / o:.2f}x" for b, o in zip(baseline, ours, strict=True))
    return (
        f"flow of {TASKS} tasks: {statistics.median(ours):.1f} s with RemoteTaskRunner vs {statistics.median(baseline):.1f} s with "
        f"DaskTaskRunner+LocalCluster (2 workers), medians of {FLOW_ROUNDS} -> "
        f"{statistics.median(baseline) / statistics.median(ours):.2f}x "
        f"throughput (goal >= 1.0x; rounds: {ratios})"
    )


def main():
    with bench_home("fanout"):
        yield from bench_map()
        yield from bench_start()
        yield bench_flow()


if __name__ == "__main__":
    for line in main():
        print(line, flush=True)
