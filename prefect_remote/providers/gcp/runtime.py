"""The gcp provider's machine side, on a Cloud Run task or a Compute Engine VM.

Who the machine is: ``$CLOUD_RUN_JOB`` on Cloud Run (the job is the machine), else the metadata
server's instance name. Its lease and end record are its object in the store (one GET per lease
read). Its secrets: on Cloud Run, ``$PREFECT_REMOTE_SECRETS_JSON``, which Cloud Run fills from Secret
Manager; on a VM, Secret Manager itself. Its log goes to Cloud Logging. It ends by recording why, then
deleting itself (a VM) or exiting (a Cloud Run task, whose exit code is the payload's).

Standard library only at import: the agent imports it on every boot. The google-cloud-* clients it
uses are the provider's ``agent_requirements``.

>>> runtime = GCPRuntime(store="gs://my-bucket/prefect-remote", launch_id="launch-0a1b2c3d4e5f", project="my-project")
>>> runtime.on_cloud_run
False
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from prefect_remote.machine.boot import DEFAULT_ROOT, ROOT_ENV
from prefect_remote.machine.runtime import LogShipping, MachineRuntime

SECRETS_ENV = "PREFECT_REMOTE_SECRETS_JSON"  # the Cloud Run container's env var Cloud Run fills from Secret Manager
CLOUD_RUN_JOB_ENV = "CLOUD_RUN_JOB"  # set by Cloud Run in every task's container
API_ENDPOINT_ENV = "PREFECT_REMOTE_GCP_API_ENDPOINT"
DEFAULT_METADATA_HOST = "metadata.google.internal"
HALT_RETRIES = (2.0, 4.0, 8.0, 16.0, 30.0)  # seconds before each delete halt() tries again
HALT_COMMAND = ("shutdown", "-h", "now")  # the VM's own power-off, as its OS has it (found through PATH)


class GCPRuntime(MachineRuntime):
    """A gcp machine's runtime; ``store`` is the gs:// store holding the machines' records;
    ``halt_command`` is what a VM's :meth:`halt` runs last (the OS's ``shutdown -h now``)."""

    def __init__(
        self,
        store: str,
        launch_id: str,
        project: str,
        log_name: str = "prefect-remote",
        timeout: float = 5.0,
        halt_command: Sequence[str] = HALT_COMMAND,
        secret: str | None = None,
    ) -> None:
        self.store, self.launch_id, self.project, self.log_name, self.timeout = store, launch_id, project, log_name, timeout
        self.secret = secret  # the version of its launch's secret (projects/P/secrets/S/versions/1)
        self.halt_command = list(halt_command)

    @property
    def on_cloud_run(self) -> bool:
        return bool(os.environ.get(CLOUD_RUN_JOB_ENV))

    # -- the metadata server ---------------------------------------------------------------------
    def metadata(self, path: str) -> str:
        """``computeMetadata/v1/<path>`` as text (``$GCE_METADATA_HOST`` if set, as google-auth reads it)."""
        host = os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_ROOT") or DEFAULT_METADATA_HOST
        request = urllib.request.Request(f"http://{host}/computeMetadata/v1/{path}", headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode()

    @cached_property
    def machine_id(self) -> str:  # type: ignore[override]
        return os.environ.get(CLOUD_RUN_JOB_ENV) or self.metadata("instance/name")

    # -- the store: lease and end record -------------------------------------------------------------
    @cached_property
    def _records(self) -> Any:
        from prefect_remote.providers.gcp.records import MachineRecords
        from prefect_remote.software.gcsstore import GCSStore

        return MachineRecords(GCSStore.from_url(self.store))

    def lease_age(self) -> float:
        return self._records.lease_age(self.machine_id)

    def first_start(self) -> bool:
        """A VM runs its startup script on every boot: a marker on its boot disk
        (``$PREFECT_REMOTE_ROOT/started/<machine id>``) says the agent started before. A Cloud Run
        task never boots twice (a retry is a new container)."""
        if self.on_cloud_run:
            return True
        folder = os.path.join(os.environ.get(ROOT_ENV) or DEFAULT_ROOT, "started")
        os.makedirs(folder, exist_ok=True)
        try:
            os.close(os.open(os.path.join(folder, self.machine_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True

    # -- secrets, logs, the end ------------------------------------------------------------------------
    def read_secrets(self) -> dict[str, str]:
        if self.on_cloud_run:
            # Popped: the payload gets each secret as its own variable, not the bundle again.
            return dict(json.loads(os.environ.pop(SECRETS_ENV, "{}")))
        from prefect_remote.providers.gcp.secrets import read_secrets

        if self.secret is None:
            raise RuntimeError(
                f"launch {self.launch_id} names no secret to read: its launcher's prefect-remote is older than the machine's"
            )
        return read_secrets(self.project, self.secret, api_endpoint=os.environ.get(API_ENDPOINT_ENV))

    def forget_secrets(self) -> None:
        """Deletes the launch's secret. On Cloud Run too: the task resolved it at its start, and is
        never retried."""
        from prefect_remote.providers.gcp.secrets import delete_launch_secret

        if self.secret is not None:
            delete_launch_secret(self.project, self.secret, api_endpoint=os.environ.get(API_ENDPOINT_ENV))

    def registry_credentials(self, registry: str) -> tuple[str, str] | None:
        """An access token of the VM's service account for Artifact Registry (``<region>-docker.pkg.dev``)
        or Container Registry (``gcr.io``…), as ``oauth2accesstoken`` (the account needs
        roles/artifactregistry.reader on the repository); None for other registries."""
        if not (registry.endswith("-docker.pkg.dev") or registry == "gcr.io" or registry.endswith(".gcr.io")):
            return None
        from google.auth.transport.requests import Request

        from prefect_remote.providers.gcp.clients import default_credentials

        credentials, _ = default_credentials()
        credentials.refresh(Request())
        return "oauth2accesstoken", credentials.token

    def ship_log(self, path: str) -> LogShipping:
        """Tails the machine log into Cloud Logging, log ``log_name``, labelled with this machine's id
        (the service account needs roles/logging.logWriter)."""
        from prefect_remote.providers.gcp.logs import ship_log

        return ship_log(path, self.project, self.log_name, self.machine_id, api_endpoint=os.environ.get(API_ENDPOINT_ENV))

    def terminate(self, reason: str, exit_code: int | None) -> None:
        """Records why in the machine's record; then a VM deletes itself (the service account needs
        compute.instances.delete on it), and a Cloud Run task just ends: the agent exits next with the
        payload's exit code, which becomes the task's."""
        try:
            self._records.end(self.machine_id, reason=reason, exit_code=exit_code)
        except Exception:  # the reason is a courtesy: ending the machine is what matters
            pass
        if not self.on_cloud_run:
            self._delete_self()

    def _delete_self(self) -> None:
        """Deletes this VM: one REST call with google-auth (importing google.cloud.compute_v1 takes
        seconds, which the machine would run, and be billed, longer at its very end)."""
        from google.auth.transport.requests import AuthorizedSession

        from prefect_remote.providers.gcp.clients import default_credentials

        zone = self.metadata("instance/zone").rsplit("/", 1)[-1]
        endpoint = (os.environ.get(API_ENDPOINT_ENV) or "https://compute.googleapis.com").rstrip("/")
        credentials, _ = default_credentials()
        url = f"{endpoint}/compute/v1/projects/{self.project}/zones/{zone}/instances/{self.machine_id}"
        response = AuthorizedSession(credentials).delete(url, timeout=30)
        if response.status_code not in (200, 404):  # 404: already being deleted, or gone
            raise RuntimeError(f"DELETE {url}: HTTP {response.status_code}: {response.text[:500]}")

    def halt(self) -> None:
        """The delete failed: tried again for about a minute, since a VM that only shuts down is
        stopped (``TERMINATED``), not deleted, and its disk bills on; then ``halt_command`` (``shutdown
        -h now``: the owner's next listing deletes a stopped VM). On Cloud Run the task ends with the agent."""
        if self.on_cloud_run:
            return
        for pause in HALT_RETRIES:
            time.sleep(pause)
            try:
                self._delete_self()
                break
            except Exception:  # must not fail: the shutdown below ends it all the same
                continue
        try:
            subprocess.run(self.halt_command, check=False, timeout=30)
        except Exception:  # must not fail: the agent exits next, which ends the boot script
            pass
