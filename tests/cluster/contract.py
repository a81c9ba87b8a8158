"""The cluster contract: fan-out on each sandbox cloud, end to end. ``@prefect_remote.function``,
``RemoteCluster`` and ``RemoteTaskRunner`` with ``provider=<cloud>`` on the cloud's machines (EC2
instances of moto, Compute Engine VMs of the sandbox's fake), booted from their boot script by the
sandbox's instance runner (stock-image path, automatic package sync through the cloud's store), with
real Dask, uv and Prefect; then the faults a cloud brings (a killed client, a machine ended under a
map, no spot capacity). Every test runs on every cloud of tests/cluster/clouds.py, which lists the
machines through each cloud's own API; a new cloud passes this suite before it ships. Each cloud runs
it in a module of its own (test_contract_<cloud>.py, which imports this one's tests and fixtures), so
that parallel test workers (pytest-xdist gives a worker a module at a time) share the clouds out.

The functions ``double``, ``nap`` and ``digest`` share one cluster per cloud (module-scoped), which
the closing test ends; every other test ends what it started, and checks it through the cloud's API.
A cloud's tests that have no counterpart elsewhere live in its own module (test_on_aws.py), but for
those that need the shared cluster, which are here, run in that cloud's module only (``only``)."""

from __future__ import annotations

import hashlib
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
from prefect_remote.cluster.plan import CLUSTER_TAG, DASHBOARD_TAG, PORT_TAG, ROLE_TAG, WORKER_LEASE
from prefect_remote.cluster.remote import RemoteCluster
from tests.cluster.clouds import LEASE_INTERVAL
from tests.conftest import SESSION_HOME, end_all_machines, wait_for

TOKEN = "pr-test-token-8d0c5b1e2f7a4c39"  # the shared cluster's secret environ: never to be seen outside a machine
SHARED: set[str] = set()  # clusters that serve several tests of this module (ended by their fixture)


def only(name: str):
    """A test of one cloud's own, which needs that cloud's shared cluster: deselected in the other
    clouds' modules (tests/conftest.py)."""
    return pytest.mark.cloud_only(name)


@pytest.fixture(autouse=True)
def no_machine_outlives_its_test(cloud):
    """Overrides the per-test clean-up: the shared clusters' machines stay; any other machine a
    test started is ended with it, and gone before the next test."""
    yield
    end_all_machines()
    cloud.end_all_but(SHARED)


def connected_workers(cluster) -> set[str]:
    """The names of the workers connected to ``cluster``'s scheduler: their machine ids."""
    return {worker["name"] for worker in cluster.scheduler_info.get("workers", {}).values()}


def told(caplog, fragment: str, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(logger) and fragment in r.getMessage()]


# -- @prefect_remote.function on the cloud's machines ------------------------------------------------
def cloud_function(cloud):
    """On ``cloud``'s machines with 2 CPUs, a secret in their environment, and no ``software=``:
    automatic package sync captures this environment into the cloud's store."""
    return prefect_remote.function(
        provider=cloud.name, cpu=2, n_workers=2, keepalive="10 seconds", environ={"PR_TEST_TOKEN": SecretStr(TOKEN)}
    )


@pytest.fixture(scope="module")
def double(cloud):
    @cloud_function(cloud)
    def double(x: int) -> int:
        return 2 * x

    SHARED.add(double.cluster_name)
    yield double
    double.close()
    SHARED.discard(double.cluster_name)


@pytest.fixture(scope="module")
def nap(cloud, double):
    @cloud_function(cloud)
    def nap(x: int, seconds: float = 0.0) -> int:
        time.sleep(seconds)
        return x

    assert nap.cluster_name == double.cluster_name  # the same spec shares one cluster
    return nap


@pytest.fixture(scope="module")
def token_digest(cloud, double):
    """What the shared cluster's workers see of the secret (a digest: the value never travels back)."""

    @cloud_function(cloud)
    def digest(_: int) -> str:
        import hashlib

        return hashlib.sha256(os.environ["PR_TEST_TOKEN"].encode()).hexdigest()

    assert digest.cluster_name == double.cluster_name
    return digest


