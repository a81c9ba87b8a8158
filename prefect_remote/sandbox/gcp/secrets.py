"""The sandbox GCP's Secret Manager v1, under the REST paths ``SecretManagerServiceClient(
transport="rest")`` calls: secrets (create with ``secretId``, get, list with a ``filter`` on
labels, name or create time, delete), versions (add, get, list, access ``latest`` or a number) with
payloads in base64 and their CRC32C, as the client expects them.

As Google's: a secret needs a replication policy; names come back with the project's number
(``projects/123…/secrets/x``); payloads are at most 64 KiB; a payload whose ``dataCrc32c`` does not
match is refused; a missing secret or version is 404 and an existing one 409.

>>> fake = SecretManagerFake(api, Project.named("sandbox-project"))          # doctest: +SKIP
>>> fake.value("prefect-remote-l-1")                                         # doctest: +SKIP
'{"TOKEN": "…"}'
"""

from __future__ import annotations

import base64
import re
import threading
import time
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError, body, new_id, rfc3339
from prefect_remote.sandbox.gcp.common import Project, check_labels, page
from prefect_remote.sandbox.gcp.filters import compile_filter

MAX_PAYLOAD = 64 * 1024
ENABLED = 1  # SecretVersion.State.ENABLED
_SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


class SecretManagerFake:
    """Secrets of ``project``, served on ``api``."""

    def __init__(self, api: GoogleAPI, project: Project) -> None:
        self.project = project
        self._secrets: dict[str, dict[str, Any]] = {}  # secret id -> {"secret": JSON, "created": epoch, "versions": [...]}
        self._lock = threading.Lock()
        base = "/v1/projects/{project}/secrets"
        api.route(base + "/{secret}/versions/{version}:access", ["GET"], "secretmanager.versions.access")(self._access)
        api.route(base + "/{secret}:addVersion", ["POST"], "secretmanager.versions.add")(self._add_version)
        api.route(base + "/{secret}/versions/{version}", ["GET"], "secretmanager.versions.get")(self._get_version)
        api.route(base + "/{secret}/versions", ["GET"], "secretmanager.versions.list")(self._list_versions)
        api.route(base + "/{secret}", ["GET"], "secretmanager.secrets.get")(self._get)
        api.route(base + "/{secret}", ["DELETE"], "secretmanager.secrets.delete")(self._delete)
        api.route(base, ["POST"], "secretmanager.secrets.create")(self._create)
        api.route(base, ["GET"], "secretmanager.secrets.list")(self._list)

    # -- for the other fakes ------------------------------------------------------------------------
    def value(self, name: str, version: str = "latest") -> str:
        """The payload of secret ``name`` (an id or ``projects/P/secrets/ID``) at ``version``, as
        Cloud Run resolves a ``secretKeyRef``; raises :class:`GoogleError` (404) if there is none."""
        found = re.fullmatch(r"projects/([^/]+)/secrets/([^/]+)(?:/versions/([^/]+))?", name)
        project, secret_id, version = (
            (found.group(1), found.group(2), found.group(3) or version) if found else (self.project.id, name, version)
        )
        self.project.check(project, "secretmanager.versions.access", name)
        with self._lock:
            return self._version(secret_id, version)["data"].decode()

    # -- secrets ------------------------------------------------------------------------------------
    def _name(self, secret_id: str) -> str:
        return f"projects/{self.project.number}/secrets/{secret_id}"

    def _held(self, project: str, secret_id: str, permission: str) -> dict[str, Any]:
        self.project.check(project, permission, f"projects/{project}/secrets/{secret_id}")
        held = self._secrets.get(secret_id)
        if held is None:
            raise GoogleError(404, f"Secret [{self._name(secret_id)}] not found or has no versions.")
        return held

    def _create(self, request: Request, project: str) -> dict[str, Any]:
        self.project.check(project, "secretmanager.secrets.create", f"projects/{project}")
        secret_id = request.query_params.get("secretId", "")
        if not _SECRET_ID.fullmatch(secret_id):
            raise GoogleError(400, f"Invalid secret id {secret_id!r}: 1 to 255 letters, digits, '_' or '-'")
        given = body(request)
        replication = given.get("replication") or {}
        if not replication.get("automatic") and not replication.get("userManaged") and "automatic" not in replication:
            raise GoogleError(400, "Secret.replication is required: give a replication policy (automatic, or user-managed locations)")
        secret = {
            "name": self._name(secret_id),
            "replication": replication,
            "createTime": rfc3339(),
            "labels": check_labels(given.get("labels"), "Secret.labels"),
            "etag": f'"{new_id()}"',
        }
        if given.get("annotations"):
            secret["annotations"] = given["annotations"]
        with self._lock:
            if secret_id in self._secrets:
                raise GoogleError(409, f"Secret [{self._name(secret_id)}] already exists.")
            self._secrets[secret_id] = {"secret": secret, "created": time.time(), "versions": []}
        return secret

    def _get(self, request: Request, project: str, secret: str) -> dict[str, Any]:
        with self._lock:
            return self._held(project, secret, "secretmanager.secrets.get")["secret"]

    def _delete(self, request: Request, project: str, secret: str) -> dict[str, Any]:
        with self._lock:
            self._held(project, secret, "secretmanager.secrets.delete")
            del self._secrets[secret]
        return {}

    def _list(self, request: Request, project: str) -> dict[str, Any]:
        self.project.check(project, "secretmanager.secrets.list", f"projects/{project}")
        match = compile_filter(request.query_params.get("filter"))
        with self._lock:
            held = sorted(self._secrets.items())
        found = [entry["secret"] for secret_id, entry in held if match(lambda path, s=secret_id, e=entry: _field(s, e, path))]
        chunk, token = page(found, request.query_params, default=25000, maximum=25000)
        answer: dict[str, Any] = {"secrets": chunk, "totalSize": len(found)}
        if token:
            answer["nextPageToken"] = token
        return answer

    # -- versions -----------------------------------------------------------------------------------
    def _version(self, secret_id: str, version: str) -> dict[str, Any]:
        """A version of a secret (``latest``: the newest enabled one); the caller holds the lock."""
        held = self._secrets.get(secret_id)
        name = f"{self._name(secret_id)}/versions/{version}"
        if held is None:
            raise GoogleError(404, f"Secret [{self._name(secret_id)}] not found or has no versions.")
        versions = held["versions"]
        if version == "latest":
            enabled = [v for v in versions if v["version"]["state"] == ENABLED]
            if not enabled:
                raise GoogleError(404, f"Secret [{self._name(secret_id)}] not found or has no versions.")
            return enabled[-1]
        if not version.isdigit() or not 1 <= int(version) <= len(versions):
            raise GoogleError(404, f"Secret Version [{name}] not found.")
        return versions[int(version) - 1]

    def _add_version(self, request: Request, project: str, secret: str) -> dict[str, Any]:
        import google_crc32c

        payload = body(request).get("payload") or {}
        try:
            data = base64.b64decode(payload.get("data", ""), validate=True)
        except ValueError:
            raise GoogleError(400, "SecretPayload.data is not valid base64") from None
        if len(data) > MAX_PAYLOAD:
            raise GoogleError(400, f"Secret payload data is {len(data)} bytes; at most {MAX_PAYLOAD} (64 KiB) are allowed.")
        crc = google_crc32c.value(data)
        given_crc = payload.get("dataCrc32c")
        if given_crc is not None and int(given_crc) != crc:
            raise GoogleError(
                400, "Checksum mismatch: the payload's data_crc32c does not match its data (the payload was corrupted on the way)."
            )
        with self._lock:
            held = self._held(project, secret, "secretmanager.versions.add")
            number = len(held["versions"]) + 1
            version = {
                "name": f"{self._name(secret)}/versions/{number}",
                "createTime": rfc3339(),
                "state": ENABLED,
                "etag": f'"{new_id()}"',
                "clientSpecifiedPayloadChecksum": given_crc is not None,
            }
            held["versions"].append({"version": version, "data": data, "crc": crc})
        return version

    def _get_version(self, request: Request, project: str, secret: str, version: str) -> dict[str, Any]:
        with self._lock:
            self._held(project, secret, "secretmanager.versions.get")
            return self._version(secret, version)["version"]

    def _list_versions(self, request: Request, project: str, secret: str) -> dict[str, Any]:
        with self._lock:
            versions = [v["version"] for v in reversed(self._held(project, secret, "secretmanager.versions.list")["versions"])]
        chunk, token = page(versions, request.query_params, default=25000, maximum=25000)
        answer: dict[str, Any] = {"versions": chunk, "totalSize": len(versions)}
        if token:
            answer["nextPageToken"] = token
        return answer

    def _access(self, request: Request, project: str, secret: str, version: str) -> dict[str, Any]:
        with self._lock:
            self._held(project, secret, "secretmanager.versions.access")
            found = self._version(secret, version)
        return {
            "name": found["version"]["name"],
            "payload": {"data": base64.b64encode(found["data"]).decode(), "dataCrc32c": str(found["crc"])},
        }


def _field(secret_id: str, entry: dict[str, Any], path: Any) -> Any:
    """A secret's field as its list filter names it (``labels.k``, ``name``, ``create_time``)."""
    path = list(path)
    if path[0] == "labels":
        labels = entry["secret"]["labels"]
        return labels if len(path) == 1 else labels.get(path[1])
    if path == ["name"]:
        return secret_id
    if path in (["create_time"], ["createTime"]):
        return entry["created"]
    raise GoogleError(400, f"Invalid filter: Secret Manager cannot filter on {'.'.join(path)!r} (labels.KEY, name, create_time)")
