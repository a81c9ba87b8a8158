"""The sandbox's Compute Engine fake, driven only through ``google.cloud.compute_v1`` clients, as the
product drives Compute Engine: machine types, instances whose startup script runs as a local
machine, their ends (delete, guest shutdown, preemption), fingerprints, firewalls and stock-outs."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

compute_v1 = pytest.importorskip("google.cloud.compute_v1")

from google.api_core import exceptions  # noqa: E402
from google.oauth2 import service_account  # noqa: E402

from tests.conftest import needs_firewalls  # noqa: E402
from tests.sandbox.reach import ADMITTED, MEMBERS_ONLY, SERVE, TOKEN, token_from_host, token_from_instance  # noqa: E402

DEBIAN = "projects/debian-cloud/global/images/family/debian-12"
PROJECT = "sandbox-project"  # SandboxGCP's default
ZONE = "us-central1-a"
ACCOUNT = f"prefect-remote@{PROJECT}.iam.gserviceaccount.com"  # the machines' account it makes


@pytest.fixture(scope="module")
def sandbox(gcp_sandbox):
    assert (gcp_sandbox.project, gcp_sandbox.zones[0], gcp_sandbox.machine_account) == (PROJECT, ZONE, ACCOUNT)
    return gcp_sandbox


@pytest.fixture(scope="module")
def clients(sandbox) -> dict[str, Any]:
    """Compute Engine's clients as the product makes them: the launcher's key, the sandbox's endpoint."""
    credentials = service_account.Credentials.from_service_account_file(
        str(sandbox.key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    options = {"api_endpoint": sandbox.url}
    make = {
        "instances": compute_v1.InstancesClient,
        "machine_types": compute_v1.MachineTypesClient,
        "firewalls": compute_v1.FirewallsClient,
        "zone_operations": compute_v1.ZoneOperationsClient,
        "zones": compute_v1.ZonesClient,
        "images": compute_v1.ImagesClient,
        "accelerator_types": compute_v1.AcceleratorTypesClient,
        "regions": compute_v1.RegionsClient,
    }
    return {name: cls(credentials=credentials, client_options=options) for name, cls in make.items()}


@pytest.fixture(autouse=True)
def _no_instance_outlives_its_test(sandbox):
    yield
    for instance in list(sandbox.compute.instances()):
        sandbox.compute.delete(instance.id)
    wait_for(lambda: not list(sandbox.compute.instances()), message="every instance gone")


def wait_for(predicate, timeout: float = 20, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def vm(
    name: str,
    machine_type: str = "e2-standard-2",
    script: str | None = None,
    *,
    spot: bool = False,
    action: str | None = None,
    labels: dict[str, str] | None = None,
    zone: str = ZONE,
    image: str = DEBIAN,
) -> Any:
    """An instance resource as the product builds one."""
    scheduling = compute_v1.Scheduling(provisioning_model="SPOT" if spot else "STANDARD")
    if action:
        scheduling.instance_termination_action = action
    items = [compute_v1.Items(key="startup-script", value=script)] if script is not None else []
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/{machine_type}",
        labels=labels or {"prefect-remote-launch": "l1"},
        metadata=compute_v1.Metadata(items=items),
        scheduling=scheduling,
        disks=[
            compute_v1.AttachedDisk(
                boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=image, disk_size_gb=20)
            )
        ],
        network_interfaces=[
            compute_v1.NetworkInterface(access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")])
        ],
        service_accounts=[compute_v1.ServiceAccount(email=ACCOUNT, scopes=["https://www.googleapis.com/auth/cloud-platform"])],
    )


def insert(clients, resource, zone: str = ZONE) -> None:
    clients["instances"].insert(project=PROJECT, zone=zone, instance_resource=resource).result(timeout=30)


def get(clients, name: str) -> Any:
    return clients["instances"].get(project=PROJECT, zone=ZONE, instance=name)


def gone(clients, name: str) -> bool:
    try:
        get(clients, name)
    except exceptions.NotFound:
        return True
    return False


# -- catalog ------------------------------------------------------------------------------------------
def test_machine_types_zones_images(clients, sandbox):
    types = {t.name: t for t in clients["machine_types"].list(project=PROJECT, zone=ZONE)}
    assert types["e2-standard-4"].guest_cpus == 4 and types["e2-standard-4"].memory_mb == 16384
    assert types["e2-medium"].is_shared_cpu and not types["n2-highmem-128"].is_shared_cpu
    assert types["t2a-standard-8"].architecture == "ARM64" and types["n2-standard-8"].architecture == "X86_64"
    [l4] = types["g2-standard-24"].accelerators
    assert (l4.guest_accelerator_type, l4.guest_accelerator_count) == ("nvidia-l4", 2)
    assert types["a2-highgpu-8g"].accelerators[0].guest_accelerator_count == 8
    # GPUs are not everywhere: the region's last zone has none.
    last = {t.name for t in clients["machine_types"].list(project=PROJECT, zone=sandbox.zones[-1])}
    assert "e2-standard-4" in last and "g2-standard-4" not in last
    assert {a.name for a in clients["accelerator_types"].list(project=PROJECT, zone=sandbox.zones[-1])} == set()
    assert "nvidia-tesla-t4" in {a.name for a in clients["accelerator_types"].list(project=PROJECT, zone=ZONE)}
    # aggregatedList: per zone, the product's one call for every zone's types; a filter applies.
    request = compute_v1.AggregatedListMachineTypesRequest(project=PROJECT, filter='name = "c4a-standard-4"')
    scopes = dict(clients["machine_types"].aggregated_list(request=request))
    assert set(scopes) == {f"zones/{zone}" for zone in sandbox.zones}
    assert [t.zone for t in scopes[f"zones/{ZONE}"].machine_types] == [ZONE]
    # paging: the pager follows nextPageToken
    request = compute_v1.ListMachineTypesRequest(project=PROJECT, zone=ZONE, max_results=7)
    assert len(list(clients["machine_types"].list(request=request))) == len(types)
    assert clients["machine_types"].get(project=PROJECT, zone=ZONE, machine_type="c3-standard-22").memory_mb == 22 * 4096
    assert [z.status for z in clients["zones"].list(project=PROJECT)] == ["UP"] * len(sandbox.zones)
    image = clients["images"].get_from_family(project="ubuntu-os-cloud", family="ubuntu-2404-lts-arm64")
    assert (
        image.architecture == "ARM64"
        and clients["images"].get(project="ubuntu-os-cloud", image=image.name).family == "ubuntu-2404-lts-arm64"
    )


# -- instances that run -----------------------------------------------------------------------------------
def test_startup_script_runs_and_delete_ends_it(clients, sandbox, tmp_path):
    marker = tmp_path / "ran"
    # The script asks its metadata server who it is, as the product's machine side does.
    ask = (
        "import os, urllib.request as u\nrequest = u.Request('http://' + os.environ['GCE_METADATA_HOST'] + "
        "'/computeMetadata/v1/instance/name', headers={'Metadata-Flavor': 'Google'})\nprint(u.urlopen(request).read().decode())\n"
    )
    insert(
        clients,
        vm("vm-runs", script=f"#!/bin/bash\n{sys.executable} - > {marker}.tmp <<'PY'\n{ask}PY\nmv {marker}.tmp {marker}\nexec sleep 600\n"),
    )
    instance = get(clients, "vm-runs")
    assert instance.status == "RUNNING" and instance.labels == {"prefect-remote-launch": "l1"}
    machine = sandbox.runner.machines.describe(sandbox.runner.machine_of("gce:vm-runs"))
    # Placed before the answer; its internal address is the subnetwork's, on the sandbox's VPC (the
    # machine's address on this host's bridge would be its external one, with an access config).
    assert machine.alive and instance.network_interfaces[0].network_i_p.startswith("10.128.0.")
    assert instance.network_interfaces[0].network_i_p != machine.private_address
    assert instance.network_interfaces[0].access_configs[0].nat_i_p
    wait_for(marker.exists, message="the startup script ran")
    assert marker.read_text().strip() == "vm-runs"
    # list with the product's filters
    listed = clients["instances"].list(
        request=compute_v1.ListInstancesRequest(
            project=PROJECT, zone=ZONE, filter='labels.prefect-remote-launch = "l1" AND status != TERMINATED'
        )
    )
    assert [i.name for i in listed] == ["vm-runs"]
    none = compute_v1.ListInstancesRequest(project=PROJECT, zone=ZONE, filter='(labels.prefect-remote-launch = "l2") (name = "vm-runs")')
    assert list(clients["instances"].list(request=none)) == []
    scopes = dict(
        clients["instances"].aggregated_list(request=compute_v1.AggregatedListInstancesRequest(project=PROJECT, filter="name = vm-runs"))
    )
    assert [i.name for i in scopes[f"zones/{ZONE}"].instances] == ["vm-runs"] and not scopes["zones/us-central1-b"].instances
    # delete: STOPPING while the machine stops, then gone (and its metadata with it)
    operation = clients["instances"].delete(project=PROJECT, zone=ZONE, instance="vm-runs")
    operation.result(timeout=10)
    assert clients["zone_operations"].get(project=PROJECT, zone=ZONE, operation=operation.name).status == compute_v1.Operation.Status.DONE
    wait_for(lambda: gone(clients, "vm-runs"), message="the instance gone")
    assert sandbox.runner.machine_of("gce:vm-runs") is None


def test_a_vm_outlives_its_startup_script(clients, sandbox):
    """A VM whose startup script exits keeps running (and billing), as its OS runs on after Google's
    startup-script runner: only a shutdown of its own, a stop or a delete ends it."""
    insert(clients, vm("vm-outlives", script="#!/bin/bash\nexit 3\n"))
    wait_for(lambda: sandbox.runner.machine_of("gce:vm-outlives"), message="the VM booted")
    time.sleep(2)  # the script has long exited
    assert get(clients, "vm-outlives").status == "RUNNING" and sandbox.runner.machine_of("gce:vm-outlives")
    clients["instances"].delete(project=PROJECT, zone=ZONE, instance="vm-outlives").result(timeout=10)
    wait_for(lambda: gone(clients, "vm-outlives"), message="the instance gone")


def test_guest_shutdown_stops_the_instance_and_google_deletes_with_delete(clients, sandbox):
    insert(clients, vm("vm-exits", script="#!/bin/bash\nshutdown -h now\nexit 3\n", spot=True, action="DELETE"))
    # A guest shutdown stops the VM (TERMINATED), whatever its termination action: that action is
    # what Google does when it ends the VM itself.
    wait_for(lambda: get(clients, "vm-exits").status == "TERMINATED", message="TERMINATED after its own shutdown")
    clients["instances"].delete(project=PROJECT, zone=ZONE, instance="vm-exits").result(timeout=10)
    assert gone(clients, "vm-exits")
    insert(clients, vm("vm-preempted", script="#!/bin/bash\nexec sleep 600\n", spot=True, action="DELETE"))
    sandbox.compute.preempt("vm-preempted")
    wait_for(lambda: gone(clients, "vm-preempted"), message="a preempted DELETE instance gone")
    insert(clients, vm("vm-stopped", script="#!/bin/bash\nexec sleep 600\n", spot=True))
    sandbox.compute.preempt("vm-stopped")
    wait_for(lambda: get(clients, "vm-stopped").status == "TERMINATED", message="a preempted STOP instance TERMINATED")
    types = {o.operation_type for o in clients["zone_operations"].list(project=PROJECT, zone=ZONE)}
    assert {"insert", "delete", "compute.instances.guestTerminate", "compute.instances.preempted"} <= types


def test_labels_and_metadata_fingerprints(clients):
    insert(clients, vm("vm-fingerprints"))
    instance = get(clients, "vm-fingerprints")
    request = compute_v1.InstancesSetLabelsRequest(
        labels={"prefect-remote-launch": "l1", "ended": "yes"}, label_fingerprint=instance.label_fingerprint
    )
    clients["instances"].set_labels(
        project=PROJECT, zone=ZONE, instance="vm-fingerprints", instances_set_labels_request_resource=request
    ).result()
    with pytest.raises(exceptions.PreconditionFailed):  # the old fingerprint no longer holds
        clients["instances"].set_labels(
            project=PROJECT, zone=ZONE, instance="vm-fingerprints", instances_set_labels_request_resource=request
        )
    assert get(clients, "vm-fingerprints").labels["ended"] == "yes"
    metadata = compute_v1.Metadata(
        items=[compute_v1.Items(key="prefect-remote-end", value="done")], fingerprint=instance.metadata.fingerprint
    )
    clients["instances"].set_metadata(project=PROJECT, zone=ZONE, instance="vm-fingerprints", metadata_resource=metadata).result()
    with pytest.raises(exceptions.PreconditionFailed):
        clients["instances"].set_metadata(project=PROJECT, zone=ZONE, instance="vm-fingerprints", metadata_resource=metadata)
    assert [(i.key, i.value) for i in get(clients, "vm-fingerprints").metadata.items] == [("prefect-remote-end", "done")]
    with pytest.raises(exceptions.BadRequest, match="Label key 'Bad' violates"):
        bad = compute_v1.InstancesSetLabelsRequest(labels={"Bad": "x"}, label_fingerprint=get(clients, "vm-fingerprints").label_fingerprint)
        clients["instances"].set_labels(project=PROJECT, zone=ZONE, instance="vm-fingerprints", instances_set_labels_request_resource=bad)


def test_bad_inserts_are_refused_as_google_does(clients, sandbox):
    with pytest.raises(exceptions.BadRequest, match="Machine type with name 'e2-giant-9' does not exist in zone 'us-central1-a'"):
        insert(clients, vm("vm-bad", "e2-giant-9"))
    with pytest.raises(exceptions.BadRequest, match=f"g2-standard-4' does not exist in zone '{sandbox.zones[-1]}'"):
        insert(clients, vm("vm-bad", "g2-standard-4", zone=sandbox.zones[-1]), zone=sandbox.zones[-1])
    with pytest.raises(
        exceptions.BadRequest, match=r"boot disk architecture \(X86_64\) is not compatible with machine type architecture \(ARM64\)"
    ):
        insert(clients, vm("vm-bad", "t2a-standard-4"))
    with pytest.raises(exceptions.BadRequest, match="resource.name"):
        insert(clients, vm("Bad_Name"))
    with pytest.raises(exceptions.BadRequest, match="Instance termination action can only be specified"):
        insert(clients, vm("vm-bad", action="DELETE"))
    with pytest.raises(exceptions.BadRequest, match="do not support live migration"):
        insert(clients, vm("vm-bad", "g2-standard-4"))
    unknown_account = vm("vm-bad")
    unknown_account.service_accounts[0].email = "nobody@sandbox-project.iam.gserviceaccount.com"
    with pytest.raises(exceptions.BadRequest, match="SERVICE_ACCOUNT_ACCESS_DENIED"):
        insert(clients, unknown_account)  # the launcher may act as the machines' account only, so IAM answers first
    with sandbox.enforcing(False), pytest.raises(exceptions.BadRequest, match="serviceAccounts"):
        insert(clients, unknown_account)  # as an owner, who may act as any account
    with pytest.raises(exceptions.NotFound):
        insert(clients, vm("vm-bad", image="projects/debian-cloud/global/images/family/debian-99"))
    small_disk = vm("vm-bad")
    small_disk.disks[0].initialize_params.disk_size_gb = 5
    with pytest.raises(exceptions.BadRequest, match=r"cannot be smaller than the image size \(10 GB\)"):
        insert(clients, small_disk)
    persistent_on_axion = vm("vm-bad", "c4a-standard-4", image=DEBIAN + "-arm64")
    persistent_on_axion.disks[0].initialize_params.disk_type = f"zones/{ZONE}/diskTypes/pd-balanced"
    with pytest.raises(exceptions.BadRequest, match="does not support disk type pd-balanced"):
        insert(clients, persistent_on_axion)
    insert(clients, vm("vm-twice"))
    with pytest.raises(exceptions.Conflict, match="already exists"):
        insert(clients, vm("vm-twice"))
    t4 = vm("vm-t4", "n1-standard-4")
    t4.guest_accelerators = [
        compute_v1.AcceleratorConfig(accelerator_type=f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", accelerator_count=1)
    ]
    t4.scheduling.on_host_maintenance = "TERMINATE"
    insert(clients, t4)
    assert get(clients, "vm-t4").guest_accelerators[0].accelerator_count == 1


def test_spot_stock_out(clients, sandbox):
    sandbox.compute.refuse(spot=True, times=2)
    with pytest.raises(exceptions.ServiceUnavailable) as refused:
        insert(clients, vm("vm-spot", spot=True))
    assert [error.code for error in refused.value.errors] == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
    # The same failure read as the product reads it: the operation, waited for.
    operation = clients["instances"].insert(project=PROJECT, zone=ZONE, instance_resource=vm("vm-spot", spot=True))
    done = clients["zone_operations"].wait(project=PROJECT, zone=ZONE, operation=operation.name)
    assert done.status == compute_v1.Operation.Status.DONE and done.http_error_status_code == 503
    assert done.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED" and "does not have enough resources" in done.error.errors[0].message
    assert gone(clients, "vm-spot")
    insert(clients, vm("vm-spot", spot=True))  # the stock-out was for one insert
    assert get(clients, "vm-spot").scheduling.provisioning_model == "SPOT"


def test_quota_and_stock_outs_injected_per_zone(clients, sandbox):
    sandbox.compute.refuse("QUOTA_EXCEEDED", zone="us-central1-b", times=None)
    try:
        with pytest.raises(exceptions.Forbidden) as refused:
            insert(clients, vm("vm-quota", zone="us-central1-b"), zone="us-central1-b")
        [error] = refused.value.errors
        assert error.code == "QUOTA_EXCEEDED" and error.message == "Quota 'CPUS' exceeded.  Limit: 0.0 in region us-central1."
        insert(clients, vm("vm-quota"))  # another zone has quota (the injection is per zone)
        with pytest.raises(exceptions.Forbidden, match="PREEMPTIBLE_CPUS"):
            insert(clients, vm("vm-spot-quota", spot=True, zone="us-central1-b"), zone="us-central1-b")
    finally:
        sandbox.compute.lift_refusals()
    insert(clients, vm("vm-quota-b", zone="us-central1-b"), zone="us-central1-b")
    with pytest.raises(ValueError, match="the sandbox injects"):
        sandbox.compute.refuse("NO_SUCH_CODE")


def test_a_reboot_runs_the_startup_script_again(clients, sandbox, tmp_path):
    """Compute Engine runs startup scripts on every boot: a reset, or a host error with automaticRestart,
    boots the script again under the same instance; a host error without automaticRestart stops it."""
    boots = tmp_path / "boots"
    script = f"#!/bin/bash\necho boot >> {boots}\nexec sleep 600\n"
    restarted = vm("vm-reboots", script=script)
    restarted.scheduling.automatic_restart = True
    insert(clients, restarted)
    wait_for(lambda: boots.exists() and boots.read_text() == "boot\n", message="the first boot")
    clients["instances"].reset(project=PROJECT, zone=ZONE, instance="vm-reboots").result(timeout=10)
    wait_for(lambda: boots.read_text() == "boot\nboot\n", message="the startup script run again after a reset")
    assert get(clients, "vm-reboots").status == "RUNNING"
    assert sandbox.compute.host_error("vm-reboots") == "restarted"
    wait_for(lambda: boots.read_text() == "boot\n" * 3, message="the startup script run again after a host error")
    once = tmp_path / "once"
    never = vm("vm-no-restart", script=f"#!/bin/bash\necho boot >> {once}\nexec sleep 600\n")
    never.scheduling.automatic_restart = False
    insert(clients, never)
    wait_for(once.exists, message="its boot")
    assert sandbox.compute.host_error("vm-no-restart") == "terminated"
    wait_for(lambda: get(clients, "vm-no-restart").status == "TERMINATED", message="TERMINATED after the host error")
    assert once.read_text() == "boot\n"


def test_firewall_crud(clients):
    firewalls = clients["firewalls"]
    rule = compute_v1.Firewall(
        name="prefect-remote-dask",
        network="global/networks/default",
        source_ranges=["203.0.113.7/32"],
        target_tags=["prefect-remote-scheduler"],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["8786-8787"])],
    )
    firewalls.insert(project=PROJECT, firewall_resource=rule).result()
    with pytest.raises(exceptions.Conflict):
        firewalls.insert(project=PROJECT, firewall_resource=rule)
    got = firewalls.get(project=PROJECT, firewall="prefect-remote-dask")
    assert (got.direction, got.priority, list(got.source_ranges)) == ("INGRESS", 1000, ["203.0.113.7/32"])
    assert got.allowed[0].I_p_protocol == "tcp" and list(got.allowed[0].ports) == ["8786-8787"]
    firewalls.patch(
        project=PROJECT, firewall="prefect-remote-dask", firewall_resource=compute_v1.Firewall(source_ranges=["198.51.100.0/24"])
    ).result()
    assert list(firewalls.get(project=PROJECT, firewall="prefect-remote-dask").source_ranges) == ["198.51.100.0/24"]
    assert [
        f.name for f in firewalls.list(request=compute_v1.ListFirewallsRequest(project=PROJECT, filter="name = prefect-remote-dask"))
    ] == ["prefect-remote-dask"]
    with pytest.raises(exceptions.BadRequest, match="sourceRanges"):
        firewalls.patch(
            project=PROJECT, firewall="prefect-remote-dask", firewall_resource=compute_v1.Firewall(source_ranges=["not-an-address"])
        )
    firewalls.delete(project=PROJECT, firewall="prefect-remote-dask").result()
    with pytest.raises(exceptions.NotFound):
        firewalls.get(project=PROJECT, firewall="prefect-remote-dask")


def test_run_limit_and_stop(clients, sandbox):
    limited = vm("vm-limited", script="#!/bin/bash\nexec sleep 600\n", action="DELETE")
    limited.scheduling.max_run_duration = compute_v1.Duration(seconds=3600)
    insert(clients, limited)
    assert get(clients, "vm-limited").scheduling.max_run_duration.seconds == 3600
    sandbox.compute._vms["vm-limited"].started -= 3601  # an hour later
    wait_for(lambda: gone(clients, "vm-limited"), message="the instance deleted at its maxRunDuration")
    insert(clients, vm("vm-stop", script="#!/bin/bash\nexec sleep 600\n"))
    clients["instances"].stop(project=PROJECT, zone=ZONE, instance="vm-stop").result(timeout=10)
    assert get(clients, "vm-stop").status in ("STOPPING", "TERMINATED")
    wait_for(lambda: get(clients, "vm-stop").status == "TERMINATED", message="a stopped instance TERMINATED")
    assert sandbox.runner.machine_of("gce:vm-stop") is None


@pytest.mark.no_iam  # the project's default account, which the launcher may not act as
def test_the_products_instance_shape(clients, sandbox):
    """What providers/gcp/compute.py inserts: the default service account, pd-balanced or Hyperdisk
    for c4a, spot with DELETE, a run limit, network tags."""
    body = {
        "name": "vm-0123456789ab",
        "machine_type": f"zones/{ZONE}/machineTypes/c4a-standard-4",
        "labels": {"prefect-remote-service": "compute", "prefect-remote-launch": "abc"},
        "metadata": {
            "items": [{"key": "startup-script", "value": "#!/bin/bash\nexec sleep 600\n"}, {"key": "prefect-remote-tags", "value": "{}"}]
        },
        "tags": {"items": ["prefect-remote-internal"]},
        "disks": [
            {
                "boot": True,
                "auto_delete": True,
                "initialize_params": {
                    "source_image": "projects/debian-cloud/global/images/family/debian-12-arm64",
                    "disk_type": f"zones/{ZONE}/diskTypes/hyperdisk-balanced",
                    "labels": {"prefect-remote-launch": "abc"},
                },
            }
        ],
        "network_interfaces": [
            {"network": "global/networks/default", "access_configs": [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}]}
        ],
        "service_accounts": [{"email": "default", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
        "scheduling": {
            "provisioning_model": "SPOT",
            "instance_termination_action": "DELETE",
            "automatic_restart": False,
            "on_host_maintenance": "TERMINATE",
            "max_run_duration": {"seconds": 7200},
        },
    }
    insert(clients, compute_v1.Instance(body))
    request = {
        "project": PROJECT,
        "zone": ZONE,
        "filter": '(labels.prefect-remote-service = "compute") AND (labels.prefect-remote-launch = "abc")',
    }
    [instance] = clients["instances"].list(request=request)
    assert instance.service_accounts[0].email == f"{sandbox.project_number}-compute@developer.gserviceaccount.com"
    assert instance.scheduling.instance_termination_action == "DELETE" and instance.creation_timestamp.endswith("-08:00")
    assert [i.name for i in clients["instances"].list(request={**request, "filter": "name eq 'vm-0123.*'"})] == ["vm-0123456789ab"]
    body["name"], body["disks"][0]["initialize_params"]["disk_type"] = "vm-pd", f"zones/{ZONE}/diskTypes/pd-balanced"
    with pytest.raises(exceptions.BadRequest, match="does not support disk type pd-balanced"):
        insert(clients, compute_v1.Instance(body))


def test_the_regions_quotas_hold_and_a_test_sets_them(clients, sandbox):
    """An insert that would take the region over a quota fails in its operation with QUOTA_EXCEEDED,
    naming the quota and its limit; regions.get shows the limit and the usage."""
    sandbox.compute.catalog.set_quota("CPUS", 3)
    try:
        insert(clients, vm("vm-in-quota"))  # 2 CPUs of 3
        with pytest.raises(exceptions.Forbidden) as refused:
            insert(clients, vm("vm-over-quota"))  # 4 of 3
        [error] = refused.value.errors
        assert error.code == "QUOTA_EXCEEDED" and error.message == "Quota 'CPUS' exceeded.  Limit: 3.0 in region us-central1."
        assert gone(clients, "vm-over-quota")
        region = clients["regions"].get(project=PROJECT, region="us-central1")
        quotas = {quota.metric: (quota.limit, quota.usage) for quota in region.quotas}
        assert quotas["CPUS"] == (3.0, 2.0) and quotas["NVIDIA_T4_GPUS"] == (16.0, 0.0)
    finally:
        sandbox.compute.catalog.set_quota("CPUS", None)
    insert(clients, vm("vm-over-quota"))  # within a new project's 2400
    with pytest.raises(ValueError, match="the sandbox's region has quotas"):
        sandbox.compute.catalog.set_quota("NO_SUCH_QUOTA", 1)


def test_a_vm_without_an_external_ip_has_no_way_out(clients, sandbox, tmp_path):
    """Cloud NAT is not modelled: a VM with no access config reaches nothing beyond the network (its
    connections hang, as Google drops them), while one with an external IP reaches the package index."""
    results = {}
    for name, external in (("egress-none", False), ("egress-external", True)):
        out = tmp_path / name
        script = (
            '#!/bin/bash\npython3 -c "import urllib.request as u\ntry:\n'
            "    u.urlopen(u.Request('https://pypi.org/simple/uv/', method='HEAD'), timeout=5); print('reached')\n"
            f'except Exception as error:\n    print(error)" > {out}.part && mv {out}.part {out}\nsleep 60\n'
        )
        resource = vm(name, script=script)
        if not external:
            resource.network_interfaces = [compute_v1.NetworkInterface()]
        insert(clients, resource)
        results[name] = out
    answers = {name: wait_for(lambda out=out: out.exists() and out.read_text(), timeout=60, message=name) for name, out in results.items()}
    assert answers["egress-external"] == "reached\n" and "timed out" in answers["egress-none"]
    for name in results:
        clients["instances"].delete(project=PROJECT, zone=ZONE, instance=name).result(timeout=30)


# -- the network ----------------------------------------------------------------------------------------
@needs_firewalls
def test_the_network_and_its_firewall_as_compute_engines(clients, sandbox):
    """This host reaches a VM's external address only, VMs reach each other's internal ones, and each
    admits what the firewall's allow rules do: source ranges on either address, source tags from
    the tagged VMs' internal addresses only (:mod:`tests.sandbox.reach`)."""
    firewalls = clients["firewalls"]
    rules = [
        compute_v1.Firewall(
            name="reach-members",
            network="global/networks/default",
            source_tags=["reach"],
            target_tags=["reach"],
            allowed=[compute_v1.Allowed(I_p_protocol="tcp")],
        ),
        compute_v1.Firewall(
            name="reach-host",
            network="global/networks/default",
            source_ranges=[f"{sandbox.sandbox_host}/32"],
            target_tags=["reach"],
            allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=[str(ADMITTED)])],
        ),
    ]
    for rule in rules:
        firewalls.insert(project=PROJECT, firewall_resource=rule).result()
    try:
        for name in ("vm-reach-1", "vm-reach-2"):
            resource = vm(name, script=SERVE)
            resource.tags = compute_v1.Tags(items=["reach"])
            insert(clients, resource)
        first, second = get(clients, "vm-reach-1").network_interfaces[0], get(clients, "vm-reach-2")
        internal, external = first.network_i_p, first.access_configs[0].nat_i_p
        wait_for(lambda: token_from_host(external, ADMITTED) == TOKEN, timeout=30, message="serving, and this host admitted")
        assert token_from_host(internal, ADMITTED) != TOKEN
        assert token_from_host(external, MEMBERS_ONLY) != TOKEN
        other = sandbox.runner.machine_of(f"gce:{second.name}")
        assert token_from_instance(other, internal, MEMBERS_ONLY) == TOKEN
        assert token_from_instance(other, external, MEMBERS_ONLY) != TOKEN  # source tags match internal addresses only
    finally:
        for rule in rules:
            firewalls.delete(project=PROJECT, firewall=rule.name).result()


