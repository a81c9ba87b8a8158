"""The sandbox clouds as the cluster contract (``contract.py``) sees them: one adapter per cloud
that lists prefect-remote's machines through the cloud's own API (a plain boto3 EC2 client, a plain
google-cloud-compute client), ends one as the cloud itself would, and knows what "ended" looks like
there: an ended EC2 instance stays listed as ``terminated``; a deleted Compute Engine VM is gone
(``STOPPING`` until its machine has ended)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG
from tests.conftest import use_aws_sandbox, use_gcp_sandbox

LEASE_INTERVAL = 5.0  # PREFECT_REMOTE_<CLOUD>_LEASE_INTERVAL, as use_<cloud>_sandbox sets it


@dataclass(frozen=True)
class VM:
    """One machine as its cloud's API lists it."""

    id: str
    state: str  # the cloud's word: "running", "RUNNING"…
    running: bool
    type: str  # the instance type or machine type
    spot: bool
    labels: Mapping[str, str]  # what listings filter on: EC2 tags, Compute Engine labels
    tags: Mapping[str, str]  # the launch's tags as the machine carries them (a VM's in its metadata, unsanitised)
    spec: str | None  # the spec summary it was launched with
    launch: str | None


class Cloud:
    """One sandbox cloud, for the module that holds its clusters (see :func:`cloud` in conftest.py)."""

    name: ClassVar[str]
    cheapest_2_cpu: ClassVar[str]  # the cheapest 2-vCPU type that is no shared core
    id_prefix: ClassVar[str]  # of its machine ids
    store_bucket: ClassVar[str] = "prefect-remote-sandbox"  # the sandbox store's bucket (prefix store/)
    # A spot stock-out with spot_with_fallback: what the provider says as it falls back (the fragment
    # both it and the cluster's controller log), and the stock-out the message names.
    fallback_said: ClassVar[str]
    stock_out_said: ClassVar[str]

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox

    @staticmethod
    def use_sandbox(monkeypatch: pytest.MonkeyPatch, sandbox: Any) -> None:
        raise NotImplementedError

    # -- listing -----------------------------------------------------------------------------------
    def machines(self, cluster: str | None = None, *, alive: bool = True) -> list[VM]:
        """prefect-remote's machines (of ``cluster``), those still starting or running unless ``alive=False``."""
        raise NotImplementedError

    def role(self, cluster: str, name: str) -> list[VM]:
        return [vm for vm in self.machines(cluster) if vm.labels[ROLE_TAG] == name]

    def left(self, cluster: str) -> list[VM]:
        """What the cloud still has of ``cluster``: nothing, once every machine of it has ended."""
        raise NotImplementedError

    def ended(self, ids: Iterable[str]) -> bool:
        """Whether every machine of ``ids`` has ended, as the cloud shows it."""
        raise NotImplementedError

    def all_ids(self) -> set[str]:
        """Every machine the cloud holds, in any state, launched by prefect-remote or not."""
        raise NotImplementedError

    # -- what the machines run on ------------------------------------------------------------------
    def runs_as_a_machine(self, vm: VM) -> bool:
        """Whether ``vm`` runs as one machine of the sandbox's instance runner."""
        raise NotImplementedError

    def keepalive(self, vm: VM) -> float:
        """The keepalive ``vm`` was launched with, as the provider recorded it."""
        raise NotImplementedError

    def store_keys(self, prefix: str) -> list[str]:
        """The names of the objects in the sandbox store's bucket under ``prefix``."""
        raise NotImplementedError

    # -- faults ------------------------------------------------------------------------------------
    def end_mid_work(self, machine_id: str) -> None:
        """Ends a running machine from outside, as the cloud does to a spot machine it takes back."""
        raise NotImplementedError

    @contextlib.contextmanager
    def spot_refused(self) -> Iterator[None]:
        """No spot capacity (on-demand/standard capacity stays) while the block runs."""
        raise NotImplementedError
        yield

    def killed_client_bound(self, keepalive: float) -> float:
        """Seconds within which every machine of a cluster whose client was killed has ended: the
        controller on the scheduler closes the cluster ``keepalive`` (+ one 0.5 s tick) after the kill,
        ending the workers' machines, then the scheduler's agent ends its own. Should the scheduler's
        loop be wedged (or starved of CPU on a loaded host) instead, nothing renews its lease (only that
        loop does) and its agent ends it once the lease is ``keepalive + KEEPALIVE_BACKSTOP`` old, read
        every lease interval. Plus 5 s for the sandbox to end machines (an instance is shutting-down,
        a VM STOPPING, until its machine has stopped)."""
        from prefect_remote.cluster.remote import KEEPALIVE_BACKSTOP

        return keepalive + KEEPALIVE_BACKSTOP + LEASE_INTERVAL + 5.0

    def end_all_but(self, shared: set[str]) -> None:
        """Ends every machine not of a cluster in ``shared``, and waits until they have ended."""
        raise NotImplementedError


