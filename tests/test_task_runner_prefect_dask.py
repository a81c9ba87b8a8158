"""prefect-dask's own task-runner tests (``tests/test_task_runners.py`` of its source distribution, at
the version uv.lock pins: see :mod:`tests.upstream`), run on ``RemoteTaskRunner`` with every
assertion kept: ``RemoteTaskRunner`` is a drop-in for ``DaskTaskRunner``.

Only the runner is swapped. Their ``task_runner`` fixture picks each configuration by fixture name;
the fixtures of those names here make ``RemoteTaskRunner``\\ s on the local provider, and a test that
makes a runner itself gets a ``RemoteTaskRunner`` where it says ``DaskTaskRunner()``. Tests of
``DaskTaskRunner``'s own constructor options, which ``RemoteTaskRunner`` refuses, are left out, each
with its reason.

Their suite shares one running cluster between its tests; here each configuration's cluster is started
once for the module and stays up between tests, so each flow's runner attaches to it, as a runner with
the same arguments does to any running cluster. (A runner that creates its cluster and shuts it down
is tested in ``tests/test_task_runner.py``.)
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_remote import RemoteCluster, RemoteTaskRunner
from prefect_remote.cluster.plan import CLUSTER_TAG
from prefect_remote.providers.local import LocalProvider
from tests.conftest import end_all_machines
from tests.upstream import import_prefect_dask_tests

upstream = import_prefect_dask_tests("test_task_runners")
TestDaskTaskRunner = upstream.TestDaskTaskRunner

# Their async tests ran on pytest-asyncio; anyio's pytest plugin (installed with Prefect) runs them here.
pytestmark = pytest.mark.anyio

# Their configurations, on machines: a LocalCluster's worker processes and threads become worker
# machines and threads. Each has at least three task slots, as their test of completion order needs
# (a LocalCluster has one per CPU). Their existing cluster is a default LocalCluster, started first.
RUNNERS = {
    "default_dask_task_runner": {"n_workers": 2, "threads_per_worker": 2},
    "dask_task_runner_with_process_pool": {"n_workers": 3, "threads_per_worker": 1},
    "dask_task_runner_with_thread_pool": {"n_workers": 1, "threads_per_worker": 4},
    "dask_task_runner_with_existing_cluster_address": {"name": "prefect-dask-existing", "n_workers": 2, "threads_per_worker": 2},
}
# The clusters are closed when the module ends; until then a busy host must not end a scheduler whose
# event loop it holds back for a while (a scheduler that misses its lease for keepalive + 5 s is ended).
KEEPALIVE = "1 minute"

LEFT_OUT = {
    "test_dask_cluster_adapt_is_properly_called": "DaskTaskRunner's cluster_class= and adapt_kwargs=: RemoteTaskRunner always runs "
    "a RemoteCluster, scaled by n_workers=[min, max], and refuses both (tests/test_task_runner.py checks that it says so)",
    "test_string_cluster_class_is_properly_instantiated": "DaskTaskRunner's cluster_class=: RemoteTaskRunner always runs a RemoteCluster, "
    "and refuses cluster_class= (tests/test_task_runner.py checks that it says so)",
}
for _name, _reason in LEFT_OUT.items():
    setattr(TestDaskTaskRunner, _name, pytest.mark.skip(reason=f"tests {_reason}")(getattr(TestDaskTaskRunner, _name)))


@pytest.fixture(scope="module")
def clusters():
    """The configurations' clusters, up for the whole module with all their workers (as a LocalCluster
    starts them before it returns: their test of completion order needs every task slot from its
    first task); their machines end with it."""
    with contextlib.ExitStack() as stack:
        stack.callback(end_all_machines)
        clusters = [stack.enter_context(RemoteCluster(keepalive=KEEPALIVE, **arguments)) for arguments in RUNNERS.values()]
        for cluster, arguments in zip(clusters, RUNNERS.values(), strict=True):
            cluster.wait_for_workers(arguments["n_workers"], timeout=300)
        yield clusters


@pytest.fixture(autouse=True)
def no_machine_outlives_its_test(clusters):
    """(The session's rule, but for the module's clusters.) Their machines stay up between tests; any
    other machine a test starts ends with it."""
    yield
    kept = {cluster.cluster_name for cluster in clusters}  # (by tag: replacements for workers that died are launched at any time)
    provider = LocalProvider()
    if ended := [machine.id for machine in provider.list() if machine.tags.get(CLUSTER_TAG) not in kept]:
        provider.terminate(ended, reason="test cleanup")
        provider.wait(ended, timeout=20)


@pytest.fixture(autouse=True)
def prefect_api(prefect_server, monkeypatch):
    """Their suite's Prefect server (a session harness) is this session's server; and where a test
    makes a ``DaskTaskRunner()`` itself, it makes the default configuration's ``RemoteTaskRunner``."""
    monkeypatch.setattr(upstream, "DaskTaskRunner", functools.partial(_runner, "default_dask_task_runner"))
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield


def _runner(configuration: str, **arguments: Any) -> RemoteTaskRunner:
    return RemoteTaskRunner(keepalive=KEEPALIVE, **RUNNERS[configuration], **arguments)


@pytest.fixture
def default_dask_task_runner():
    yield _runner("default_dask_task_runner")


@pytest.fixture
def dask_task_runner_with_process_pool():
    yield _runner("dask_task_runner_with_process_pool")


@pytest.fixture
def dask_task_runner_with_thread_pool():
    yield _runner("dask_task_runner_with_thread_pool")


@pytest.fixture
def dask_task_runner_with_existing_cluster_address():
    yield _runner("dask_task_runner_with_existing_cluster_address")
