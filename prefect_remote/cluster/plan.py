"""What a cluster's machines need to know, decided once by the process that creates the cluster.

The plan travels to the scheduler's machine through the provider's secret channel (it holds the
TLS key and the workers' secret environment); the scheduler launches workers from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

PLAN_ENV = "PREFECT_REMOTE_CLUSTER_PLAN"  # secret: the whole plan, for the scheduler
CREDENTIALS_ENV = "PREFECT_REMOTE_CLUSTER_CREDENTIALS"  # secret: the TLS pair, for workers
SCHEDULER_ENV = "PREFECT_REMOTE_SCHEDULER_ADDRESS"
WORKER_ENV = "PREFECT_REMOTE_WORKER"  # JSON: nthreads, memory_limit, death_timeout

# Tags every cluster machine carries; found again by them (warm attach, adopting workers).
CLUSTER_TAG = "dask-cluster"
ROLE_TAG = "dask-role"
PORT_TAG = "dask-port"
DASHBOARD_TAG = "dask-dashboard-port"

# How long a worker machine outlives its owner's last lease renewal (its scheduler, or the creator
# while the scheduler boots; see worker_lease), and how long a worker keeps trying to reach a
# scheduler at start.
WORKER_LEASE = 20.0
WORKER_DEATH_TIMEOUT = 120.0


@dataclass
class WorkerPlan:
    """How to launch one worker machine."""

    spec: dict[str, Any]  # MachineSpec fields, public environ only
    secrets: dict[str, str]  # the spec's secret environ, revealed
    command: list[str]
    env: dict[str, str]
    nthreads: int
    memory_limit: int


@dataclass
class ClusterPlan:
    name: str
    provider: str
    provider_options: dict[str, Any]
    credentials: str  # ClusterCredentials JSON
    keepalive: float
    idle_timeout: float | None
    minimum: int
    maximum: int
    adaptive: bool
    worker: WorkerPlan
    scheduler_port: int = 8786
    dashboard_port: int = 8787
    tags: dict[str, str] = field(default_factory=dict)
    # Where the workers' software environment is (the creator's store), and how stock-image workers
    # get the agent (the creator's AgentSource, as a dict): the scheduler's machine launches workers
    # with them, since it has neither the creator's store settings nor a prefect-remote it could build.
    store: str | None = None
    agent: dict[str, Any] | None = None
    # With an image: the image, and the creator's Dask (versions.dask_versions), which the image's must
    # match; the scheduler compares them before it starts, so a mismatch starts no worker.
    image: str | None = None
    client_versions: dict[str, str] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClusterPlan:
        data = json.loads(text)
        return cls(**{**data, "worker": WorkerPlan(**data["worker"])})

    @classmethod
    def from_environ(cls) -> ClusterPlan:
        return cls.from_json(os.environ[PLAN_ENV])

    def agent_source(self):
        """The creator's :class:`~prefect_remote.machine.boot.AgentSource` for the workers, or None (the provider's own)."""
        if self.agent is None:
            return None
        from prefect_remote.machine.boot import AgentSource

        return AgentSource(**{**self.agent, "extras": tuple(self.agent["extras"]), "bootstrap": tuple(self.agent["bootstrap"])})


def worker_payload(plan: ClusterPlan, scheduler_address: str):
    """The boot payload of a worker machine of ``plan``'s cluster."""
    from prefect_remote.providers.base import BootPayload

    options = {"nthreads": plan.worker.nthreads, "memory_limit": plan.worker.memory_limit, "death_timeout": WORKER_DEATH_TIMEOUT}
    return BootPayload(
        command=plan.worker.command,
        env={**plan.worker.env, SCHEDULER_ENV: scheduler_address, WORKER_ENV: json.dumps(options)},
        secrets={CREDENTIALS_ENV: plan.credentials},  # (the spec's secret environ travels with the spec)
        agent_code=plan.image is not None,  # in the image: the agent's prefect_remote mounted in
    )


def worker_lease(provider) -> float:
    """A worker machine's keepalive on ``provider``: ``WORKER_LEASE``, or two of the provider's lease
    intervals where those are longer (a cloud reading leases every 30 s cannot keep 20 s).

    >>> from prefect_remote.providers.local import LocalProvider
    >>> worker_lease(LocalProvider)
    20.0
    """
    return max(WORKER_LEASE, 2 * provider.lease_interval)


def launch_workers(provider, plan: ClusterPlan, scheduler_address: str, count: int, *, owner: str, controller: str | None = None) -> list:
    """Starts ``count`` worker machines for ``plan``'s cluster; they end ``worker_lease(provider)``
    after their owner stops renewing their leases, or as soon as their scheduler is gone. The
    cluster's creator names the scheduler's machine as their ``controller``: it keeps them from then on."""
    from prefect_remote.spec import MachineSpec

    # Workers are reached by their scheduler only, inside the network: no ingress from outside.
    wire = {**plan.worker.spec, "keepalive": worker_lease(provider), "allow_ingress_from": "none"}
    spec = MachineSpec.from_wire(wire, plan.worker.secrets)
    tags = {**plan.tags, CLUSTER_TAG: plan.name, ROLE_TAG: "worker"}
    return provider.launch(
        spec, worker_payload(plan, scheduler_address), count=count, tags=tags, owner=owner, agent=plan.agent_source(), controller=controller
    )
