"""The aws provider's control plane at scale: API calls and wall time to launch, renew, list and end 10, 100 and 500 machines.

On the sandbox AWS with instances that are not booted (``run_instances=False``), so that what is
measured is the provider's traffic, not the machines': one ``launch(count=N)``, one
``renew_leases`` of all N (what an owner does once per lease interval), one ``list`` by tag, one
``terminate`` of all N. Each figure is next to its baseline from the same run: the same phase for 10
machines, as calls per machine (the goal: calls per machine fall as the count grows, and a renewal
is one ``DescribeInstances`` per 200 ids and one ``CreateTags`` per 1,000).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from common import bench_home

COUNTS = [int(count) for count in os.environ.get("BENCH_CONTROL_PLANE_COUNTS", "10,100,500").split(",")]


def measure(calls: Any, action: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int, float, str]:
    """Runs ``action(*args, **kwargs)``; what it returned, the API calls it made, its seconds, and its calls by name."""
    calls.clear()
    started = time.monotonic()
    result = action(*args, **kwargs)
    seconds = time.monotonic() - started
    names = ", ".join(f"{name.rpartition(':')[2]} {n}" for name, n in calls.most_common(6))
    return result, sum(calls.values()), seconds, names


def at_scale(
    calls: Any, provider: Any, spec: Any, payload: Any, listing_lag: float = 0.0, goals: Mapping[str, Callable[[int], int]] | None = None
) -> list[str]:
    """For each of ``COUNTS``: one launch of that many machines, one renewal of their leases, one
    listing by tag (``listing_lag`` seconds after the launch at least: the cloud's listings leave out
    instances younger than that) and one end, with the API calls (``calls``: the sandbox's counter)
    and seconds of each, and calls per machine against the first count's, as lines; ``goals``: the
    most calls each phase should take for a count, said met or missed beside its figure."""
    from prefect_remote.lease import renewal_interval

    per_machine: dict[str, float] = {}
    renewals_per_minute = 60 / renewal_interval(spec.keepalive, provider.lease_interval)
    lines: list[str] = []
    for count in COUNTS:
        tags = {"bench": f"n{count}"}
        machines, launch_calls, launch_s, launch_names = measure(calls, provider.launch, spec, payload, count=count, tags=tags)
        ids = [machine.id for machine in machines]
        launched = time.monotonic()
        _, renew_calls, renew_s, renew_names = measure(calls, provider.renew_leases, ids)
        time.sleep(max(0.0, launched + listing_lag - time.monotonic()))
        listed, list_calls, list_s, _ = measure(calls, provider.list, tags)
        _, end_calls, end_s, end_names = measure(calls, provider.terminate, ids, reason="bench")
        assert len(listed) == count, f"listed {len(listed)} of {count} machines"
        for phase, made, seconds, names in (
            ("launch", launch_calls, launch_s, launch_names),
            ("renew", renew_calls, renew_s, renew_names),
            ("list", list_calls, list_s, ""),
            ("end", end_calls, end_s, end_names),
        ):
            rate = made / count
            baseline = per_machine.setdefault(phase, rate)
            ratio = f"{rate / baseline:.2f}x the calls per machine of {COUNTS[0]}" if count != COUNTS[0] else "baseline"
            detail = f" ({names})" if names else ""
            plural = "s" if made != 1 else ""
            if phase == "renew":  # what an owner's renewals cost while the machines run
                detail = f", {rate * renewals_per_minute:.3f} per machine-minute at {renewals_per_minute:.0f} renewals a minute" + detail
            goal = (goals or {}).get(phase)
            if goal is not None:
                most = goal(count)
                detail += f"; goal at most {most}: {'met' if made <= most else 'MISSED'}"
            lines.append(f"{count} machines, {phase}: {made} call{plural} in {seconds:.2f} s, {rate:.3f} per machine; {ratio}{detail}")
    return lines


def main() -> list[str]:
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.sandbox.aws import SandboxAWS
    from prefect_remote.spec import MachineSpec

    with bench_home("control-plane") as scratch, SandboxAWS(home=scratch / "sandbox", run_instances=False) as aws:
        os.environ.update(aws.exports())
        provider = AWSProvider()
        spec, payload = MachineSpec(cpu=1, keepalive="10 minutes"), BootPayload(["true"])
        provider.launch(spec, payload)  # the first launch's one-time work (security group, agent wheel, prices) is not the figure
        return at_scale(aws.calls, provider, spec, payload, listing_lag=aws.ec2.unlisted_seconds)


if __name__ == "__main__":
    for line in main():
        print(line)