def test_a_function_calls_submits_and_maps_on_the_clouds_machines(cloud, double, token_digest):
    assert double(21) == 42
    assert double.submit(4).result() == 8
    assert list(double.map(range(200))) == [2 * x for x in range(200)]
    assert set(token_digest.map(range(4))) == {hashlib.sha256(TOKEN.encode()).hexdigest()}  # the secret reached the workers
    cluster = double.cluster
    wait_for(lambda: len(connected_workers(cluster)) == 2, timeout=120, message="two workers")
    [scheduler] = cloud.role(double.cluster_name, "scheduler")
    workers = cloud.role(double.cluster_name, "worker")
    assert {w.id for w in workers} == connected_workers(cluster)  # Dask's workers are these machines
    for worker in workers:
        assert worker.id.startswith(cloud.id_prefix) and worker.running
        assert worker.type == cloud.cheapest_2_cpu and not worker.spot  # the cheapest 2-vCPU type (no shared core), on-demand
        assert worker.tags[CLUSTER_TAG] == double.cluster_name and worker.spec == "2 cpu"
        assert worker.launch.startswith("launch-") and cloud.keepalive(worker) == WORKER_LEASE
    assert scheduler.running and scheduler.tags[PORT_TAG]
    assert cluster.scheduler_machine.id == scheduler.id and cluster.scheduler_address.startswith("tls://")
    for machine in [scheduler, *workers]:  # each runs as a machine of the sandbox's instance runner
        assert cloud.runs_as_a_machine(machine)
    # The environment went through the store: one package-sync environment in the bucket.
    assert any("senv-" in key for key in cloud.store_keys("store/"))


@only("gcp")
def test_only_the_launcher_reaches_the_dask_ports(cloud, double):
    """The scheduler's VM admits the Dask ports (8786-8787) from the launcher's IP only; workers
    take no ingress beyond the internal rule (prefect-remote VMs reach each other)."""
    from google.cloud import compute_v1

    from prefect_remote.providers.gcp.compute import INTERNAL_TAG

    double(1)
    vms = {vm.name: vm for vm in cloud.all_vms()}
    [scheduler] = [vms[m.id] for m in cloud.role(double.cluster_name, "scheduler")]
    workers = [vms[m.id] for m in cloud.role(double.cluster_name, "worker")]
    client = compute_v1.FirewallsClient(client_options={"api_endpoint": cloud.sandbox.url})
    firewalls = {rule.name: rule for rule in client.list(project=cloud.sandbox.project)}

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


def test_every_result_arrives_when_a_worker_machine_ends_mid_map(cloud, nap):
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
    cloud.end_mid_work(victim)  # as the cloud takes back a spot machine, mid-map
    received += list(results)
    assert received == list(range(80))  # Dask ran again what the lost worker held
    wait_for(lambda: cloud.ended([victim]), timeout=10, message="the victim ended")
    # The controller replaces it with a new machine.
    wait_for(lambda: {w.id for w in cloud.role(nap.cluster_name, "worker")} - before, timeout=30, message="a replacement worker machine")


@only("gcp")
def test_no_secret_is_in_metadata_labels_job_specs_or_logs(cloud, double):
    """The cluster's secrets (its TLS key, the secret environ) and a Cloud Run machine's reach the
    machines through Secret Manager only: nothing else the sandbox holds has them. Grepped: every
    VM's resource (metadata, labels), every Cloud Run job, execution and task, every operation,
    every Cloud Logging entry, the machine logs and the machines' records in the store."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.provider import GCPProvider
    from prefect_remote.spec import MachineSpec

    gcp = cloud.sandbox
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
        held = gcp_sandbox_state(gcp)
        assert machine.id in held and double.cluster_name in held and "startup-script" in held  # the haystack has them
        [job] = [job for name, job in gcp.run._jobs.items() if name.endswith(f"/jobs/{machine.id}")]
        assert "secretKeyRef" in json.dumps(job)  # the job names its secret, never its value
        for secret in (TOKEN, run_secret, key_line):
            assert secret not in held
    finally:
        provider.terminate([machine.id])


def gcp_sandbox_state(gcp) -> str:
    """Everything the sandbox GCP's fakes hold but Secret Manager's (where secrets belong), and the
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
    home = Path(gcp.runner.machines.home)
    logs = "\n".join(path.read_text(errors="replace") for path in home.rglob("*.log") if path.is_file())
    return json.dumps(fakes, default=str) + "\n".join(records) + logs


def test_closing_a_functions_cluster_ends_its_machines(cloud, double):
    assert double(1) == 2
    ids = {vm.id for vm in cloud.machines(double.cluster_name)}
    assert len(ids) >= 3  # the scheduler and two workers (a replacement may still be booting)
    double.cluster.close()
    wait_for(lambda: cloud.ended(ids), timeout=30, message="every machine ended")
    assert cloud.left(double.cluster_name) == []