class AWS(Cloud):
    name = "aws"
    cheapest_2_cpu = "t3a.nano"
    id_prefix = "i-"
    fallback_said = "spot capacity unavailable for t3a.nano in us-east-1 (InsufficientInstanceCapacity); launching on-demand"
    stock_out_said = "spot capacity unavailable for t3a.nano in us-east-1 (InsufficientInstanceCapacity)"
    ALIVE = ("pending", "running")

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self.ec2 = sandbox.client("ec2")  # its own credentials: tests take the environment's away
        self.s3 = sandbox.client("s3")

    use_sandbox = staticmethod(use_aws_sandbox)

    def instances(self, cluster: str | None = None, *, alive: bool = True) -> list[dict]:
        from prefect_remote.providers.aws.provider import LAUNCH_TAG

        filters = [{"Name": "tag-key", "Values": [LAUNCH_TAG]}]
        if cluster:
            filters.append({"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]})
        if alive:
            filters.append({"Name": "instance-state-name", "Values": list(self.ALIVE)})
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]

    def machines(self, cluster: str | None = None, *, alive: bool = True) -> list[VM]:
        from prefect_remote.providers.aws.provider import LAUNCH_TAG

        found = []
        for instance in self.instances(cluster, alive=alive):
            tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
            found.append(
                VM(
                    id=instance["InstanceId"],
                    state=instance["State"]["Name"],
                    running=instance["State"]["Name"] == "running",
                    type=instance["InstanceType"],
                    spot=instance.get("InstanceLifecycle") == "spot",
                    labels=tags,
                    tags=tags,
                    spec=tags.get("prefect-remote:spec"),
                    launch=tags.get(LAUNCH_TAG),
                )
            )
        return found

    def state(self, instance_id: str) -> str:
        return self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]

    def left(self, cluster: str) -> list[VM]:
        return self.machines(cluster)  # a terminated instance stays listed, as on AWS: what is left is what runs

    def ended(self, ids: Iterable[str]) -> bool:
        return all(self.state(i) == "terminated" for i in ids)

    def all_ids(self) -> set[str]:
        pages = self.ec2.get_paginator("describe_instances").paginate()
        return {i["InstanceId"] for page in pages for reservation in page["Reservations"] for i in reservation["Instances"]}

    def runs_as_a_machine(self, vm: VM) -> bool:
        from prefect_remote.sandbox.instances import INSTANCE_TAG

        machines = self.sandbox.runner.machines.list({INSTANCE_TAG: vm.id})
        return len(machines) == 1 and machines[0].alive

    def keepalive(self, vm: VM) -> float:
        return float(vm.labels["prefect-remote:keepalive"])

    def store_keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.store_bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def end_mid_work(self, machine_id: str) -> None:
        self.ec2.terminate_instances(InstanceIds=[machine_id])

    @contextlib.contextmanager
    def spot_refused(self) -> Iterator[None]:
        with no_ec2_capacity(self.sandbox, spot=True):
            yield

    def end_all_but(self, shared: set[str]) -> None:
        leftover = [vm.id for vm in self.machines() if vm.labels.get(CLUSTER_TAG) not in shared]
        if leftover:
            self.ec2.terminate_instances(InstanceIds=leftover)
            self.sandbox.runner.wait_idle()


@contextlib.contextmanager
def no_ec2_capacity(sandbox: Any, *, spot: bool | None = None) -> Iterator[Any]:
    """No EC2 capacity (in every zone) for spot (``spot=True``), on-demand (False) or both (None)
    while the block runs, as the sandbox's server answers every client: this process's and the
    instances' (a cluster's scheduler launches its workers). Yields the sandbox's strict EC2, whose
    ``refuse()`` and ``clear()`` change that within the block."""
    refusal = sandbox.ec2.refuse("InsufficientInstanceCapacity", spot=spot)
    try:
        yield sandbox.ec2
    finally:
        if refusal in sandbox.ec2.refusals:
            sandbox.ec2.refusals.remove(refusal)
        sandbox.ec2.clear()


