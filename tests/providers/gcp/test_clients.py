"""GoogleClients and translated(): the project and credentials they find, and Google's refusals as
errors that name the fix, against the sandbox's fakes through the real clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from google.api_core import exceptions

from prefect_remote.providers.gcp.clients import GCPError, GoogleClients, translated
from prefect_remote.providers.gcp.provider import GCPProvider
from prefect_remote.providers.gcp.secrets import store_secrets
from tests.providers.gcp.conftest import Options


def test_one_client_per_api_with_the_endpoint(gcp_env, clients):
    assert clients.project == "sandbox-project"
    assert clients.secret_manager() is clients.secret_manager()
    assert gcp_env.url.removeprefix("http://") in clients.secret_manager().api_endpoint
    assert clients.logging().project == "sandbox-project"


def test_the_project_comes_from_the_credentials_or_is_asked_for(gcp_env, monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    assert GoogleClients(Options(None, gcp_env.url)).project == "sandbox-project"  # the key's
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    assert GoogleClients(Options(None, gcp_env.url)).project == "env-project"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    key = json.loads(gcp_env.key_file.read_text())
    del key["project_id"]
    (tmp_path / "key.json").write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    with pytest.raises(GCPError, match="no Google Cloud project .* PREFECT_REMOTE_GCP_PROJECT"):
        _ = GoogleClients(Options(None, gcp_env.url)).project


def test_no_credentials(monkeypatch, tmp_path):
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_IP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(GCPError, match="no Google Cloud credentials found .*gcloud auth application-default login"):
        GoogleClients(Options("my-project", None)).secret_manager()


def test_a_refusal_names_the_role(gcp_env):
    other = GoogleClients(Options("someone-elses", gcp_env.url))  # the fake refuses other projects, as Google does
    with pytest.raises(
        GCPError,
        match=(
            r"refused secretmanager.secrets.create in project someone-elses.*grant it roles/secretmanager.admin "
            r".*add-iam-policy-binding someone-elses"
        ),
    ):
        store_secrets(other, "launch-00000000000d", {"TOKEN": "t"}, GCPProvider().records)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            exceptions.Forbidden("Cloud Run Admin API has not been used in project 123 before or it is disabled."),
            r"run.googleapis.com API is not enabled in project p-123456 .*gcloud services enable run.googleapis.com --project=p-123456",
        ),
        (
            exceptions.Forbidden("Permission 'iam.serviceaccounts.actAs' denied on service account x"),
            r"grant it roles/iam.serviceAccountUser",
        ),
        (
            exceptions.NotFound("Project 'p-123456' not found or permission denied."),
            r"project 'p-123456' not found .*PREFECT_REMOTE_GCP_PROJECT",
        ),
        (
            exceptions.Unauthorized("Request had invalid authentication credentials."),
            r"rejected the credentials .*gcloud auth application-default login",
        ),
    ],
)
def test_translated(error, expected):
    with pytest.raises(GCPError, match=expected):
        with translated("create Cloud Run jobs", project="p-123456"):
            raise error


def test_other_errors_pass():
    missing = exceptions.NotFound("The resource 'projects/p-123456/zones/us-central1-a/instances/vm-1' was not found")
    with pytest.raises(exceptions.NotFound):
        with translated("compute.instances.get", project="p-123456"):
            raise missing


def test_the_member_the_credentials_act_as(gcp_env, monkeypatch, tmp_path):
    """Provisioning grants the identity that runs it leave to launch as the machines' account: a key's
    service account, a VM's (named by the metadata server once a token is fetched), a user's account;
    None when user credentials do not name theirs."""
    assert GoogleClients(Options(None, gcp_env.url)).member() == f"serviceAccount:{gcp_env.launcher_account}"
    gcp_env.metadata.register("member-test", lambda: {"instance/name": "member-test"}, gcp_env.machine_account)
    # google-auth reads GCE_METADATA_HOST when it is imported: a process of its own, as on a machine
    environ = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    environ |= {**gcp_env.metadata.env("member-test", gcp_env.url), "CLOUDSDK_CONFIG": str(tmp_path)}
    script = (
        "from prefect_remote.providers.gcp.clients import GoogleClients\n"
        "from tests.providers.gcp.conftest import Options\n"
        f"print(GoogleClients(Options(None, {gcp_env.url!r})).member())"
    )
    try:
        found = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60)
    finally:
        gcp_env.metadata.forget("member-test")
    assert found.stdout.strip() == f"serviceAccount:{gcp_env.machine_account}", found.stderr
    user = {"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}
    for account, member in (("alice@example.com", "user:alice@example.com"), ("", None)):
        (tmp_path / "user.json").write_text(json.dumps({**user, "account": account}))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "user.json"))
        assert GoogleClients(Options("sandbox-project", gcp_env.url)).member() == member
