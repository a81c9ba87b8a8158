"""The gcp provider's secret channel: one Secret Manager secret per launch,
``prefect-remote-<pool>-<launch id>`` (``<pool>``: the records label of the pool's store, the name
prefix its machines' IAM conditions allow, so that no pool's machines read or change another's), whose
payload, its one version (:data:`VERSION`), is the JSON of the launch's secret environment.

A Cloud Run job references it from its container's env (``PREFECT_REMOTE_SECRETS_JSON``, resolved by
Cloud Run when the task starts: the job spec holds a name, never a value); a Compute Engine VM reads
it with its service account (:func:`read_secrets`). Nothing secret goes into a job spec, VM metadata,
a label or a log. The launcher deletes it when the launch fails or its machines have ended, and the
only machine of a launch as it ends (its owner may be gone:
:meth:`~prefect_remote.providers.gcp.runtime.GCPRuntime.forget_secrets`); what an owner that died
left behind, its provider's next launch with secrets sweeps
(:meth:`~prefect_remote.providers.base.Provider.sweep_secrets`, through :func:`stored_launches`).

Standard library only at import (the machine side imports it).

>>> secret_id("launch-0a1b2c3d4e5f", "0123456789abcdef")
'prefect-remote-0123456789abcdef-launch-0a1b2c3d4e5f'
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prefect_remote import google_auth_lookups
from prefect_remote.providers.gcp.clients import GCPError, translated
from prefect_remote.providers.gcp.service import RECORDS_LABEL

if TYPE_CHECKING:
    from prefect_remote.providers.gcp.clients import GoogleClients
    from prefect_remote.providers.gcp.records import MachineRecords

logger = logging.getLogger(__name__)

SECRET_PREFIX = "prefect-remote-"
LAUNCH_LABEL = "prefect-remote-launch"
CREATED_LABEL = "created-at"  # epoch seconds: a label, so that a listing shows it without a parse of createTime
MAX_PAYLOAD = 64 * 1024  # Secret Manager's limit on one version's payload
# A launch's secret holds one version, the first: machines read it by number, never `latest`, so a
# version added later (by anyone) is never what a machine runs with.
VERSION = "1"


def pool_prefix(pool: str) -> str:
    """The prefix of every launch secret of ``pool`` (its records label): what its machines' grants allow.

    >>> pool_prefix("0123456789abcdef")
    'prefect-remote-0123456789abcdef-'
    """
    return f"{SECRET_PREFIX}{pool}-"


def secret_id(launch_id: str, pool: str | None) -> str:
    """The id of ``launch_id``'s secret in ``pool`` (Cloud Run's ``secretKeyRef.secret``); None: as
    launches named it before secrets were per pool (``prefect-remote-<launch id>``), which a teardown
    still finds."""
    return f"{pool_prefix(pool) if pool else SECRET_PREFIX}{launch_id}"


def secret_name(project: str, launch_id: str, pool: str | None) -> str:
    return f"projects/{project}/secrets/{secret_id(launch_id, pool)}"


def version_name(project: str, launch_id: str, pool: str) -> str:
    """The one version of ``launch_id``'s secret, which its machines read (pinned: :data:`VERSION`)."""
    return f"{secret_name(project, launch_id, pool)}/versions/{VERSION}"


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def store_secrets(clients: GoogleClients, launch_id: str, secrets: Mapping[str, str], records: MachineRecords) -> None:
    """Keeps ``secrets`` as ``launch_id``'s secret, named for the pool of ``records`` (two calls: the
    secret, then its one version, checksummed), labelled with those records (only a sweep of them
    may delete it). Refuses a payload over Secret Manager's 64 KiB before any call."""
    data = json.dumps(dict(secrets)).encode()
    if len(data) > MAX_PAYLOAD:
        raise ValueError(
            f"the launch's secret environment is {len(data) // 1024} KiB as JSON, over the 64 KiB a Secret Manager secret holds; "
            "pass large values through the store or files, not secret env"
        )
    client = clients.secret_manager()
    name = secret_name(clients.project, launch_id, records.label)
    labels = {LAUNCH_LABEL: launch_id, CREATED_LABEL: str(int(time.time())), RECORDS_LABEL: records.label}
    with clients.translated("secretmanager.secrets.create"):
        client.create_secret(
            parent=f"projects/{clients.project}",
            secret_id=secret_id(launch_id, records.label),
            secret={"replication": {"automatic": {}}, "labels": labels},
        )
    try:
        with clients.translated("secretmanager.versions.add"):
            client.add_secret_version(parent=name, payload={"data": data, "data_crc32c": _crc32c(data)})
    except BaseException:
        try:
            forget_secrets(clients, launch_id, records.label)  # no secret without its value
        except Exception as error:  # the refusal that matters is the version's, raised below
            logger.warning("the empty secret of %s was left behind: %s", launch_id, error)
        raise


