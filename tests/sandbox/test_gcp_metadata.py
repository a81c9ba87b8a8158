"""The sandbox's metadata server, as google-auth uses it on a machine (GCE_METADATA_HOST is read at
import, so each check runs in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

from google.cloud import secretmanager

PROBE = """
import json, google.auth, google.auth.compute_engine
from google.auth.compute_engine import _metadata
from google.auth.transport.requests import Request
credentials = google.auth.compute_engine.Credentials()
credentials.refresh(Request())
found, project = google.auth.default()
print(json.dumps({
    "token": credentials.token, "email": credentials.service_account_email, "project": project,
    "default": type(found).__name__, "name": _metadata.get(Request(), "instance/name"),
    "attributes": _metadata.get(Request(), "instance/attributes/", recursive=True),
    "zone": _metadata.get(Request(), "instance/zone"),
}))
"""


def test_google_auth_finds_project_and_token_that_the_api_accepts(gcp_sandbox):
    facts = {
        "instance/name": "vm-0abc",
        "instance/zone": f"projects/{gcp_sandbox.project_number}/zones/us-central1-a",
        "instance/attributes": {"prefect-remote-launch": "l-1"},
    }
    gcp_sandbox.metadata.register("vm-0abc", lambda: facts, gcp_sandbox.machine_account)
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **gcp_sandbox.metadata.env("vm-0abc", gcp_sandbox.url)}
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["project"] == gcp_sandbox.project and seen["default"] == "Credentials"
        assert seen["email"] == gcp_sandbox.machine_account and seen["name"] == "vm-0abc"
        assert seen["attributes"] == {"prefect-remote-launch": "l-1"} and seen["zone"].endswith("/zones/us-central1-a")

        # The token is one the sandbox's APIs accept: an unknown launch secret the machine may read is 404, not 401.
        from google.oauth2.credentials import Credentials

        client = secretmanager.SecretManagerServiceClient(
            transport="rest", credentials=Credentials(seen["token"]), client_options={"api_endpoint": gcp_sandbox.url}
        )
        try:
            client.access_secret_version(name=f"projects/{gcp_sandbox.project}/secrets/prefect-remote-none/versions/latest")
        except Exception as error:
            assert getattr(error, "code", None) == 404, error

        base = f"{gcp_sandbox.url}/vm-0abc/computeMetadata/v1/"
        assert _get(base + "instance/name", flavor=False)[0] == 403  # as Google's: the header is required
        assert _get(base + "instance/nothing")[0] == 404
        assert _get(f"{gcp_sandbox.url}/vm-unknown/computeMetadata/v1/instance/name")[0] == 404
    finally:
        gcp_sandbox.metadata.forget("vm-0abc")
    assert _get(base + "instance/name")[0] == 404


def _get(url: str, flavor: bool = True) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"} if flavor else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
