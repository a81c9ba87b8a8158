"""A cluster in a container image, on local-provider machines with this host's Podman: the scheduler
and the workers run in a Dask image that has no prefect-remote (the agent mounts its own in), and an
image whose Dask differs from the client's is refused before any worker starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import distributed
import pytest

import prefect_remote
from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG
from prefect_remote.cluster.remote import ClusterVersionError, RemoteCluster
from prefect_remote.machine.container import LABEL
from prefect_remote.providers.local import LocalProvider
from tests.conftest import SESSION_HOME, wait_for
from tests.images import DASK_PREFIX, import_dask_image, import_test_image, remove_image

OLDER_DISTRIBUTED = "2026.7.0"  # a release before this environment's (tests/cluster/test_image.py::test_versions_differ)
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def dask_image():
    """A Dask image at this environment's distributed, without prefect-remote."""
    image = import_dask_image(distributed.__version__)
    yield image
    remove_image(image)


@pytest.fixture(scope="module")
def older_dask_image():
    image = import_dask_image(OLDER_DISTRIBUTED)
    yield image
    remove_image(image)


def test_versions_differ():
    assert distributed.__version__ != OLDER_DISTRIBUTED


def machines_of(provider: LocalProvider, name: str, **tags: str) -> list:
    return provider.list({CLUSTER_TAG: name, **tags}, include_terminated=True)


def containers_left(machine_ids: list[str]) -> list[str]:
    """The engine's containers (running or not) of these machines."""
    listed = subprocess.run(["podman", "ps", "--all", "--format", '{{index .Labels "' + LABEL + '"}}'], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    return [line for line in listed.stdout.split() if line in machine_ids]


def test_a_cluster_in_an_image_computes_with_the_images_python_on_scheduler_and_workers(dask_image):
    image = dask_image
    provider = LocalProvider()
    name = "image-computes"
    with (
        RemoteCluster(name, image=image, n_workers=1, cpu=1, memory="1 GiB", keepalive="1 minute", provider=provider) as cluster,
        cluster.get_client() as client,
    ):
        client.wait_for_workers(1, timeout=120)
        assert client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
        assert client.submit(lambda x: __import__("in_the_image").double(x), 21).result(timeout=60) == 42  # the image's PYTHONPATH
        assert client.run_on_scheduler(lambda: sys.prefix) == DASK_PREFIX  # the image's environment, not this one's
        assert set(client.run(lambda: sys.prefix).values()) == {DASK_PREFIX}
        machines = [m.id for m in machines_of(provider, name)]
        assert len(machines) == 2 and len(containers_left(machines)) == 2  # the scheduler's and the worker's
        log = provider.logs(cluster.scheduler_machine.id).text
        assert f"image pull: {image} is on this machine already" in log and "provider relay for cluster image-computes" in log
    provider.wait(machines, timeout=60)
    assert containers_left(machines) == []


def test_an_image_with_another_distributed_is_refused_naming_both_versions_and_nothing_is_left_running(older_dask_image):
    image = older_dask_image
    provider = LocalProvider()
    name = "image-mismatch"
    expected = (
        f"image '{image}' has distributed {OLDER_DISTRIBUTED} (Python {PYTHON}), and this cluster's client distributed "
        f"{distributed.__version__} (Python {PYTHON}): a cluster's scheduler and workers run the image's Dask, which must match "
        f"its client's; build the image with distributed=={distributed.__version__}, or run the client with the image's"
    )
    with pytest.raises(RuntimeError, match=re.escape(expected) + r" \(scheduler machine \S+ ended; no worker started\)$") as raised:
        RemoteCluster(name, image=image, n_workers=2, cpu=1, memory="1 GiB", keepalive="1 minute", provider=provider)
    assert isinstance(raised.value.__cause__, ClusterVersionError)  # (distributed wraps what a cluster's start raises)
    machines = machines_of(provider, name)
    assert [m.tags[ROLE_TAG] for m in machines] == ["scheduler"]  # no worker machine was launched
    assert not any(m.alive for m in provider.wait([m.id for m in machines], timeout=30))
    assert containers_left([m.id for m in machines]) == []
    assert not (SESSION_HOME / "clusters" / f"{name}.json").exists()  # its credentials went with it


def test_a_function_in_an_image_is_called_submitted_and_mapped(dask_image):
    """``prefect_remote.function(image=...)``: its calls run on the image's workers, which have no
    prefect-remote but the agent's, mounted in."""
    provider = LocalProvider()
    double = prefect_remote.function(image=dask_image, provider=provider, name="image-function", keepalive="30 seconds")(
        lambda x: __import__("in_the_image").double(x)
    )
    try:
        assert double(21) == 42
        assert double.submit(4).result() == 8
        assert list(double.map(range(5))) == [0, 2, 4, 6, 8]
        machines = [m.id for m in machines_of(provider, "image-function")]
    finally:
        double.close()
    provider.wait(machines, timeout=60)
    assert containers_left(machines) == []


def test_a_remote_task_runner_in_an_image_runs_prefect_tasks(prefect_server):
    """``RemoteTaskRunner(image=...)``: Prefect's tasks run on the image's workers (an image with
    Prefect, as any a flow runs in: here this interpreter's environment, mounted in)."""
    from prefect import flow, task
    from prefect.settings import PREFECT_API_URL, temporary_settings

    certificates = "/etc/ssl/certs/ca-certificates.crt"  # (Prefect's client loads the CA bundle this host's settings name)
    image = import_test_image({certificates: Path(certificates).read_text()})
    provider = LocalProvider()

    @task
    def square(n: int) -> tuple[int, bool]:
        return n * n, os.path.exists("/run/.containerenv")  # (Podman's mark in each container)

    @flow(task_runner=prefect_remote.RemoteTaskRunner(image=image, n_workers=1, keepalive="10 seconds", provider=provider))
    def fan_out() -> list[tuple[int, bool]]:
        return square.map(range(4)).result()

    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            state = fan_out(return_state=True)
        assert state.is_completed() and state.result() == [(0, True), (1, True), (4, True), (9, True)]
        assert not os.path.exists("/run/.containerenv")  # (this test itself runs outside any container)
        wait_for(lambda: not [m for m in provider.list() if CLUSTER_TAG in m.tags], timeout=30, message="cluster machines gone")
    finally:
        remove_image(image)