# -- RemoteCluster and RemoteTaskRunner on the cloud's machines --------------------------------------------
def test_a_remote_cluster_scales_with_its_work_then_by_hand(cloud, caplog):
    """Adaptive between 0 and 2 workers: none while idle, two for a burst of work, none after it.
    Then by hand: two, none (adaptive scaling stops); held by this process with no Client, the
    cluster outlives its keepalive. The dashboard's link is logged when the cluster is up, its cost
    when it closes."""
    caplog.set_level(logging.INFO, logger="prefect_remote.cluster")
    keepalive, name = LEASE_INTERVAL, f"{cloud.name}-scaling"  # the shortest the sandbox keeps
    with RemoteCluster(name=name, provider=cloud.name, n_workers=[0, 2], keepalive=keepalive) as cluster:
        assert cloud.role(name, "worker") == []
        [up] = told(caplog, f"cluster {name} is up; dashboard: ", "prefect_remote.cluster")
        assert up.endswith(f"{cluster.dashboard_link}") and re.search(r"dashboard: http://127\.0\.0\.1:\d+/status$", up)
        dashboard_only_through_the_clusters_tls(cluster)
        with cluster.get_client() as client:
            futures = client.map(time.sleep, [0.5] * 24, pure=False)  # 12 s of work: adapt asks for both workers
            wait_for(lambda: len(cloud.role(name, "worker")) == 2, timeout=30, message="two worker machines")
            workers = {vm.id for vm in cloud.role(name, "worker")}
            client.gather(futures)
            assert connected_workers(cluster) <= workers
            del futures
            wait_for(lambda: cloud.ended(workers), timeout=30, message="the idle workers ended")
            assert cloud.role(name, "worker") == [] and len(cloud.role(name, "scheduler")) == 1
        released = time.monotonic()  # no Client from here on
        cluster.scale(2)
        wait_for(lambda: len(cloud.role(name, "worker")) == 2, timeout=30, message="two worker machines, by hand")
        workers = {vm.id for vm in cloud.role(name, "worker")}
        wait_for(lambda: connected_workers(cluster) == workers, timeout=120, message="both workers connected")
        assert all(vm.running for vm in cloud.role(name, "worker"))
        cluster.scale(0)
        wait_for(lambda: cloud.ended(workers), timeout=30, message="the workers ended")
        time.sleep(max(0.0, released + keepalive + 2.0 - time.monotonic()))
        assert cluster.status_info()["maximum"] == 0 and len(cloud.role(name, "scheduler")) == 1
        assert connected_workers(cluster) == set()
    wait_for(lambda: cloud.left(name) == [], timeout=30, message="the scheduler ended")
    [closed] = told(caplog, f"cluster {name} closed: ", "prefect_remote.cluster")
    assert re.fullmatch(rf"cluster {name} closed: 5 machine\(s\), estimated cost \$0\.\d{{4}}", closed), closed


def dashboard_only_through_the_clusters_tls(cluster) -> None:
    """The link (this computer's tunnel) serves Dask's dashboard; the scheduler's dashboard port,
    which its firewall admits from here, refuses plain HTTP and TLS without the cluster's certificate."""
    import ssl
    import urllib.request

    with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as page:
        assert page.status == 200 and b"Dask" in page.read()
    machine = cluster.scheduler.machine
    direct = f"{cluster.provider.client_address(machine)}:{machine.tags[DASHBOARD_TAG]}/status"
    no_certificate = ssl.create_default_context()
    no_certificate.check_hostname, no_certificate.verify_mode = False, ssl.CERT_NONE
    for url, context in [(f"http://{direct}", None), (f"https://{direct}", no_certificate)]:
        with pytest.raises(OSError):
            urllib.request.urlopen(url, context=context, timeout=10).read()


def test_a_flow_with_a_remote_task_runner(cloud, prefect_server):
    api_url = cloud.sandbox.expose_port(urlsplit(prefect_server).port) + "/api"  # as the machines reach the server
    name = f"{cloud.name}-task-runner"

    @task
    def square(n: int) -> tuple[int, str]:
        return n * n, os.environ["PREFECT_REMOTE_MACHINE_ID"]

    runner = prefect_remote.RemoteTaskRunner(name=name, provider=cloud.name, n_workers=2, keepalive="10 seconds")

    @flow(task_runner=runner)
    def fan_out() -> list[tuple[int, str]]:
        return square.map(range(40)).result()

    with temporary_settings({PREFECT_API_URL: api_url}):
        final = fan_out(return_state=True)
    assert final.is_completed(), final
    results = final.result()
    assert [value for value, _ in results] == [n * n for n in range(40)]
    ran_on = {machine for _, machine in results}
    # The tasks ran on its workers: as the provider remembers them (Google deletes an ended VM at once).
    launched = prefect_remote.get_provider(cloud.name).list({CLUSTER_TAG: name}, include_terminated=True)
    assert ran_on and ran_on <= {machine.id for machine in launched if machine.tags.get(ROLE_TAG) == "worker"}
    # The run created its cluster, so it shut it down.
    wait_for(lambda: cloud.left(name) == [], timeout=30, message="the runner's machines ended")


