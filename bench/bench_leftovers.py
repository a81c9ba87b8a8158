"""What 100 launches leave behind on the sandbox AWS and GCP, each launch ending in one of the ways a
machine ends: its payload succeeds, fails or cannot start, its owner ends it, its timeout, its lease
lost (an owner that stopped renewing), its agent killed (``kill -9``; EC2 and Compute Engine, whose
boot's backstop ends the VM). The goal for each figure is zero: no machine still running, no launch
secret (SSM parameters, Secret Manager secrets), and on GCP no machine record once the bucket's
lifecycle rule (set by the pool's provisioning, as ``work-pool create --provision-infra`` sets it)
has had its days: the sandbox moves the rule's clock 8 days, and records of ended machines stay a
week for ``machines ls``. On AWS a machine's record is its instance's tags, which go with it.
Every launch carries a secret (``BootPayload.secrets``), so that each has a launch secret to leave.
Baseline: the same counts taken before the launches (zero on a fresh sandbox), so that a figure is
what the launches added; each way's line counts what its own launches left (by machine and launch id)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import bench_home, log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.providers.orphans: the agent found and killed

LAUNCHES = int(os.environ.get("BENCH_LEFTOVER_LAUNCHES", "100"))
# The clouds measured, by label (default all three): a run of one on a host too busy for all of them.
CLOUDS = {name.strip() for name in os.environ.get("BENCH_LEFTOVER_CLOUDS", "EC2,Compute Engine,Cloud Run").split(",")}
WAVE = 25  # launches booting at once (2 cores)
STARTED_WITHIN = 300.0
ENDED_WITHIN = 240.0  # the slowest way: a killed agent's backstop, keepalive 30 s + lease interval 30 s
SECRETS = {"BENCH_LEFTOVERS_TOKEN": "not-a-real-secret"}  # each launch's secret environment: a launch secret to leave behind


@dataclass
class Way:
    """One way a launch ends: its payload, its spec's extra fields, and what the owner does to it."""

    name: str
    command: list[str]
    spec: dict = field(default_factory=dict)
    renewed: bool = True  # the owner renews its lease until it ends
    ended_by_owner: bool = False
    agent_killed: bool = False


WAYS = [
    Way("payload succeeds", ["true"]),
    Way("payload fails", ["sh", "-c", "exit 3"]),
    Way("payload cannot start", ["/no/such/program"]),
    Way("ended by its owner", ["sleep", "900"], ended_by_owner=True),
    Way("its timeout", ["sleep", "900"], {"timeout": 5}),
    Way("its lease lost", ["sleep", "900"], renewed=False),
    Way("its agent killed", ["sleep", "900"], agent_killed=True),
]


@dataclass
class Cloud:
    """One machine kind of a sandbox cloud, and how to count what launches leave there."""

    label: str
    provider: object
    secrets: Callable[[], set[str]]  # the launches with a secret kept
    records: Callable[[], set[str]] | None  # the machines with a record; None: none kept (EC2: the instance's tags)
    local_machine: Callable[[str], str | None] | None  # a machine id -> its sandbox machine (None: agents not killable)


@dataclass
class Launched:
    """One launch of a wave: how it ends, its one machine and its launch id."""

    way: Way
    machine_id: str
    launch_id: str | None


