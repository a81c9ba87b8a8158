"""The controller on a cluster's scheduler, without machines: its lease renewal is batched."""

from __future__ import annotations

import asyncio
import functools

from prefect_remote.cluster import controller as controller_module
from prefect_remote.cluster.controller import ClusterController
from prefect_remote.cluster.plan import ClusterPlan, WorkerPlan, worker_lease
from prefect_remote.lease import LeaseKeeper, renewal_interval
from prefect_remote.providers.base import Machine
from prefect_remote.providers.local import LocalProvider


class CountingProvider(LocalProvider):
    """Records every renew_leases call; launches nothing."""

    def __init__(self, **options) -> None:
        self.renewals: list[list[str]] = []

    def renew_leases(self, machine_ids):
        self.renewals.append(list(machine_ids))
        return []


def test_the_scheduler_renews_itself_and_500_workers_in_one_call_per_interval(monkeypatch):
    now = [0.0]
    provider = CountingProvider()
    monkeypatch.setattr(controller_module, "provider_class", lambda name: lambda **options: provider)
    monkeypatch.setattr(controller_module, "LeaseKeeper", functools.partial(LeaseKeeper, clock=lambda: now[0]))
    workers = [Machine(id=f"m-w{i}", provider="local", state="pending", instance_type="local", created=0.0) for i in range(500)]
    monkeypatch.setattr(controller_module, "launch_workers", lambda *args, **kwargs: workers)
    worker = WorkerPlan(spec={}, secrets={}, command=["python"], env={}, nthreads=1, memory_limit=2**30)
    plan = ClusterPlan(
        name="c",
        provider="counting",
        provider_options={},
        credentials="{}",
        keepalive=30.0,
        idle_timeout=None,
        minimum=0,
        maximum=500,
        adaptive=True,
        worker=worker,
    )
    controller = ClusterController(plan, "m-scheduler")
    asyncio.run(controller.pool.scale_up(500))
    for _ in range(400):  # 50 simulated seconds, checked as often as the controller's loop ticks
        now[0] += 0.125
        controller.leases.renew_due()
    interval = renewal_interval(min(plan.keepalive, worker_lease(provider)), provider.lease_interval)
    assert len(provider.renewals) == int(50 // interval) == 7
    assert all(sorted(ids) == sorted(["m-scheduler", *(m.id for m in workers)]) for ids in provider.renewals)