# -- bulk inserts ------------------------------------------------------------------------------------------
def bulk(names=(), count: int | None = None, *, pattern: str = "", min_count: int | None = None, spot: bool = False, **shape) -> Any:
    """A ``BulkInsertInstanceResource`` as the product builds one: ``vm``'s properties (machine type by
    name), one instance per name in ``names`` and ``pattern`` for the rest of ``count``."""
    instance = vm("unused", spot=spot, **shape)
    properties = compute_v1.InstanceProperties(
        machine_type=instance.machine_type.rsplit("/", 1)[-1],
        labels=instance.labels,
        metadata=instance.metadata,
        scheduling=instance.scheduling,
        disks=instance.disks,
        network_interfaces=instance.network_interfaces,
        service_accounts=instance.service_accounts,
    )
    resource = compute_v1.BulkInsertInstanceResource(
        count=count or len(names),
        per_instance_properties={name: compute_v1.BulkInsertInstanceResourcePerInstanceProperties() for name in names},
        instance_properties=properties,
    )
    if pattern:
        resource.name_pattern = pattern
    if min_count is not None:
        resource.min_count = min_count
    return resource


def bulk_insert(clients, resource, zone: str = ZONE) -> Any:
    """The bulk insert's operation, waited for as the product waits (``zoneOperations.wait``)."""
    operation = clients["instances"].bulk_insert(project=PROJECT, zone=zone, bulk_insert_instance_resource_resource=resource)
    return clients["zone_operations"].wait(project=PROJECT, zone=zone, operation=operation.name)


