"""The provider relay beside a cluster scheduler's container (prefect_remote.cluster.provider_relay), as
the agent runs it (``python -m``), with the local provider: the calls, their errors, and its key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from multiprocessing import AuthenticationError

import pytest

from prefect_remote.cluster.credentials import ClusterCredentials
from prefect_remote.cluster.plan import PLAN_ENV, ClusterPlan, WorkerPlan
from prefect_remote.cluster.provider_relay import RELAY_ENV, RelayedProvider, _portable, relay_key
from prefect_remote.errors import AccessDenied, MachineNotFound
from prefect_remote.providers.local import LocalProvider


class CloudRefused(AccessDenied):
    """A provider's own refusal, whose module the image may not have."""


@pytest.fixture
def relay(tmp_path):
    provider = LocalProvider(isolation="process")
    worker = WorkerPlan(spec={}, secrets={}, command=["python"], env={}, nthreads=1, memory_limit=2**30)
    plan = ClusterPlan(
        name="relayed",
        provider="local",
        provider_options=provider.client_options(),
        credentials=ClusterCredentials.temporary().to_json(),
        keepalive=30.0,
        idle_timeout=None,
        minimum=0,
        maximum=1,
        adaptive=False,
        worker=worker,
    )
    address = str(tmp_path / "relay.sock")
    env = {**os.environ, PLAN_ENV: plan.to_json(), RELAY_ENV: address}
    process = subprocess.Popen([sys.executable, "-m", "prefect_remote.cluster.provider_relay"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        yield plan, address, process
    finally:
        process.kill()
        process.wait()


def test_the_relay_answers_the_providers_calls_and_raises_its_errors_here(relay):
    plan, address, process = relay
    provider = RelayedProvider(address, relay_key(plan))
    assert process.stdout.readline().strip() == f"provider relay for cluster relayed at {address}"
    assert (provider.name, provider.lease_interval) == ("local", LocalProvider.lease_interval)
    assert provider.list({"dask-cluster": "relayed"}) == []
    with pytest.raises(MachineNotFound, match="m-nowhere"):
        provider.describe("m-nowhere")
    with pytest.raises(AttributeError, match="relays list, describe, terminate, renew_leases, launch_workers, not 'launch'"):
        provider.launch  # noqa: B018 - only what the controller calls crosses the wall


def test_a_connection_without_the_clusters_key_is_refused_and_the_relay_goes_on(relay):
    plan, address, _ = relay
    with pytest.raises(AuthenticationError):
        RelayedProvider(address, b"not the key")
    assert RelayedProvider(address, relay_key(plan)).list({"dask-cluster": "relayed"}) == []


def test_errors_cross_as_classes_the_image_has():
    assert type(error := _portable(MachineNotFound("m-1"))) is MachineNotFound and str(error) == "m-1"
    assert type(error := _portable(CloudRefused("no"))) is AccessDenied and str(error) == "CloudRefused: no"
    assert type(error := _portable(json.JSONDecodeError("bad", "x", 0))) is ValueError and str(error).startswith("JSONDecodeError: bad")
