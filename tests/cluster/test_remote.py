"""RemoteCluster on real local-provider machines: Dask schedulers and workers, over TLS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from distributed import Client

from prefect_remote.cluster.credentials import ClusterCredentials
from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG
from prefect_remote.cluster.remote import RemoteCluster
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.local import LocalProvider
from prefect_remote.providers.local.isolation import tagged_pids
from tests.conftest import SESSION_HOME, wait_for


def cluster_machines(provider, name: str, role: str | None = None):
    tags = {CLUSTER_TAG: name, **({ROLE_TAG: role} if role else {})}
    return provider.list(tags)


def workers_connected(client: Client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


def test_the_dashboard_is_served_to_the_clusters_certificate_holders_only(local_provider):
    """The link shown is this computer's loopback, carried to the scheduler's dashboard port over
    the cluster's mutual TLS: it serves Dask's dashboard. From this host (another than the
    scheduler's machine), that port refuses plain HTTP, TLS without a certificate, and TLS with
    another cluster's; Dask's own HTTP port on the machine is on its loopback only."""
    import ssl
    import urllib.request

    from prefect_remote.cluster.plan import DASHBOARD_TAG

    with RemoteCluster(n_workers=0, cpu=1, memory="1 GiB", provider=local_provider, keepalive="1 minute") as cluster:
        link = cluster.dashboard_link
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status") and cluster.dashboard_link == link
        with urllib.request.urlopen(link, timeout=30) as page:
            assert page.status == 200 and b"Dask" in page.read()
        machine = cluster.scheduler_machine
        port = int(machine.tags[DASHBOARD_TAG])
        scheduler_host = local_provider.client_address(machine)
        if local_provider.isolation != "process":  # a machine in a network namespace of its own: another host's address
            assert scheduler_host not in ("127.0.0.1", "localhost"), scheduler_host
        no_certificate = ssl.create_default_context()
        no_certificate.check_hostname, no_certificate.verify_mode = False, ssl.CERT_NONE
        another_clusters = ClusterCredentials.temporary().security().get_connection_args("client")["ssl_context"]
        for url, context in [
            (f"http://{scheduler_host}:{port}/status", None),
            (f"https://{scheduler_host}:{port}/status", no_certificate),
            (f"https://{scheduler_host}:{port}/status", another_clusters),
        ]:
            with pytest.raises(OSError):
                urllib.request.urlopen(url, context=context, timeout=10).read()
        logs = "\n".join(cluster.get_logs().values())
        assert f"dashboard port {port} (TLS)" in logs, logs
        with pytest.MonkeyPatch.context() as no_route:  # as from a laptop to a cloud scheduler with no public address
            no_route.setattr(local_provider, "client_address", lambda machine: None)
            assert cluster.dashboard_link == ""  # Dask's "no dashboard", not a link that cannot work
    with pytest.raises(OSError):  # the tunnel closed with the cluster
        urllib.request.urlopen(link, timeout=10)


def test_cluster_runs_scales_logs_and_closes(local_provider):
    with (
        RemoteCluster(n_workers=1, cpu=1, memory="1 GiB", provider=local_provider, keepalive="1 minute") as cluster,
        Client(cluster) as client,
    ):
        assert cluster.scheduler_address.startswith("tls://")
        assert client.submit(lambda x: x + 1, 41).result() == 42
        assert cluster.dashboard_link.startswith("http://") and cluster.dashboard_link.endswith("/status")
        [worker] = client.scheduler_info()["workers"].values()
        assert worker["nthreads"] == 1  # cpu=1 -> one thread
        assert worker["memory_limit"] == 2**30  # the machine's memory is Dask's memory limit
        cluster.scale(2)  # the second worker is launched by the controller, on the scheduler's machine
        wait_for(lambda: workers_connected(client) == 2, timeout=60, message="two workers")
        assert sorted(client.gather(client.map(lambda x: x * 2, range(50)))) == [x * 2 for x in range(50)]
        machines = cluster_machines(local_provider, cluster.cluster_name)
        assert {m.tags[ROLE_TAG] for m in machines} == {"scheduler", "worker"} and len(machines) == 3
        logs = cluster.get_logs()
        assert any(key.startswith("scheduler m-") for key in logs) and sum(key.startswith("worker m-") for key in logs) == 2
        status = cluster.status_info()
        assert status["minimum"] == status["maximum"] == 2 and not status["adaptive"]
        ids = [m.id for m in machines]
        credentials = SESSION_HOME / "clusters" / f"{cluster.cluster_name}.json"
        assert credentials.stat().st_mode & 0o777 == 0o600
    assert all(not m.alive for m in local_provider.wait(ids, timeout=30))
    assert not credentials.exists()  # a cluster that was shut down leaves no credentials behind


def test_clients_without_this_clusters_credentials_are_refused():
    with RemoteCluster(n_workers=0, provider=LocalProvider(isolation="process")) as cluster:
        with pytest.raises(OSError):
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=3)
        with pytest.raises(OSError):  # TLS, but another cluster's certificate
            Client(cluster.scheduler_address, security=ClusterCredentials.temporary().security(), timeout=3)
        with Client(cluster.scheduler_address, security=cluster.security, timeout=10) as client:  # the real ones work
            assert client.scheduler_info()["type"] == "Scheduler"


def test_adaptive_scales_from_zero_and_keeps_needed_results():
    provider = LocalProvider(isolation="process")
    with RemoteCluster(n_workers=[0, 2], provider=provider) as cluster, Client(cluster) as client:
        assert workers_connected(client) == 0
        held = client.submit(lambda: "kept", pure=False)
        assert held.result(timeout=60) == "kept"  # a worker was launched for the work
        time.sleep(6)  # past the scale-down wait: a worker holding a needed result is not retired
        assert held.result(timeout=5) == "kept"
        del held
        wait_for(lambda: not cluster_machines(provider, cluster.cluster_name, "worker"), timeout=30, message="scale down to zero")


CLIENT = textwrap.dedent(
    """
    import sys, time
    import prefect_remote

    @prefect_remote.function(name="warm-test", n_workers=[0, 1], keepalive="4 seconds")
    def where(x):
        import os
        return os.environ["PREFECT_REMOTE_MACHINE_ID"], x * 10

    machine, value = where(int(sys.argv[1]))
    print("attached" if where.cluster.attached else "created", where.cluster.scheduler_machine.id, machine, value, flush=True)
    time.sleep(600)
    """
)


def start_client(argument: int, script) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(argument)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PREFECT_REMOTE_LOCAL_ISOLATION": "process"},
    )


def test_warm_attach_from_another_process_and_cleanup_after_clients_are_killed(tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    provider = LocalProvider(isolation="process")
    creator = start_client(1, script)
    try:
        created, scheduler_id, _, value = creator.stdout.readline().split()
        assert created == "created" and value == "10"
        attacher = start_client(2, script)
        attached, attached_scheduler, _, value = attacher.stdout.readline().split()
        assert attached == "attached" and attached_scheduler == scheduler_id and value == "20"
        assert [m.id for m in cluster_machines(provider, "warm-test", "scheduler")] == [scheduler_id]
    finally:
        for process in (creator, locals().get("attacher")):
            if process:
                process.send_signal(signal.SIGKILL)
                process.wait()
    killed = time.monotonic()
    wait_for(
        lambda: not cluster_machines(provider, "warm-test"),
        timeout=4 + 10,
        interval=0.2,
        message="every machine gone within keepalive + 10 s",
    )
    assert time.monotonic() - killed <= 14


def test_controller_scales_after_its_creator_is_gone(tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT.replace('keepalive="4 seconds"', 'keepalive="20 seconds"'))
    provider = LocalProvider(isolation="process")
    creator = start_client(1, script)
    try:
        assert creator.stdout.readline().split()[0] == "created"
    finally:
        creator.send_signal(signal.SIGKILL)
        creator.wait()
    for worker in cluster_machines(provider, "warm-test", "worker"):
        provider.terminate([worker.id])  # nothing left to run on: the next call needs the controller
    cluster = RemoteCluster(name="warm-test", n_workers=[0, 1], keepalive="20 seconds", provider=provider)
    try:
        assert cluster.attached
        with Client(cluster) as client:
            assert client.submit(lambda: "scaled", pure=False).result(timeout=60) == "scaled"
    finally:
        cluster.close()


def test_worker_machines_end_when_their_scheduler_is_killed():
    provider = LocalProvider(isolation="process")
    cluster = RemoteCluster(n_workers=1, provider=provider, shutdown_on_close=False)
    try:
        with Client(cluster) as client:
            assert client.submit(lambda: 1, pure=False).result() == 1
        name = cluster.cluster_name
        [scheduler] = cluster_machines(provider, name, "scheduler")
        for pid in tagged_pids(f"{MACHINE_ID_ENV}={scheduler.id}".encode()):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not cluster_machines(provider, name), timeout=30, message="workers end with their scheduler")
    finally:
        cluster.close()


def test_asynchronous_use():
    async def main() -> None:
        async with RemoteCluster(n_workers=1, provider=LocalProvider(isolation="process"), asynchronous=True) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                assert await client.submit(lambda x: x * 3, 14) == 42
                await cluster.scale(0)
                assert (await cluster.status_info())["maximum"] == 0

    asyncio.run(main())


def test_idle_timeout_ends_the_cluster_even_with_a_client_connected():
    provider = LocalProvider(isolation="process")
    cluster = RemoteCluster(n_workers=1, idle_timeout="3 seconds", keepalive="5 minutes", provider=provider, shutdown_on_close=False)
    try:
        with Client(cluster) as client:
            assert client.submit(lambda: "work", pure=False).result() == "work"
            wait_for(lambda: not cluster_machines(provider, cluster.cluster_name), timeout=30, message="idle cluster gone")
    finally:
        cluster.close()


def test_workers_run_in_the_software_environment(tmp_path):
    from prefect_remote.software.capture import capture_environment

    (tmp_path / "job.py").write_text("import sys\n\ndef where():\n    return sys.prefix\n")
    env = capture_environment(root=tmp_path)
    with RemoteCluster(software=env.name, n_workers=1, provider=LocalProvider(isolation="process")) as cluster, Client(cluster) as client:
        prefix = client.submit(lambda: __import__("job").where(), pure=False).result(timeout=300)  # the project's code, too
        assert prefix == f"{SESSION_HOME}/envs/{env.name}/venv"


def test_a_cluster_closed_and_asked_for_again_starts_afresh():
    provider = LocalProvider(isolation="process")
    with RemoteCluster(name="again", n_workers=0, provider=provider) as first:
        first_scheduler = first.scheduler_machine.id
    with RemoteCluster(name="again", n_workers=0, provider=provider) as second:  # the first may still be stopping
        assert not second.attached and second.scheduler_machine.id != first_scheduler
