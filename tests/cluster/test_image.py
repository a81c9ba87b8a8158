"""A cluster in a container image, on local-provider machines with this host's Podman: the scheduler
and the workers run in a Dask image that has no prefect-remote (the agent mounts its own in), and an
image whose Dask differs from the client's is refused before any worker starts."""

from __future__ import annotations

import re
import subprocess
import sys

import distributed
import pytest

from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG
from prefect_remote.cluster.remote import ClusterVersionError, RemoteCluster
from prefect_remote.machine.container import LABEL
from prefect_remote.providers.local import LocalProvider
from tests.conftest import SESSION_HOME
from tests.images import DASK_PREFIX, import_dask_image, remove_image

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