class GCP(Cloud):
    name = "gcp"
    cheapest_2_cpu = "e2-highcpu-2"
    id_prefix = "vm-"
    fallback_said = "as a standard VM (spot_with_fallback)"
    stock_out_said = "no spot capacity for e2-highcpu-2 in us-central1-c (ZONE_RESOURCE_POOL_EXHAUSTED)"  # the last zone tried
    ALIVE = ("PROVISIONING", "STAGING", "RUNNING")

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        from google.cloud import compute_v1

        # As the launcher's key has it (GOOGLE_APPLICATION_CREDENTIALS, set while the module runs).
        self.compute = compute_v1.InstancesClient(client_options={"api_endpoint": sandbox.url})

    use_sandbox = staticmethod(use_gcp_sandbox)

    def all_vms(self) -> list:
        """Every instance the sandbox's Compute Engine holds, in every zone and state."""
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListInstancesRequest(project=self.sandbox.project)
        return [vm for _, scoped in self.compute.aggregated_list(request=request) for vm in scoped.instances]

    def machines(self, cluster: str | None = None, *, alive: bool = True) -> list[VM]:
        from prefect_remote.providers.gcp.compute import LAUNCH_LABEL, SERVICE_LABEL

        found = []
        for vm in self.all_vms():
            labels = dict(vm.labels)
            if labels.get(SERVICE_LABEL) != "compute" or (cluster and labels.get(CLUSTER_TAG) != cluster):
                continue
            if alive and vm.status not in self.ALIVE:
                continue
            metadata = {item.key: item.value for item in vm.metadata.items}
            found.append(
                VM(
                    id=vm.name,
                    state=vm.status,
                    running=vm.status == "RUNNING",
                    type=vm.machine_type.rsplit("/", 1)[-1],
                    spot=vm.scheduling.provisioning_model == "SPOT",
                    labels=labels,
                    tags=json.loads(metadata.get("prefect-remote-tags", "{}")),
                    spec=metadata.get("prefect-remote-spec"),
                    launch=labels.get(LAUNCH_LABEL),
                )
            )
        return found

    def left(self, cluster: str) -> list[VM]:
        return self.machines(cluster, alive=False)  # a deleted VM is gone: what is left is any VM at all

    def ended(self, ids: Iterable[str]) -> bool:
        return not {vm.name for vm in self.all_vms()} & set(ids)

    def all_ids(self) -> set[str]:
        return {vm.name for vm in self.all_vms()}

    def runs_as_a_machine(self, vm: VM) -> bool:
        return bool(self.sandbox.runner.machine_of(f"gce:{vm.id}"))

    def keepalive(self, vm: VM) -> float:
        return float(json.loads(self._bucket().blob(f"store/machines/{vm.id}.json").download_as_text())["keepalive"])

    def store_keys(self, prefix: str) -> list[str]:
        return [blob.name for blob in self._bucket().list_blobs(prefix=prefix)]

    def _bucket(self) -> Any:
        from google.cloud import storage

        return storage.Client(project=self.sandbox.project).bucket(self.store_bucket)

    def end_mid_work(self, machine_id: str) -> None:
        self.sandbox.compute.preempt(machine_id, "DELETE")  # Google deletes it (a spot preemption)

    @contextlib.contextmanager
    def spot_refused(self) -> Iterator[None]:
        self.sandbox.compute.refuse(spot=True, times=None)  # no spot capacity in any zone of the region
        try:
            yield
        finally:
            self.sandbox.compute.lift_refusals()

    def end_all_but(self, shared: set[str]) -> None:
        leftover = [vm.name for vm in self.all_vms() if vm.labels.get(CLUSTER_TAG) not in shared]
        for name in leftover:
            self.sandbox.compute.delete(name)
        self.sandbox.runner.wait_idle()
        assert not [name for name in self.all_ids() if name in leftover]


CLOUDS: dict[str, type[Cloud]] = {"aws": AWS, "gcp": GCP}