def forget_secrets(clients: GoogleClients, launch_id: str, pool: str | None) -> None:
    """Deletes ``launch_id``'s secret in ``pool`` (a missing one is fine)."""
    from google.api_core.exceptions import NotFound

    try:
        with clients.translated("secretmanager.secrets.delete"):
            clients.secret_manager().delete_secret(name=secret_name(clients.project, launch_id, pool))
    except NotFound:
        pass


def read_secrets(project: str, version: str, *, api_endpoint: str | None = None, credentials: Any = None) -> dict[str, str]:
    """On a machine: its launch's secret environment, ``version`` (:func:`version_name`, as its
    launcher named it), read with the machine's service account (it needs
    roles/secretmanager.secretAccessor on the secret) and checked against its CRC32C."""
    with translated("secretmanager.versions.access", project=project):
        response = _machine_client(api_endpoint, credentials).access_secret_version(name=version)
    data = response.payload.data
    if response.payload.data_crc32c and _crc32c(data) != response.payload.data_crc32c:
        raise GCPError(f"the secret {version} arrived corrupted (its CRC32C does not match); the machine cannot start its payload safely")
    return dict(json.loads(data))


def delete_launch_secret(project: str, version: str, *, api_endpoint: str | None = None, credentials: Any = None) -> None:
    """On a machine, as its launch's only machine ends: deletes the secret of ``version`` with the
    machine's service account (the pool's grants give secretmanager.secrets.delete on its own
    secrets); a missing one is fine (its owner removed it first)."""
    from google.api_core.exceptions import NotFound

    try:
        with translated("secretmanager.secrets.delete", project=project):
            _machine_client(api_endpoint, credentials).delete_secret(name=version.split("/versions/", 1)[0])
    except NotFound:
        pass


def _machine_client(api_endpoint: str | None, credentials: Any) -> Any:
    """Secret Manager's client on a machine: REST (no gRPC stack to start), the machine's credentials."""
    from google.cloud import secretmanager_v1

    google_auth_lookups.quiet()
    return secretmanager_v1.SecretManagerServiceClient(
        credentials=credentials, transport="rest", client_options={"api_endpoint": api_endpoint} if api_endpoint else None
    )


def stored_launches(clients: GoogleClients, records: MachineRecords, *, older_than: float) -> set[str]:
    """The launches whose secret is older than ``older_than`` seconds, for a sweep of those whose
    owner died (:meth:`~prefect_remote.providers.base.Provider.sweep_secrets`): one listing. Only
    secrets labelled with these ``records``: another store's launches (another pool in the project)
    are not known here. A tidy-up: an identity that may not list secrets finds none."""
    from google.api_core.exceptions import GoogleAPICallError

    cutoff = time.time() - older_than
    try:
        with clients.translated("secretmanager.secrets.list"):
            found = list(
                clients.secret_manager().list_secrets(
                    request={"parent": f"projects/{clients.project}", "filter": f"labels.{RECORDS_LABEL}={records.label}"}
                )
            )
    except (GCPError, GoogleAPICallError) as error:
        logger.debug("launch secrets not swept: %s", error)
        return set()
    return {
        secret.labels[LAUNCH_LABEL]
        for secret in found
        if secret.labels.get(LAUNCH_LABEL) and float(secret.labels.get(CREATED_LABEL) or secret.create_time.timestamp()) < cutoff
    }