def run_wave(cloud: Cloud, ways: list[Way], scratch: Path) -> list[Launched]:
    """Launches one machine per way in ``ways``, drives each to its end, and waits until all ended."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.spec import MachineSpec
    from tests.providers.orphans import agent_pids, kill_agent, renewing

    provider = cloud.provider
    launched: list[tuple[Way, str, Path]] = []
    renewed: list[str] = []  # renewed from the first launch on: a wave's launches take a while
    launch_ids: dict[str, str | None] = {}
    with renewing(lambda: provider.renew_leases(list(renewed)), every=5):
        for way in ways:
            marker = scratch / f"started-{time.monotonic_ns()}"
            command = ["sh", "-c", f'touch {marker}; exec "$@"', "payload", *way.command]
            [machine] = provider.launch(MachineSpec(cpu=2, keepalive=30, **way.spec), BootPayload(command, secrets=SECRETS))
            launched.append((way, machine.id, marker))
            launch_ids[machine.id] = machine.details.get("launch") or provider.describe(machine.id).details.get("launch")
            if way.renewed:
                renewed.append(machine.id)
        deadline = time.monotonic() + STARTED_WITHIN
        waiting = {machine_id: marker for way, machine_id, marker in launched if way.ended_by_owner or way.agent_killed}
        while waiting := {machine_id: marker for machine_id, marker in waiting.items() if not marker.exists()}:
            for machine in provider.list(include_terminated=True):
                if machine.id in waiting and machine.state == "terminated":  # nothing left to end or kill: counted all the same
                    log.info("%s: %s ended before its payload started: %s", cloud.label, machine.id, machine.reason)
                    del waiting[machine.id]
            if waiting and time.monotonic() > deadline:
                described = "; ".join(f"{machine_id}: {provider.describe(machine_id)}" for machine_id in waiting)
                raise TimeoutError(f"payloads not started within {STARTED_WITHIN:.0f} s: {described}")
            time.sleep(1)
        time.sleep(2)  # past the agents' first lease read
        provider.terminate([machine_id for way, machine_id, _ in launched if way.ended_by_owner], reason="ended by its owner")
        for way, machine_id, _ in launched:
            local = cloud.local_machine(machine_id) if way.agent_killed else None
            if way.agent_killed and not (local and agent_pids(local)):  # ended already: say how, for the log
                log.info("%s: no agent left to kill on %s: %s", cloud.label, machine_id, provider.describe(machine_id))
            elif way.agent_killed:
                kill_agent(local)
        ids = [machine_id for _, machine_id, _ in launched]
        deadline = time.monotonic() + ENDED_WITHIN
        while True:
            alive = [m.id for m in provider.list(include_terminated=True) if m.id in ids and m.state != "terminated"]
            if not alive:
                break
            if time.monotonic() > deadline:
                log.info("not ended within %.0f s: %s; ending them", ENDED_WITHIN, alive)
                provider.terminate(alive, reason="bench: not ended in time")
                break
            time.sleep(1)
        # The owner's next round, as the product's LeaseKeeper does: it stops renewing a machine only once
        # a renewal reports it ended, and that report is what lets the launch's secret go.
        provider.renew_leases(list(renewed))
    return [Launched(way, machine_id, launch_ids[machine_id]) for way, machine_id, _ in launched]


def measure(cloud: Cloud, ways: list[Way], scratch: Path) -> tuple[list[str], bool]:
    """Its lines (the cloud's, then each way's), and whether every figure met its goal (zero)."""
    count_records = cloud.records or set
    before = (cloud.secrets(), count_records())
    chosen = [way for way in ways if cloud.local_machine is not None or not way.agent_killed]
    plan = [chosen[n % len(chosen)] for n in range(LAUNCHES)]
    started, launched = time.monotonic(), []
    for first in range(0, len(plan), WAVE):
        launched += run_wave(cloud, plan[first : first + WAVE], scratch)
        log.info("%s: %d of %d launches ended", cloud.label, min(first + WAVE, len(plan)), len(plan))
    cloud.provider.list(include_terminated=True)  # what an owner does next: its sweep of ended launches runs
    running = {m.id for m in cloud.provider.list() if m.state != "terminated"}
    secrets, records = cloud.secrets() - before[0], count_records() - before[1]
    ways_run = ", ".join(sorted({way.name for way in plan}))
    met = not (running or secrets or records)
    records_left = f"{len(records)} machine records" if cloud.records else "no machine records kept (n/a)"
    lines = [
        f"{cloud.label}: {len(plan)} launches ({ways_run}) in {time.monotonic() - started:.0f} s left "
        f"{len(running)} machines running, {len(secrets)} launch secrets, {records_left} (goal 0 each: {'met' if met else 'MISSED'})"
    ]
    for way in chosen:
        own = [launch for launch in launched if launch.way is way]
        machines = {launch.machine_id for launch in own}
        left = (len(machines & running), len({launch.launch_id for launch in own} & secrets), len(machines & records))
        shown = f"{left[0]} machines, {left[1]} secrets" + (f", {left[2]} records" if cloud.records else "")
        lines.append(f"{cloud.label}, {way.name}: {len(own)} launches left {shown}")
    return lines, met


def main() -> Iterator[str]:
    """Each cloud's line as it is measured; fails at the end if any figure missed its goal (zero)."""
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.providers.gcp.infra import provision
    from prefect_remote.providers.gcp.provider import GCPProvider
    from prefect_remote.sandbox.aws import SandboxAWS
    from prefect_remote.sandbox.gcp.compute.instances import ID_PREFIX
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP

    missed = []
    if "EC2" in CLOUDS:
        with bench_home("leftovers-aws") as scratch, SandboxAWS(home=scratch / "sandbox") as aws:
            aws.runner.shared.append(str(scratch))
            os.environ.update(aws.exports())
            ssm = aws.client("ssm")

            def parameters() -> set[str]:
                pages = ssm.get_paginator("describe_parameters").paginate(
                    ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": ["/prefect-remote/"]}]
                )
                return {parameter["Name"].rsplit("/", 1)[-1] for page in pages for parameter in page["Parameters"]}

            with aws.warm(True), aws.vms():
                cloud = Cloud("EC2", AWSProvider(lease_interval=30), parameters, None, aws.runner.machine_of)
                lines, met = measure(cloud, WAYS, scratch)
                if not met:
                    missed.append(cloud.label)
                yield from lines
    if CLOUDS & {"Compute Engine", "Cloud Run"}:
        with bench_home("leftovers-gcp") as scratch, SandboxGCP(home=scratch / "sandbox") as gcp:
            gcp.runner.shared.append(str(scratch))
            os.environ.update(gcp.exports())
            from google.cloud import secretmanager_v1, storage

            secret_manager = secretmanager_v1.SecretManagerServiceClient(transport="rest", client_options={"api_endpoint": gcp.url})
            bucket, _, prefix = gcp.store.removeprefix("gs://").partition("/")

            def secrets() -> set[str]:
                names = [s.name.rsplit("/", 1)[-1] for s in secret_manager.list_secrets(parent=f"projects/{gcp.project}")]
                return {name[name.find("launch-") :] if "launch-" in name else name for name in names if name.startswith("prefect-remote-")}

            def records() -> set[str]:
                gcp.advance_lifecycle(8)  # the records' rule: a week after a machine's end
                blobs = storage.Client(project=gcp.project).list_blobs(bucket, prefix=f"{prefix}/machines/")
                return {blob.name.rsplit("/", 1)[-1].removesuffix(".json") for blob in blobs}

            with gcp.warm(True), gcp.vms():
                compute_provider = GCPProvider(service="compute", lease_interval=30)
                provision(compute_provider, "bench-leftovers", store=gcp.store, say=log.info)  # as work-pool create: the records' rule
                compute = Cloud(
                    "Compute Engine",
                    compute_provider,
                    secrets,
                    records,
                    lambda machine_id: gcp.runner.machine_of(ID_PREFIX + machine_id),
                )
                cloud_run = Cloud("Cloud Run", GCPProvider(service="cloud-run", lease_interval=30), secrets, records, None)
                for cloud in (compute, cloud_run):
                    if cloud.label in CLOUDS:
                        lines, met = measure(cloud, WAYS, scratch)
                        if not met:
                            missed.append(cloud.label)
                        yield from lines
    if missed:  # a zero goal missed is a failure, not a figure
        raise AssertionError(f"launches left something behind on {', '.join(missed)} (goal: nothing)")


if __name__ == "__main__":
    for figure in main():
        print(figure)
