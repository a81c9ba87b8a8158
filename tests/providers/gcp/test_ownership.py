"""A gcp provider ends only its own pool's machines: not another pool's (another store's records, by
label), nor a VM prefect-remote never made, however its id is given (a mistyped `machines rm`, a
run's infrastructure_pid set through the Prefect API)."""

from __future__ import annotations

import secrets
import time

import pytest

from prefect_remote.errors import MachineNotFound
from prefect_remote.providers.base import BootPayload, Launch
from prefect_remote.providers.gcp import GCPProvider
from prefect_remote.spec import MachineSpec

SLEEP = BootPayload(["sleep", "120"])


@pytest.fixture
def pools(gcp_env, monkeypatch):
    """This pool's provider, and another pool's in the same project (its own store), with both services."""
    ours = GCPProvider()
    ours.records.label  # noqa: B018  (this pool's store is read now, before the other pool's is set)
    store = gcp_env.exports()["PREFECT_REMOTE_STORE"].rstrip("/")
    monkeypatch.setenv("PREFECT_REMOTE_STORE", f"{store}-pool-b")
    theirs = {service: GCPProvider(service=service) for service in ("compute", "cloud-run")}
    assert theirs["compute"].records.label != ours.records.label
    return ours, theirs


def test_another_pools_machines_are_left_alone(pools):
    ours, theirs = pools
    [vm] = theirs["compute"].launch(MachineSpec(cpu=1), SLEEP)
    [job] = theirs["cloud-run"].launch(MachineSpec(cpu=1), SLEEP)
    theirs = theirs["compute"]  # one provider of the other pool reads both services
    assert vm.id.startswith("vm-") and job.id.startswith("run-")
    try:
        listed = {m.id for m in theirs.list()}
        assert {vm.id, job.id} <= listed and not {vm.id, job.id} & {m.id for m in ours.list()}  # each pool lists its own
        for machine in (vm, job):
            with pytest.raises(MachineNotFound, match=f"no gcp machine '{machine.id}' in this pool's records"):
                ours.terminate([machine.id])
        # Each service checks the labels itself too: another pool's records label is refused there.
        ours.service("compute").terminate([vm.id], "a caller that skipped the records")
        ours.service("cloud-run").terminate([job.id], "a caller that skipped the records")
        time.sleep(2)
        assert theirs.describe(vm.id).alive and theirs.describe(job.id).alive
    finally:
        theirs.terminate([vm.id, job.id])
    assert all(not m.alive for m in theirs.wait([vm.id, job.id], timeout=60))


def test_a_vm_prefect_remote_never_made_is_left_alone(pools):
    ours, _ = pools
    compute = ours.service("compute")
    spec = MachineSpec(cpu=2)
    name = f"vm-{secrets.token_hex(6)}"
    launch = Launch("launch-000000000000", "#!/bin/sh\nsleep 120\n", spec, compute.choose_instance_type(spec), 1, {}, None, False)
    body = compute.bulk_body(launch, [name], [], spot=False)
    for key in list(body.instance_properties.labels):  # someone else's VM, with a name like ours
        del body.instance_properties.labels[key]
    instances = ours.clients.instances()
    instances.bulk_insert(project=ours.options.project, zone=compute.zone, bulk_insert_instance_resource_resource=body).result()
    try:
        for bad in (name, "vm-db01", "vm-0123456789ab/../x"):
            with pytest.raises(MachineNotFound, match=f"no gcp machine '{bad}'"):
                ours.terminate([bad])
        compute.terminate([name], "a caller that skipped the records")  # not found by the service label: not deleted
        time.sleep(2)
        assert instances.get(project=ours.options.project, zone=compute.zone, instance=name).name == name
    finally:
        instances.delete(project=ours.options.project, zone=compute.zone, instance=name)


def test_a_sweep_deletes_only_its_own_pools_ended_jobs(pools):
    """Another pool's ended Cloud Run job is left to that pool's sweep, which records its end in
    that pool's records (a sweep writes ends into its own records only)."""
    ours, theirs = pools
    [job] = theirs["cloud-run"].launch(MachineSpec(cpu=1), BootPayload(["sh", "-c", "exit 3"]))
    theirs = theirs["cloud-run"]
    [ended] = theirs.wait([job.id], timeout=120)
    assert not ended.alive
    assert job.id not in ours.service("cloud-run").sweep(older_than=0)
    assert theirs.describe(job.id).exit_code == 3  # its job still there, its end not lost
    assert job.id in theirs.service("cloud-run").sweep(older_than=0)
    assert theirs.describe(job.id).exit_code == 3  # from its pool's record, the job gone
