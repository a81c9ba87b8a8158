"""The gcp secret channel against the sandbox's Secret Manager, through the real client over REST:
one secret per launch, read back as a machine does, forgotten, and swept once orphaned."""

from __future__ import annotations

import json

import pytest

from prefect_remote.providers.gcp.secrets import LAUNCH_LABEL, forget_secrets, read_secrets, secret_id, store_secrets


def test_one_secret_per_launch_named_for_its_pool_read_back_by_version_then_forgotten(gcp_env, clients, gcs, monkeypatch):
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.providers.gcp.secrets import version_name

    monkeypatch.setenv("PREFECT_REMOTE_STORE", f"gs://{gcs.bucket()}/store")
    records = GCPProvider().records
    pool = records.label
    store_secrets(clients, "launch-00000000000a", {"TOKEN": "s3cr3t", "OTHER": "é"}, records)
    assert json.loads(gcp_env.secrets.value(secret_id("launch-00000000000a", pool))) == {"TOKEN": "s3cr3t", "OTHER": "é"}
    name = f"projects/{clients.project}/secrets/prefect-remote-{pool}-launch-00000000000a"
    secret = clients.secret_manager().get_secret(name=name)
    assert secret.labels[LAUNCH_LABEL] == "launch-00000000000a" and "s3cr3t" not in str(secret)
    version = version_name(clients.project, "launch-00000000000a", pool)
    assert version == f"{name}/versions/1"  # pinned: a version added later is never read
    assert read_secrets(clients.project, version, api_endpoint=gcp_env.url) == {"TOKEN": "s3cr3t", "OTHER": "é"}
    clients.secret_manager().add_secret_version(parent=name, payload={"data": b'{"TOKEN": "swapped"}'})
    assert read_secrets(clients.project, version, api_endpoint=gcp_env.url)["TOKEN"] == "s3cr3t"
    forget_secrets(clients, "launch-00000000000a", pool)
    forget_secrets(clients, "launch-00000000000a", pool)  # already gone: fine
    with pytest.raises(Exception, match="not found"):
        read_secrets(clients.project, version, api_endpoint=gcp_env.url)


def test_too_large_a_secret_env_is_refused_before_any_call(gcp_env, clients):
    before = sum(gcp_env.calls.values())
    with pytest.raises(ValueError, match="over the 64 KiB a Secret Manager secret holds"):
        store_secrets(clients, "launch-00000000000b", {"BIG": "x" * 70_000}, None)  # type: ignore[arg-type]
    assert sum(gcp_env.calls.values()) == before


def test_orphans_are_swept(gcs, gcp_env, clients, monkeypatch):
    from prefect_remote.providers.base import InstanceType, Launch
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.spec import MachineSpec

    monkeypatch.setenv("PREFECT_REMOTE_STORE", f"gs://{gcs.bucket()}/store")
    provider = GCPProvider()
    records = provider.records
    for launch_id, machine_id in (("launch-0000000000c1", "vm-0000000000c1"), ("launch-0000000000c2", "vm-0000000000c2")):
        store_secrets(clients, launch_id, {"TOKEN": "t"}, records)
        launch = Launch(launch_id, "", MachineSpec(), InstanceType("e2-small", 2, 2**31), 1, {}, None, True)
        records.create([machine_id], launch, service="Compute Engine")
    records.end("vm-0000000000c1", reason="payload finished", exit_code=0)
    assert provider.sweep_secrets() == []  # younger than an hour: a launch may still be starting
    other = GCPProvider()
    other.store_url = f"gs://{gcs.bucket()}/store"
    store_secrets(clients, "launch-0000000000c3", {"TOKEN": "t"}, other.records)  # another store's launch: not these records'
    assert provider.sweep_secrets(older_than=0) == ["launch-0000000000c1"]  # c2's machine still runs
    names = [s.name.rsplit("/", 1)[-1] for s in clients.secret_manager().list_secrets(parent=f"projects/{clients.project}")]
    assert secret_id("launch-0000000000c1", records.label) not in names and secret_id("launch-0000000000c2", records.label) in names
    assert secret_id("launch-0000000000c3", other.records.label) in names
    forget_secrets(clients, "launch-0000000000c2", records.label)
    forget_secrets(clients, "launch-0000000000c3", other.records.label)


def test_terminating_a_launchs_last_machine_deletes_its_secret(gcp_env):
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.sandbox.gcp.common import GoogleError
    from prefect_remote.spec import MachineSpec

    provider = GCPProvider(service="cloud-run")
    first, second = provider.launch(MachineSpec(), BootPayload(["sleep", "600"], secrets={"TOKEN": "t"}), count=2, tags={"test": "secrets"})
    launch_id, pool = provider.describe(first.id).details["launch"], provider.records.label
    assert gcp_env.secrets.value(secret_id(launch_id, pool))
    provider.terminate([first.id])
    assert gcp_env.secrets.value(secret_id(launch_id, pool))  # its other machine may still read it
    provider.terminate([second.id])
    with pytest.raises(GoogleError, match="404|not found|NOT_FOUND"):
        gcp_env.secrets.value(secret_id(launch_id, pool))