def names_in(clients, zone: str = ZONE) -> list[str]:
    return sorted(instance.name for instance in clients["instances"].list(project=PROJECT, zone=zone))


def test_a_bulk_insert_makes_each_named_instance_alike_in_one_operation(clients, sandbox, tmp_path):
    marker = tmp_path / "ran"
    script = f"#!/bin/sh\necho ran >> {marker}\nsleep 60\n"
    done = bulk_insert(clients, bulk(["vm-b1", "vm-b2", "vm-b3"], script=script, labels={"prefect-remote-launch": "l2"}))
    assert done.status == compute_v1.Operation.Status.DONE and not done.error.errors and done.operation_type == "bulkInsert"
    status = done.instances_bulk_insert_operation_metadata.per_location_status[f"zones/{ZONE}"]
    assert (status.target_vm_count, status.created_vm_count) == (3, 3)
    assert names_in(clients) == ["vm-b1", "vm-b2", "vm-b3"]
    for name in ("vm-b1", "vm-b2", "vm-b3"):
        instance = get(clients, name)
        assert instance.status == "RUNNING" and instance.labels == {"prefect-remote-launch": "l2"}
        assert instance.machine_type.endswith(f"/zones/{ZONE}/machineTypes/e2-standard-2")
        assert instance.disks[0].source.endswith(f"/disks/{name}")  # each boot disk is its instance's
    wait_for(lambda: marker.exists() and marker.read_text().count("ran") == 3, timeout=60, message="three startup scripts ran")