# -- faults ---------------------------------------------------------------------------------------------
KILLED_CLIENT = textwrap.dedent(
    """
    import sys, time
    from prefect_remote.cluster.remote import RemoteCluster

    cluster = RemoteCluster(name=sys.argv[1], provider=sys.argv[2], n_workers=1, keepalive=float(sys.argv[3]))
    cluster.get_client().wait_for_workers(1, timeout=300)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_cluster_in_an_image_runs_in_its_machines_engines_and_computes(cloud, images_env):
    """``image=``: the scheduler's and the worker's machines (EC2 instances, Compute Engine VMs) pull
    the sandbox registry's ready Python image (this project's dependencies, no prefect-remote) and run
    Dask in it; the scheduler's provider calls go through the relay beside its container, to the cloud."""
    cloud.sandbox.use_images(images_env)
    name = f"{cloud.name}-in-an-image"
    with (
        RemoteCluster(name=name, provider=cloud.name, image=images_env.image, n_workers=1, keepalive="1 minute") as cluster,
        cluster.get_client() as client,
    ):
        client.wait_for_workers(1, timeout=300)
        assert client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
        prefix = client.run_on_scheduler(lambda: sys.prefix)
        assert prefix != sys.prefix and set(client.run(lambda: sys.prefix).values()) == {prefix}  # the image's environment
        log = cluster.provider.logs(cluster.scheduler_machine.id).text
        assert f"image pull: pulled {images_env.image}" in log or f"image pull: {images_env.image} is on this machine" in log
        assert f"provider relay for cluster {name}" in log
    wait_for(lambda: cloud.left(name) == [], timeout=120, message="the cluster's machines to end")


def test_a_killed_client_leaves_no_machine_behind(cloud, tmp_path):
    """kill -9 of the process that made the cluster (and held it, with a Client). The bound, from
    prefect_remote/cluster: the killed process's connections close at once, so the controller on the
    scheduler closes the cluster ``keepalive`` after the kill, ending the workers' machines as it
    closes; the scheduler's node then exits and its agent ends its machine.
    ``Cloud.killed_client_bound`` says how long that takes, at most."""
    keepalive, name = 10.0, f"{cloud.name}-killed-client"
    (tmp_path / "client.py").write_text(KILLED_CLIENT)
    client = subprocess.Popen(
        [sys.executable, "client.py", name, cloud.name, str(keepalive)], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert client.stdout.readline().strip() == "ready"
        launched = {vm.id for vm in cloud.machines(name)}
        assert {vm.labels[ROLE_TAG] for vm in cloud.machines(name)} == {"scheduler", "worker"} and len(launched) == 2
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    killed = time.monotonic()
    bound = cloud.killed_client_bound(keepalive)
    wait_for(lambda: cloud.ended(launched), timeout=bound, interval=0.2, message=f"every machine ended within {bound:.0f}s")
    print(f"every machine of the killed client's cluster ended {time.monotonic() - killed:.1f}s after the kill (bound {bound:.0f}s)")
    assert time.monotonic() - killed > keepalive - 1  # not before keepalive: another client may attach in the meantime
    assert cloud.left(name) == []


def test_a_spot_stock_out_falls_back_to_on_demand_and_says_so(cloud, caplog):
    """spot_with_fallback where the cloud has no spot capacity: the first worker (launched here) and
    the one the controller launches from the scheduler's machine start on-demand (standard), and this
    process hears of each, with the stock-out named."""
    name = f"{cloud.name}-no-spot"
    caplog.set_level(logging.WARNING, logger="prefect_remote")
    fallback = cloud.fallback_said
    options = dict(provider=cloud.name, cpu=2, spot_policy="spot_with_fallback", n_workers=1, keepalive="10 seconds")
    with cloud.spot_refused(), RemoteCluster(name=name, **options) as cluster:
        assert told(caplog, fallback, f"prefect_remote.providers.{cloud.name}")  # the first worker, launched by this process
        cluster.scale(2)
        wait_for(lambda: len(cloud.role(name, "worker")) == 2, timeout=30, message="a second worker machine")
        assert not [w for w in cloud.role(name, "worker") if w.spot]
        wait_for(lambda: told(caplog, fallback, "prefect_remote.cluster"), timeout=10, message="the controller's fallback, told here")
        assert cloud.stock_out_said in told(caplog, fallback, "prefect_remote.cluster")[0]
    wait_for(lambda: cloud.left(name) == [], timeout=30, message="every machine ended")
