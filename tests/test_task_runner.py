"""Prefect flows on a real Prefect server with work on local-provider clusters: ``@task`` over
``@prefect_remote.function``, and ``RemoteTaskRunner``."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

import prefect_remote
from prefect_remote.cluster.plan import CLUSTER_TAG
from prefect_remote.providers.local import LocalProvider
from tests.conftest import machine_folders, wait_for
from tests.workers.conftest import run_logs


@pytest.fixture
def api(prefect_server):
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            yield client


@prefect_remote.function(n_workers=1, keepalive="10 seconds", provider=LocalProvider(isolation="process"))
def measure(x: int) -> int:
    print(f"measured {x} remotely")
    return x * x


@task(log_prints=True)
@prefect_remote.function(n_workers=1, keepalive="10 seconds", provider=LocalProvider(isolation="process"))
def remote_task(x: int) -> int:
    print(f"remote task saw {x}")
    return x + 100


def test_task_over_function_in_a_flow_logs_remote_prints(api):
    @flow(log_prints=True)
    def pipeline() -> list[int]:
        return [remote_task(1), measure(3)]

    state = pipeline(return_state=True)
    assert state.is_completed() and state.result() == [101, 9]
    flow_run_id = state.state_details.flow_run_id
    wait_for(
        lambda: any("remote task saw 1" in line for line in run_logs(api, flow_run_id)),
        timeout=20,
        message="remote print in the task's logs",
    )
    [task_run] = api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert task_run.name.startswith("remote_task") and task_run.state.is_completed()
    remote_task.fn.cluster.close()


def test_remote_task_runner_runs_200_tasks(api):
    # Namespace machines where the host has them: the tasks reach the loopback server through the bridge.
    provider = LocalProvider()

    @task
    def square(n: int) -> int:
        return n * n

    runner = prefect_remote.RemoteTaskRunner(n_workers=2, threads_per_worker=2, keepalive="10 seconds", provider=provider)
    assert runner.duplicate() == runner

    @flow(task_runner=runner)
    def fan_out() -> int:
        return sum(square.map(range(200)).result())

    state = fan_out(return_state=True)
    assert state.is_completed() and state.result() == sum(n * n for n in range(200))
    # The server records task runs from the events their workers send, so the last ones may land just after the flow ends.
    runs_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    completed = lambda: [run for run in api.read_task_runs(flow_run_filter=runs_filter, limit=200) if run.state.is_completed()]  # noqa: E731
    wait_for(lambda: len(completed()) == 200, timeout=30, interval=0.5, message="200 completed task runs")
    # The run created its cluster, so it shut it down at the end.
    wait_for(lambda: not [m for m in provider.list() if CLUSTER_TAG in m.tags], timeout=30, message="cluster machines gone")


def test_tasks_submit_tasks_with_their_workers_credentials_and_send_none(api):
    """A task that submits a task runs a copy of the flow's runner on its worker (Prefect duplicates the
    flow's runner there): it connects with that worker's own TLS credentials, and neither what the
    flow's process sends to the workers (the flow with its runner, the run's context) nor what a worker
    sends on carries them, nor do the run's logs."""
    import cloudpickle
    import distributed
    from prefect.context import get_run_context, serialize_context

    @task
    def child() -> str:
        return "from the child"

    @task
    def parent() -> tuple[str, bool]:
        key = distributed.get_worker().security.tls_worker_key  # the cluster's key, which this machine holds already
        sent = cloudpickle.dumps((child, serialize_context()))  # what submitting the child sends from here
        return child.submit().result(), key in sent.decode("latin-1")

    provider = LocalProvider(isolation="process")
    runner = prefect_remote.RemoteTaskRunner(n_workers=1, threads_per_worker=2, keepalive="10 seconds", provider=provider)

    @flow(task_runner=runner)
    def umbrella() -> tuple[str, bool, bool]:
        key = get_run_context().task_runner.client.cluster.security.tls_client_key
        sent = cloudpickle.dumps((parent, serialize_context()))  # what submitting the parent sends from here
        result, worker_sent_key = parent.submit().result()
        return result, key in sent.decode("latin-1"), worker_sent_key

    state = umbrella(return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == ("from the child", False, False)
    assert not [line for line in run_logs(api, state.state_details.flow_run_id) if "PRIVATE KEY" in line]


@pytest.mark.parametrize(
    ("argument", "instead"),
    [
        ("cluster", "arguments \\(or the name=\\) of the RemoteCluster"),
        ("address", "arguments \\(or the name=\\) of the RemoteCluster"),
        ("cluster_class", "prefect_dask.DaskTaskRunner"),
        ("cluster_kwargs", "RemoteTaskRunner\\(cpu=4"),
        ("adapt_kwargs", "n_workers=\\[minimum, maximum\\]"),
        ("client_kwargs", "RemoteCluster.get_client\\(\\)"),
    ],
)
def test_dask_task_runner_options_are_refused_saying_what_to_use_instead(argument, instead):
    before = machine_folders()
    with pytest.raises(ValueError, match=f"RemoteTaskRunner does not take DaskTaskRunner's {argument}=: .*{instead}"):
        prefect_remote.RemoteTaskRunner(n_workers=1, **{argument: {}})
    assert machine_folders() == before
