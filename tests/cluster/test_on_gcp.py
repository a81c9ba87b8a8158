"""Fan-out on the sandbox GCP, end to end: ``@prefect_remote.function``, ``RemoteCluster`` and
``RemoteTaskRunner`` with ``provider="gcp"`` on Compute Engine VMs of the sandbox's fake (booted
from their ``startup-script`` by the sandbox's instance runner: stock-image path, automatic package
sync through the gs:// store), with real Dask, uv and Prefect; then the faults a cloud brings (a
killed client, a VM deleted under a map, no spot capacity), where the secrets go (never into
metadata, labels, job specs or logs) and who may reach the Dask ports.

The functions ``double`` and ``nap`` share one cluster (module-scoped), which the closing test ends;
every other test ends what it started, and checks it through the Compute Engine API."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

import prefect_remote
from prefect_remote.cluster.credentials import ClusterCredentials
from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG
from prefect_remote.cluster.remote import RemoteCluster
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.gcp.compute import INTERNAL_TAG, LAUNCH_LABEL, SERVICE_LABEL
from prefect_remote.providers.gcp.provider import GCPProvider
from prefect_remote.spec import MachineSpec
from tests.conftest import SESSION_HOME, end_all_machines, use_gcp_sandbox, wait_for

LEASE_INTERVAL = 5.0  # PREFECT_REMOTE_GCP_LEASE_INTERVAL, as use_gcp_sandbox sets it
ALIVE = ("PROVISIONING", "STAGING", "RUNNING")
TOKEN = "pr-test-token-8d0c5b1e2f7a4c39"  # the shared cluster's secret environ: never to be seen outside a machine
SHARED: set[str] = set()  # clusters that serve several tests of this module (ended by their fixture)


@pytest.fixture(scope="module")
def gcp(gcp_sandbox):
    """The session's sandbox GCP, as a shell after `prefect-remote sandbox gcp` sees it, for this
    module (so that its clusters outlive one test)."""
    with pytest.MonkeyPatch.context() as patch:
        use_gcp_sandbox(patch, gcp_sandbox)
        yield gcp_sandbox
    gcp_sandbox.end_all_instances()


@pytest.fixture(scope="module")
def compute(gcp):
    """A plain google-cloud-compute client of the sandbox's Compute Engine, as the launcher's key has it."""
    from google.cloud import compute_v1

    return compute_v1.InstancesClient(client_options={"api_endpoint": gcp.url})


@pytest.fixture(autouse=True)
def no_machine_outlives_its_test(gcp, compute):
    """Overrides the per-test clean-up: the shared clusters' VMs stay; any other VM a test started
    is deleted with it, and gone before the next test."""
    yield
    end_all_machines()
    leftover = [vm.name for vm in all_vms(compute) if vm.labels.get(CLUSTER_TAG) not in SHARED]
    for name in leftover:
        gcp.compute.delete(name)
    gcp.runner.wait_idle()
    assert not [vm.name for vm in all_vms(compute) if vm.name in leftover]


def all_vms(compute) -> list:
    """Every instance the sandbox's Compute Engine holds, in every zone and state."""
    from google.cloud import compute_v1

    request = compute_v1.AggregatedListInstancesRequest(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    return [vm for _, scoped in compute.aggregated_list(request=request) for vm in scoped.instances]


def vms(compute, cluster: str | None = None, *, alive: bool = True) -> list:
    """prefect-remote's VMs (of ``cluster``), provisioning, staging or running unless ``alive=False``."""
    found = [vm for vm in all_vms(compute) if vm.labels.get(SERVICE_LABEL) == "compute"]
    if cluster:
        found = [vm for vm in found if vm.labels.get(CLUSTER_TAG) == cluster]
    return [vm for vm in found if vm.status in ALIVE] if alive else found


def role(compute, cluster: str, name: str) -> list:
    return [vm for vm in vms(compute, cluster) if vm.labels[ROLE_TAG] == name]


def names(found) -> set[str]:
    return {vm.name for vm in found}


def gone(compute, machine_ids) -> bool:
    """Deleted: Compute Engine no longer has them (a deleted VM is STOPPING until its machine has ended)."""
    return not names(all_vms(compute)) & set(machine_ids)


def connected_workers(cluster) -> set[str]:
    """The names of the workers connected to ``cluster``'s scheduler: their machine ids."""
    return {worker["name"] for worker in cluster.scheduler_info.get("workers", {}).values()}


def told(caplog, fragment: str, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(logger) and fragment in r.getMessage()]


# -- @prefect_remote.function on Compute Engine ---------------------------------------------------------------
def gcp_function(func):
    """``func`` on gcp machines with 2 CPUs, a secret in their environment, and no ``software=``:
    automatic package sync captures this environment into the gs:// store."""
    return prefect_remote.function(provider="gcp", cpu=2, n_workers=2, keepalive="10 seconds", environ={"PR_TEST_TOKEN": SecretStr(TOKEN)})(
        func
    )


@pytest.fixture(scope="module")
def double(gcp):
    @gcp_function
    def double(x: int) -> int:
        return 2 * x

    SHARED.add(double.cluster_name)
    yield double
    double.close()
    SHARED.discard(double.cluster_name)


@pytest.fixture(scope="module")
def nap(double):
    @gcp_function
    def nap(x: int, seconds: float = 0.0) -> int:
        time.sleep(seconds)
        return x

    assert nap.cluster_name == double.cluster_name  # the same spec shares one cluster
    return nap


@pytest.fixture(scope="module")
def token_digest(double):
    """What the shared cluster's workers see of the secret (a digest: the value never travels back)."""

    @gcp_function
    def digest(_: int) -> str:
        import hashlib

        return hashlib.sha256(os.environ["PR_TEST_TOKEN"].encode()).hexdigest()

    assert digest.cluster_name == double.cluster_name
    return digest


def test_a_function_calls_submits_and_maps_on_compute_engine_vms(gcp, compute, double, token_digest):
    import hashlib

    assert double(21) == 42
    assert double.submit(4).result() == 8
    assert list(double.map(range(200))) == [2 * x for x in range(200)]
    assert set(token_digest.map(range(4))) == {hashlib.sha256(TOKEN.encode()).hexdigest()}  # the secret reached the workers
    cluster = double.cluster
    wait_for(lambda: len(connected_workers(cluster)) == 2, timeout=120, message="two workers")
    [scheduler] = role(compute, double.cluster_name, "scheduler")
    workers = role(compute, double.cluster_name, "worker")
    assert names(workers) == connected_workers(cluster)  # Dask's workers are these VMs
    for worker in workers:
        assert worker.name.startswith("vm-") and worker.status == "RUNNING"
        assert worker.machine_type.rsplit("/", 1)[-1] == "e2-highcpu-2"  # the cheapest 2-vCPU type that is no shared core
        assert worker.scheduling.provisioning_model == "STANDARD"
        assert worker.labels[LAUNCH_LABEL].startswith("launch-")
        metadata = {item.key: item.value for item in worker.metadata.items}
        assert (
            json.loads(metadata["prefect-remote-tags"])[CLUSTER_TAG] == double.cluster_name and metadata["prefect-remote-spec"] == "2 cpu"
        )
    assert scheduler.status == "RUNNING"
    assert cluster.scheduler_machine.id == scheduler.name and cluster.scheduler_address.startswith("tls://")
    for vm in [scheduler, *workers]:  # each VM runs as a machine of the sandbox's instance runner
        assert gcp.runner.machine_of(f"gce:{vm.name}")
    # The environment went through the store: one package-sync environment in the bucket.
    from google.cloud import storage

    bucket = storage.Client(project=gcp.project).bucket("prefect-remote-sandbox")
    assert any(blob.name.startswith("store/") and "senv-" in blob.name for blob in bucket.list_blobs(prefix="store/"))


def test_only_the_launcher_reaches_the_dask_ports(gcp, compute, double):
    """The scheduler's VM admits the Dask ports (8786-8787) from the launcher's IP only; workers
    take no ingress beyond the internal rule (prefect-remote VMs reach each other)."""
    from google.cloud import compute_v1

    double(1)
    [scheduler] = role(compute, double.cluster_name, "scheduler")
    workers = role(compute, double.cluster_name, "worker")
    firewalls = {rule.name: rule for rule in compute_v1.FirewallsClient(client_options={"api_endpoint": gcp.url}).list(project=gcp.project)}

    def admitting(vm) -> list:
        tags = set(vm.tags.items)
        return [rule for rule in firewalls.values() if rule.direction == "INGRESS" and tags & set(rule.target_tags)]

    [internal] = [rule for rule in admitting(scheduler) if list(rule.source_tags)]
    assert list(internal.source_tags) == list(internal.target_tags) == [INTERNAL_TAG] and not list(internal.source_ranges)
    [dask] = [rule for rule in admitting(scheduler) if rule is not internal]
    assert list(dask.source_ranges) == [f"{os.environ['PREFECT_REMOTE_GCP_PUBLIC_IP']}/32"]
    assert [(allowed.I_p_protocol, list(allowed.ports)) for allowed in dask.allowed] == [("tcp", ["8786-8787"])]
    for worker in workers:
        assert list(worker.tags.items) == [INTERNAL_TAG]
        assert [rule.name for rule in admitting(worker)] == [internal.name]


def test_every_result_arrives_when_a_worker_vm_is_deleted_mid_map(gcp, compute, nap):
    cluster = nap.cluster
    nap(0)
    wait_for(lambda: len(connected_workers(cluster)) == 2, timeout=120, message="two workers")
    before = connected_workers(cluster)
    results = nap.map(range(80), seconds=0.25)  # 10 s of work for two workers
    received = [next(results) for _ in range(10)]

    def busy_worker() -> str | None:
        busy = {address for address, keys in nap.client.processing().items() if keys}
        return next((w["name"] for address, w in nap.client.scheduler_info()["workers"].items() if address in busy), None)

    victim = wait_for(busy_worker, message="a worker running part of the map")
    gcp.compute.preempt(victim, "DELETE")  # Google deletes it mid-map (a spot preemption)
    received += list(results)
    assert received == list(range(80))  # Dask ran again what the lost worker held
    wait_for(lambda: gone(compute, [victim]), timeout=10, message="the victim deleted")
    # The controller replaces it with a new VM.
    wait_for(lambda: names(role(compute, nap.cluster_name, "worker")) - before, timeout=30, message="a replacement worker VM")


def test_no_secret_is_in_metadata_labels_job_specs_or_logs(gcp, compute, double):
    """The cluster's secrets (its TLS key, the secret environ) and a Cloud Run machine's reach the
    machines through Secret Manager only: nothing else the sandbox holds has them. Grepped: every
    VM's resource (metadata, labels), every Cloud Run job, execution and task, every operation,
    every Cloud Logging entry, the machine logs and the machines' records in the store."""
    double(2)
    credentials = ClusterCredentials.load(SESSION_HOME / "clusters" / f"{double.cluster_name}.json")
    key_line = max(credentials.key.splitlines(), key=len)  # a line of the key's base64 body
    run_secret = "pr-test-run-secret-51e0d6a3b2c4"
    provider = GCPProvider()
    spec = MachineSpec(cpu=1, environ={"RUN_SECRET": SecretStr(run_secret)})
    script = "import os, time; print('secret of', len(os.environ['RUN_SECRET']), 'characters', flush=True); time.sleep(30)"
    [machine] = provider.launch(spec, BootPayload(["python", "-c", script], secrets=spec.secret_environ))
    assert machine.id.startswith("run-")
    try:
        # The Cloud Run job exists while its machine runs; the payload read its secret, and said
        # so in its log, shipped to Cloud Logging.
        said = f"secret of {len(run_secret)} characters"
        wait_for(lambda: said in json.dumps(gcp.logging.entries()), timeout=60, message="the Cloud Run payload's line in Cloud Logging")
        held = sandbox_state(gcp)
        assert machine.id in held and double.cluster_name in held and "startup-script" in held  # the haystack has them
        [job] = [job for name, job in gcp.run._jobs.items() if name.endswith(f"/jobs/{machine.id}")]
        assert "secretKeyRef" in json.dumps(job)  # the job names its secret, never its value
        for secret in (TOKEN, run_secret, key_line):
            assert secret not in held
    finally:
        provider.terminate([machine.id])


def sandbox_state(gcp) -> str:
    """Everything the sandbox's fakes hold but Secret Manager's (where secrets belong), and the
    machine logs on disk and the store's machine records, as one text to grep."""
    from google.cloud import storage

    fakes = {
        "compute": [vars(vm) for vm in gcp.compute._vms.values()],
        "firewalls": gcp.compute.network._firewalls,
        "compute_operations": gcp.compute.operations._operations,
        "run": [gcp.run._jobs, gcp.run._executions, gcp.run._tasks, gcp.run._operations],
        "logging": gcp.logging.entries(),
    }
    bucket = storage.Client(project=gcp.project).bucket("prefect-remote-sandbox")
    records = [blob.download_as_text() + json.dumps(blob.metadata or {}) for blob in bucket.list_blobs(prefix="store/machines/")]
    return json.dumps(fakes, default=str) + "\n".join(records) + machine_logs(gcp)


def machine_logs(gcp) -> str:
    home = Path(gcp.runner.machines.home)
    return "\n".join(path.read_text(errors="replace") for path in home.rglob("*.log") if path.is_file())


def test_closing_a_functions_cluster_deletes_its_vms(gcp, compute, double):
    assert double(1) == 2
    ids = names(vms(compute, double.cluster_name))
    assert len(ids) >= 3  # the scheduler and two workers (a replacement may still be booting)
    double.cluster.close()
    wait_for(lambda: gone(compute, ids), timeout=30, message="every VM deleted")
    assert vms(compute, double.cluster_name, alive=False) == []


# -- RemoteCluster and RemoteTaskRunner on Compute Engine -------------------------------------------------
def test_a_remote_cluster_scales_zero_two_zero(gcp, compute, caplog):
    """Adaptive between 0 and 2 workers: none while idle, two for a burst of work, none after it;
    the dashboard's link is logged when the cluster is up, its cost when it closes."""
    caplog.set_level(logging.INFO, logger="prefect_remote.cluster")
    name = "gcp-scaling"
    with RemoteCluster(name=name, provider="gcp", n_workers=[0, 2], keepalive=LEASE_INTERVAL) as cluster:
        assert role(compute, name, "worker") == []
        [up] = told(caplog, f"cluster {name} is up; dashboard: ", "prefect_remote.cluster")
        assert up.endswith(f"{cluster.dashboard_link}") and re.search(r"dashboard: http://[\d.]+:8787/status$", up)
        with cluster.get_client() as client:
            futures = client.map(time.sleep, [0.5] * 24, pure=False)  # 12 s of work: adapt asks for both workers
            wait_for(lambda: len(role(compute, name, "worker")) == 2, timeout=30, message="two worker VMs")
            workers = names(role(compute, name, "worker"))
            client.gather(futures)
            assert connected_workers(cluster) <= workers
            del futures
            wait_for(lambda: gone(compute, workers), timeout=30, message="the idle workers deleted")
            assert role(compute, name, "worker") == [] and len(role(compute, name, "scheduler")) == 1
    wait_for(lambda: vms(compute, name, alive=False) == [], timeout=30, message="the scheduler deleted")
    [closed] = told(caplog, f"cluster {name} closed: ", "prefect_remote.cluster")
    assert re.fullmatch(rf"cluster {name} closed: 3 machine\(s\), estimated cost \$0\.\d{{4}}", closed), closed


def test_a_flow_with_a_remote_task_runner_on_gcp(gcp, compute, prefect_server):
    api_url = gcp.expose_port(urlsplit(prefect_server).port) + "/api"  # as the VMs reach the server

    @task
    def square(n: int) -> tuple[int, str]:
        return n * n, os.environ["PREFECT_REMOTE_MACHINE_ID"]

    runner = prefect_remote.RemoteTaskRunner(name="gcp-task-runner", provider="gcp", n_workers=2, keepalive="10 seconds")

    @flow(task_runner=runner)
    def fan_out() -> list[tuple[int, str]]:
        return square.map(range(40)).result()

    with temporary_settings({PREFECT_API_URL: api_url}):
        final = fan_out(return_state=True)
    assert final.is_completed(), final
    results = final.result()
    assert [value for value, _ in results] == [n * n for n in range(40)]
    ran_on = {machine for _, machine in results}
    launched = vms(compute, "gcp-task-runner", alive=False)
    assert ran_on and ran_on <= {vm.name for vm in launched if vm.labels[ROLE_TAG] == "worker"}  # the tasks ran on its VMs
    # The run created its cluster, so it shut it down.
    wait_for(lambda: vms(compute, "gcp-task-runner", alive=False) == [], timeout=30, message="the runner's VMs deleted")


# -- faults ---------------------------------------------------------------------------------------------
KILLED_CLIENT = textwrap.dedent(
    """
    import sys, time
    from prefect_remote.cluster.remote import RemoteCluster

    cluster = RemoteCluster(name=sys.argv[1], provider="gcp", n_workers=1, keepalive=float(sys.argv[2]))
    cluster.get_client().wait_for_workers(1, timeout=300)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_client_leaves_no_vm_behind(gcp, compute, tmp_path):
    """kill -9 of the process that made the cluster (and held it, with a Client): the controller
    closes the cluster ``keepalive`` after the kill, deleting the workers' VMs; the scheduler's
    agent then deletes its own VM. Every VM is gone within keepalive + the lease interval, plus 2 s
    for the sandbox to end machines (a deleted VM is STOPPING until its machine has stopped). (A
    wedged scheduler would take KEEPALIVE_BACKSTOP longer: its agent ends it by its lease.)"""
    keepalive, name = 10.0, "gcp-killed-client"
    (tmp_path / "client.py").write_text(KILLED_CLIENT)
    client = subprocess.Popen(
        [sys.executable, "client.py", name, str(keepalive)], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert client.stdout.readline().strip() == "ready"
        launched = names(vms(compute, name))
        assert {vm.labels[ROLE_TAG] for vm in vms(compute, name)} == {"scheduler", "worker"} and len(launched) == 2
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    killed = time.monotonic()
    bound = keepalive + LEASE_INTERVAL + 2.0
    wait_for(lambda: gone(compute, launched), timeout=bound, interval=0.2, message=f"every VM deleted within {bound:.0f}s")
    print(f"every VM of the killed client's cluster deleted {time.monotonic() - killed:.1f}s after the kill (bound {bound:.0f}s)")
    assert time.monotonic() - killed > keepalive - 1  # not before keepalive: another client may attach in the meantime
    assert vms(compute, name, alive=False) == []


def test_a_spot_stock_out_falls_back_to_standard_vms_and_says_so(gcp, compute, caplog):
    """spot_with_fallback where the zone has no spot capacity: the first worker (launched here) and
    the one the controller launches from the scheduler's VM start as standard VMs, and this process
    hears of each."""
    name = "gcp-no-spot"
    caplog.set_level(logging.WARNING, logger="prefect_remote")
    fallback = "as a standard VM (spot_with_fallback)"
    gcp.compute.refuse_spot(times=2)  # the scheduler is standard; both workers' spot inserts are refused
    try:
        with RemoteCluster(
            name=name, provider="gcp", cpu=2, spot_policy="spot_with_fallback", n_workers=1, keepalive="10 seconds"
        ) as cluster:
            assert told(caplog, fallback, "prefect_remote.providers.gcp")  # the first worker, launched by this process
            cluster.scale(2)
            wait_for(lambda: len(role(compute, name, "worker")) == 2, timeout=30, message="a second worker VM")
            assert {vm.scheduling.provisioning_model for vm in role(compute, name, "worker")} == {"STANDARD"}
            wait_for(lambda: told(caplog, fallback, "prefect_remote.cluster"), timeout=10, message="the controller's fallback, told here")
            assert (
                "no spot capacity for e2-highcpu-2 in us-central1-a (ZONE_RESOURCE_POOL_EXHAUSTED)"
                in told(caplog, fallback, "prefect_remote.cluster")[0]
            )
    finally:
        gcp.compute._refuse_spot.clear()  # (none left when the test passes)
    wait_for(lambda: vms(compute, name, alive=False) == [], timeout=30, message="every VM deleted")