def test_a_bulk_insert_names_the_rest_by_its_pattern_after_the_highest_taken(clients, sandbox):
    insert(clients, vm("vm-p-007"))
    bulk_insert(clients, bulk(["vm-named"], count=3, pattern="vm-p-###"))
    assert names_in(clients) == ["vm-named", "vm-p-007", "vm-p-008", "vm-p-009"]


def test_bad_bulk_inserts_are_refused_at_once(clients, sandbox):
    def refused(resource, match: str, error=exceptions.BadRequest) -> None:
        with pytest.raises(error, match=match):
            clients["instances"].bulk_insert(project=PROJECT, zone=ZONE, bulk_insert_instance_resource_resource=resource)

    refused(bulk(["vm-x"], count=2), "Either namePattern or a name in perInstanceProperties")
    refused(bulk(["vm-x", "vm-y"], count=1), "Names more instances than count")
    refused(bulk(count=2, pattern="vm-#-#"), "one continuous sequence")
    refused(bulk(["vm-x"], min_count=2), r"resource.minCount.*Must be between 1 and count \(1\)")
    refused(bulk(count=5001, pattern="vm-####"), "Must be between 1 and 5000")
    as_url = bulk(["vm-x"])
    as_url.instance_properties.machine_type = f"zones/{ZONE}/machineTypes/e2-standard-2"
    refused(as_url, "not a URL")  # instance properties name their machine type
    refused(bulk(["vm-x"], machine_type="e2-nope"), "Machine type with name 'e2-nope' does not exist")
    templated = bulk(["vm-x"])
    templated.source_instance_template = "global/instanceTemplates/none"
    refused(templated, "instanceTemplates/none", exceptions.NotFound)
    insert(clients, vm("vm-taken"))
    refused(bulk(["vm-free", "vm-taken"]), "vm-taken' already exists", exceptions.Conflict)
    assert names_in(clients) == ["vm-taken"]  # nothing of a refused request was made


