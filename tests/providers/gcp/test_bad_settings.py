"""The gcp provider's bad settings on the sandbox GCP: no project, no credentials, no bucket, a GPU
where the zone has none; each fails at launch with the fix named, and starts nothing. (Bad job
variables of a push pool's runs are tests/workers/push_contract.py's.)"""

from __future__ import annotations

import os
import time

import pytest


def launch_one(**options):
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.spec import MachineSpec

    return GCPProvider(**options).launch(MachineSpec(), BootPayload(["true"]), tags={"test": "bad-input"})


def no_machines_tagged() -> bool:
    from prefect_remote.providers.gcp import GCPProvider

    return GCPProvider().list({"test": "bad-input"}, include_terminated=True) == []


def test_a_gpu_in_a_zone_without_gpus_names_zones_with_them(gcp_env):
    from prefect_remote.errors import CapabilityError
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.spec import MachineSpec

    with pytest.raises(CapabilityError, match=r"no GPU in zone us-central1-c; use a zone with GPUs .*us-central1-a has T4"):
        GCPProvider(zone="us-central1-c").check_spec(MachineSpec(gpu="t4"))


def test_no_project_names_the_setting(gcp_env, monkeypatch, tmp_path):
    import json

    from prefect_remote.providers.gcp.clients import GCPError

    key = json.loads(gcp_env.key_file.read_text())
    key.pop("project_id", None)  # credentials that name no project
    (tmp_path / "key.json").write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud configuration either
    for name in ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "PREFECT_REMOTE_GCP_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(GCPError, match="no Google Cloud project for the gcp provider: set PREFECT_REMOTE_GCP_PROJECT"):
        launch_one()


def test_no_credentials_fail_within_seconds(gcp_env, monkeypatch, tmp_path):
    from prefect_remote.providers.gcp.clients import GCPError
    from prefect_remote.software.store import StoreError

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no `gcloud auth application-default login`
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
        monkeypatch.delenv(name, raising=False)  # no metadata server: google-auth pings the real one's address
    started = time.monotonic()
    with pytest.raises(
        (GCPError, StoreError),  # the store's, the first thing a launch touches
        match=r"no Google Cloud credentials found .*`gcloud auth application-default login`.*GOOGLE_APPLICATION_CREDENTIALS",
    ):
        launch_one()
    assert time.monotonic() - started < 10


def test_a_missing_bucket_names_how_to_make_it(gcp_env, monkeypatch):
    from prefect_remote.software.store import StoreError

    monkeypatch.setenv("PREFECT_REMOTE_STORE", "gs://no-such-bucket/x")
    with pytest.raises(StoreError, match=r"bucket no-such-bucket does not exist .*gcloud storage buckets create gs://no-such-bucket"):
        launch_one()
    monkeypatch.setenv("PREFECT_REMOTE_STORE", gcp_env.store)
    assert no_machines_tagged()


@pytest.mark.parametrize("service", ["cloud-run", "compute"])
def test_no_service_account_refuses_the_default_compute_account_and_names_the_fix(gcp_env, monkeypatch, service):
    """Without a service account, Google runs a job or VM as the project's default compute account
    (often an Editor): refused before anything starts, naming --provision-infra and the setting. The
    sandbox's project has that account, an Editor, as a real project does."""
    from prefect_remote.errors import CapabilityError
    from prefect_remote.providers.gcp import GCPProvider

    account = os.environ["PREFECT_REMOTE_GCP_SERVICE_ACCOUNT"]
    clients, default = GCPProvider(service_account=account).clients, f"{gcp_env.project_number}-compute@developer.gserviceaccount.com"
    assert default in [a["email"] for a in clients.iam().list_all("serviceAccounts", "accounts")]
    policy = clients.resource_manager().get_iam_policy(request={"resource": f"projects/{gcp_env.project}"})
    assert "roles/editor" in [b.role for b in policy.bindings if f"serviceAccount:{default}" in b.members]
    monkeypatch.delenv("PREFECT_REMOTE_GCP_SERVICE_ACCOUNT")
    before = {machine.id for machine in GCPProvider(service_account=account).list(include_terminated=True)}
    with pytest.raises(CapabilityError, match=r"default compute service account .*--provision-infra .*PREFECT_REMOTE_GCP_SERVICE_ACCOUNT"):
        launch_one(service=service)
    # Nothing started. (Earlier tests' machines may still be ending meanwhile: only a new one counts.)
    assert [m for m in GCPProvider(service_account=account).list(include_terminated=True) if m.id not in before] == []
    [machine] = launch_one(service=service, service_account=account)  # with one, the same launch starts
    GCPProvider(service_account=account).terminate([machine.id], reason="test over")
