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


def cluster_plan(*, minimum: int, maximum: int, adaptive: bool) -> ClusterPlan:
    """A cluster's plan on a provider the test sets (``provider_class`` patched), kept 30 s without a client."""
    worker = WorkerPlan(spec={}, secrets={}, command=["python"], env={}, nthreads=1, memory_limit=2**30)
    return ClusterPlan(
        name="c",
        provider="test",
        provider_options={},
        credentials="{}",
        keepalive=30.0,
        idle_timeout=None,
        minimum=minimum,
        maximum=maximum,
        adaptive=adaptive,
        worker=worker,
    )


def test_the_scheduler_renews_itself_and_500_workers_in_one_call_per_interval(monkeypatch):
    now = [0.0]
    provider = CountingProvider()
    monkeypatch.setattr(controller_module, "provider_class", lambda name: lambda **options: provider)
    monkeypatch.setattr(controller_module, "LeaseKeeper", functools.partial(LeaseKeeper, clock=lambda: now[0]))
    workers = [Machine(id=f"m-w{i}", provider="local", state="pending", instance_type="local", created=0.0) for i in range(500)]
    monkeypatch.setattr(controller_module, "launch_workers", lambda *args, **kwargs: workers)
    plan = cluster_plan(minimum=0, maximum=500, adaptive=True)
    controller = ClusterController(plan, "m-scheduler")
    asyncio.run(controller.pool.scale_up(500))
    for _ in range(400):  # 50 simulated seconds, checked as often as the controller's loop ticks
        now[0] += 0.125
        controller.leases.renew_due()
    interval = renewal_interval(min(plan.keepalive, worker_lease(provider)), provider.lease_interval)
    assert len(provider.renewals) == int(50 // interval) == 7
    assert all(sorted(ids) == sorted(["m-scheduler", *(m.id for m in workers)]) for ids in provider.renewals)


def test_a_refused_permission_closes_the_cluster_naming_it_instead_of_leaving_clients_waiting(monkeypatch):
    """The cloud refusing the controller a permission (here: listing its workers) does not heal: past
    REFUSED_LIMIT in a row the cluster closes, saying why; other errors, and a refusal that ends, do not."""
    import time

    import pytest

    from prefect_remote.errors import AccessDenied

    outcome: list[Exception | None] = []

    class Refusing(CountingProvider):
        def list(self, tags=None, include_terminated=False):
            error = outcome.pop(0)
            if error is not None:
                raise error
            return []

    class Scheduler:
        def __init__(self) -> None:
            self.clients: dict = {}
            self.workers: dict = {}
            self.closed: list[str] = []

        async def close(self, reason: str) -> None:
            self.closed.append(reason)

        def log_event(self, *args) -> None:
            pass

    monkeypatch.setattr(controller_module, "provider_class", lambda name: lambda **options: Refusing())
    monkeypatch.setattr(controller_module, "REFUSED_LIMIT", 0.2)
    controller = ClusterController(cluster_plan(minimum=1, maximum=1, adaptive=False), "m-scheduler")
    controller.scheduler = scheduler = Scheduler()
    denied = AccessDenied("Google Cloud refused run.jobs.list: grant it roles/run.developer")

    async def refresh_after(seconds: float, error: Exception | None) -> None:
        time.sleep(seconds)
        outcome.append(error)
        try:
            await controller.pool.refresh()
        except Exception as raised:
            assert raised is error

    async def scenario() -> None:
        await refresh_after(0, denied)
        await refresh_after(0.25, None)  # it healed (a grant took effect): the streak ends
        await refresh_after(0, denied)
        await refresh_after(0.25, RuntimeError("a hiccup"))  # not a refusal: retried, for ever
        assert controller._closing is None and scheduler.closed == []
        await refresh_after(0, denied)
        await refresh_after(0.25, denied)
        assert controller._closing is not None
        await controller._closing

    asyncio.run(scenario())
    [reason] = scheduler.closed
    assert reason == f"the cloud refused listing workers: {denied}"
    assert any(message.startswith("closing: the cloud has refused listing workers for") for _, message in controller.events)
    with pytest.raises(AccessDenied):  # what the gcp provider raises for a 403 is one
        from google.api_core.exceptions import Forbidden

        from prefect_remote.providers.gcp.clients import translated

        with translated("run.jobs.list", project="p"):
            raise Forbidden("Permission 'run.jobs.list' denied on resource")