def test_a_bulk_insert_meets_a_zones_stock_out_whole_and_leaves_nothing(clients, sandbox):
    sandbox.compute.refuse(zone=ZONE, spot=True, times=1)
    done = bulk_insert(clients, bulk(["vm-s1", "vm-s2"], spot=True))
    assert done.http_error_status_code == 503 and done.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    status = done.instances_bulk_insert_operation_metadata.per_location_status[f"zones/{ZONE}"]
    assert (status.created_vm_count, status.failed_to_create_vm_count) == (0, 2)
    assert names_in(clients) == []  # all or nothing
    bulk_insert(clients, bulk(["vm-s1", "vm-s2"], zone="us-central1-b", spot=True), zone="us-central1-b")  # the refusal was one zone's
    assert names_in(clients, "us-central1-b") == ["vm-s1", "vm-s2"]


def test_a_bulk_insert_checks_quota_up_front_and_makes_no_fewer_than_min_count(clients, sandbox):
    sandbox.compute.refuse("QUOTA_EXCEEDED", zone=ZONE, times=1)
    with pytest.raises(exceptions.Forbidden, match="Quota 'CPUS' exceeded") as refused:
        clients["instances"].bulk_insert(project=PROJECT, zone=ZONE, bulk_insert_instance_resource_resource=bulk(["vm-q1"]))
    assert [error["reason"] for error in refused.value.errors] == ["quotaExceeded"]  # at once: no operation to wait for
    sandbox.compute.catalog.set_quota("CPUS", 5)  # two e2-standard-2 of three
    try:
        with pytest.raises(exceptions.Forbidden, match=r"Quota 'CPUS' exceeded.  Limit: 5.0 in region us-central1."):
            bulk_insert(clients, bulk(["vm-q1", "vm-q2", "vm-q3"]))
        assert names_in(clients) == []  # all or nothing: minCount is count unless asked
        done = bulk_insert(clients, bulk(["vm-q1", "vm-q2", "vm-q3"], min_count=2))
        assert done.instances_bulk_insert_operation_metadata.per_location_status[f"zones/{ZONE}"].created_vm_count == 2
        assert len(names_in(clients)) == 2
    finally:
        sandbox.compute.catalog.set_quota("CPUS", None)
