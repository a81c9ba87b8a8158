"""A 10-machine EC2 launch on the sandbox AWS with 5% of EC2 calls throttled, against none throttled.

Each round launches 10 machines in one ``launch()``, waits until each runs with its public IP (as a
cluster's client waits for its scheduler), then ends them and waits until they have ended: the
wall time and the API calls the sandbox's server answered (throttled ones included). The sandbox's
strict EC2 keeps its eventual consistency on (new ids unknown for 1 s, instances pending for 2 s);
its instances do not boot (the control plane alone). Baseline: the same rounds with no throttling,
in the same run. Goal: at most 1.5x the wall time, and no failed launch (botocore's standard retry
mode rides the throttling out).
"""

from __future__ import annotations

import os
import statistics
import time

from common import bench_home

MACHINES = 10
THROTTLED = 0.05
ROUNDS = int(os.environ.get("BENCH_AWS_THROTTLED_ROUNDS", "5"))


def one_round(aws, throttle: float) -> tuple[float, int, int, bool]:
    """Seconds, API calls, calls throttled and whether it succeeded, for one launch-run-end of
    ``MACHINES`` machines."""
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.spec import MachineSpec

    aws.ec2.throttle = throttle
    before, throttled, started = aws.calls.copy(), aws.ec2.throttled, time.monotonic()
    try:
        provider = AWSProvider()
        machines = provider.launch(MachineSpec(cpu=1), BootPayload(["sleep", "600"]), count=MACHINES)
        pending = {machine.id for machine in machines}
        while pending:
            time.sleep(provider.min_poll)
            pending = {i for i in pending if not ((m := provider.describe(i)).state == "running" and m.public_address)}
        provider.terminate([machine.id for machine in machines])
        provider.wait([machine.id for machine in machines], timeout=60)
        ok = True
    except Exception as error:  # a failed launch is a figure, not the end of the benchmark
        print(f"round failed: {type(error).__name__}: {error}")
        ok = False
    finally:
        aws.ec2.throttle = 0.0
    return time.monotonic() - started, sum((aws.calls - before).values()), aws.ec2.throttled - throttled, ok


def main() -> list[str]:
    from prefect_remote.sandbox.aws import SandboxAWS

    with bench_home("aws-throttled") as scratch, SandboxAWS(home=scratch / "sandbox", run_instances=False) as aws:
        os.environ.update(aws.exports())
        aws.ec2.pending_seconds = 2.0  # (the figures below were measured so)
        one_round(aws, 0.0)  # warm: the instance type catalog, the security groups
        results: dict[float, list[tuple[float, int, int, bool]]] = {0.0: [], THROTTLED: []}
        for _ in range(ROUNDS):  # interleaved, so that both see the same host
            for throttle in results:
                results[throttle].append(one_round(aws, throttle))
    lines = []
    for throttle, rounds in results.items():
        seconds = statistics.median(r[0] for r in rounds)
        calls = statistics.median(r[1] for r in rounds)
        throttled, failed = sum(r[2] for r in rounds), sum(not r[3] for r in rounds)
        lines.append(
            f"{MACHINES}-machine launch, {throttle:.0%} of EC2 calls throttled: {seconds:.2f} s, {calls:.0f} calls "
            f"(median of {len(rounds)}; {throttled} calls throttled in all), {failed} failed"
        )
    base, throttled = (statistics.median(r[0] for r in results[t]) for t in (0.0, THROTTLED))
    lines.append(f"throttled / none: {throttled / base:.2f} x wall time (goal <= 1.5 x, no failed launch)")
    return lines
