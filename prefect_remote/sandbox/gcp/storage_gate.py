"""Cloud Storage's IAM for the strict sandbox GCP: an authorizing proxy in front of
gcp-storage-emulator, which itself enforces nothing.

:class:`StorageGate` serves the JSON API's paths (``/storage/v1``, ``/upload/storage/v1``,
``/download/storage/v1``, ``/batch/storage/v1``) on a port of its own, the one the sandbox hands out
for Cloud Storage. Each request's principal comes from its bearer token, as on the sandbox's other
APIs (none: the anonymous caller, ``allUsers``). The method's permissions are those of Google's "IAM
permissions for JSON methods" (``storage.objects.delete`` too when an insert overwrites an object,
``storage.buckets.setIamPolicy`` too when a bucket patch changes its ACLs or public access
prevention), checked on the object, the bucket (its policy, then the project's) or the project, by
the sandbox's evaluator; a batch is checked part by part, and a refused part gets its own 403 while
the others are answered. An allowed request goes to the emulator unchanged (its ``Host`` too, so the
links it returns point here); a refused one is answered as Cloud Storage does: "<who> does not have
<permission> access to the Google Cloud Storage object. Permission '<permission>' denied on resource
(or it may not exist)." (403; 401 for the anonymous caller). A resumable upload's session URI is its
own credential, as on Cloud Storage.

Bucket IAM policies stay where the emulator keeps them (``getIamPolicy``/``setIamPolicy`` pass
through, with CEL conditions checked first); a change is recorded with its time, and takes effect
after the sandbox's delay. ``testIamPermissions`` is answered here from the evaluator (the emulator's
stub grants everything). IAM Conditions need uniform bucket-level access, as on Cloud Storage: a
policy with conditions on a bucket without it, or a patch that disables it under such a policy, is
refused with 400; a bucket keeps the uniform access its insert asked for (the emulator would drop it).
Conditions see an object as ``projects/_/buckets/B/objects/NAME`` and a bucket (where
``storage.objects.list`` is checked) as ``projects/_/buckets/B``
(:meth:`~prefect_remote.sandbox.gcp.permissions.Scope.object`).

google-cloud-storage sends no credentials to an endpoint named by ``STORAGE_EMULATOR_HOST``: the
strict sandbox names this gate by ``API_ENDPOINT_OVERRIDE`` instead (which the same library reads),
so that callers authenticate as they do on Google Cloud.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import secrets
from collections.abc import Callable
from email.parser import BytesParser
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prefect_remote.sandbox.gcp.api import GoogleError, serve_in_thread
from prefect_remote.sandbox.gcp.permissions import Check
from prefect_remote.sandbox.gcp.policy import ANONYMOUS, PolicyStore, Resource

logger = logging.getLogger(__name__)

API, UPLOAD, DOWNLOAD, BATCH = "/storage/v1", "/upload/storage/v1", "/download/storage/v1", "/batch/storage/v1"
_BUCKET = r"/b/(?P<bucket>[^/]+)"
_OBJECT = _BUCKET + r"/o/(?P<object>.+?)"  # clients percent-encode a name's slashes; the emulator's media links do not
# (methods, path after /storage/v1, the JSON method), most specific first.
ROUTES = [
    ({"GET"}, "/b", "buckets.list"),
    ({"POST"}, "/b", "buckets.insert"),
    ({"GET"}, _BUCKET + "/iam/testPermissions", "buckets.testIamPermissions"),
    ({"GET"}, _BUCKET + "/iam", "buckets.getIamPolicy"),
    ({"PUT"}, _BUCKET + "/iam", "buckets.setIamPolicy"),
    ({"GET"}, _BUCKET + "/(?:acl|defaultObjectAcl)", "bucketAccessControls.list"),
    ({"GET"}, _BUCKET, "buckets.get"),
    ({"PATCH", "PUT"}, _BUCKET, "buckets.patch"),
    ({"DELETE"}, _BUCKET, "buckets.delete"),
    ({"GET"}, _BUCKET + "/o", "objects.list"),
    ({"POST"}, _BUCKET + "/o", "objects.insert"),
    ({"POST"}, _OBJECT + r"/(?:copyTo|rewriteTo)/b/(?P<dest_bucket>[^/]+)/o/(?P<dest>.+)", "objects.copy"),
    ({"POST"}, _OBJECT + "/compose", "objects.compose"),
    ({"POST"}, _OBJECT + "/restore", "objects.restore"),
    ({"GET"}, _OBJECT + "/acl", "objectAccessControls.list"),
    ({"GET"}, _OBJECT, "objects.get"),
    ({"PATCH", "PUT"}, _OBJECT, "objects.patch"),
    ({"DELETE"}, _OBJECT, "objects.delete"),
]
_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "accept-encoding",
    "content-encoding",
}
WHAT = {"Object": "Google Cloud Storage object", "Bucket": "Google Cloud Storage bucket", "Project": "Google Cloud project"}


def json_method(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The JSON API method of a request (``objects.get``) and its bucket/object (decoded), or None.
    ``path`` is the raw (percent-encoded) path."""
    if path.startswith(BATCH):
        return ("batch", {}) if method == "POST" else None
    if path.startswith(UPLOAD):
        found = re.fullmatch(_BUCKET + "/o", path.removeprefix(UPLOAD))
        kinds = {"POST": "objects.insert", "PUT": "objects.upload"}  # PUT: a resumable upload's next chunk
        return (kinds[method], {"bucket": unquote(found["bucket"])}) if found and method in kinds else None
    if path.startswith(DOWNLOAD):
        found = re.fullmatch(_OBJECT, path.removeprefix(DOWNLOAD))
        return ("objects.get", {k: unquote(v) for k, v in found.groupdict().items()}) if found and method == "GET" else None
    rest = path.removeprefix(API) if path.startswith(API + "/") or path == API else path
    for methods, pattern, name in ROUTES:
        found = re.fullmatch(pattern, rest)
        if found and method in methods:
            return name, {key: unquote(value) for key, value in found.groupdict().items()}
    return None


class Authority(Protocol):
    """What the gate asks of the sandbox's IAM (:class:`~prefect_remote.sandbox.gcp.enforcement.IAMEnforcement`),
    which also tells the gate of policy changes: the gate takes it as this, never imports it."""

    scope: Any  # names buckets and objects as IAM resources
    store: PolicyStore
    sandbox: Any  # the sandbox GCP, whose ``api.principal(request)`` says who calls

    def allows(self, principal: str, check: Check) -> bool: ...

    def check_conditions(self, policy: dict[str, Any]) -> None: ...

    def test_permissions(self, principal: str, permissions: Any, resource: Resource) -> dict[str, Any]: ...


class StorageGate:
    """The proxy: ``enforcement`` decides, ``backend`` (gcp-storage-emulator's URL, whose in-process
    ``storage`` it reads for bucket policies and whether an object exists) answers, ``calls``
    counts refused requests as the emulator counts the others (``storage.GET``…)."""

    def __init__(self, enforcement: Authority, backend: str, storage: Any, calls: collections.Counter[str]) -> None:
        import httpx

        self.enforcement, self.backend, self.storage, self.calls = enforcement, backend, storage, calls
        self.scope = enforcement.scope
        self._client = httpx.Client(base_url=backend, timeout=300)
        self._stop: Callable[[], None] | None = None  # stops serving
        self.url = ""
        # Each bucket's location as created: the emulator answers "US" for every bucket, Google the
        # location asked for (a region such as EUROPE-WEST1), which teardown reads to know where to look.
        self._locations: dict[str, str] = {}

    # -- bucket policies ---------------------------------------------------------------------------------
    def add_binding(self, bucket: str, member: str, role: str) -> None:
        """Grants ``role`` on ``bucket`` to ``member`` in the policy the emulator keeps."""
        policy = self.storage.get_bucket_iam_policy(bucket) or {"version": 1, "bindings": []}
        bindings = policy.setdefault("bindings", [])
        binding = next((b for b in bindings if b["role"] == role and not b.get("condition")), None)
        if binding is None:
            bindings.append(binding := {"role": role, "members": []})
        if member not in binding["members"]:
            binding["members"].append(member)
        if not self.storage.set_bucket_iam_policy(bucket, policy):
            raise ValueError(f"sandbox GCP: no bucket {bucket!r} to grant {role} on")

    def record_policies(self, *, initial: bool = False) -> None:
        """Records every bucket's policy as the emulator keeps it (``initial``: in force from the start)."""
        for bucket in list(self.storage.buckets):
            self._record(bucket, initial=initial)

    def _record(self, bucket: str, *, initial: bool = False) -> None:
        policy = self.storage.get_bucket_iam_policy(bucket)
        if policy is None:
            self.enforcement.store.forget(f"bucket:{bucket}")
        else:
            self.enforcement.store.set_policy(f"bucket:{bucket}", policy, initial=initial)

    def _exists(self, bucket: str, name: str) -> bool:
        try:
            self.storage.get_file_obj(bucket, name)
        except Exception:  # the emulator's NotFound
            return False
        return True

    # -- checks ---------------------------------------------------------------------------------------------
    def checks(self, method: str, params: dict[str, str], query: dict[str, str], content_type: str, data: bytes) -> list[Check]:
        """What JSON method ``method`` needs (Google's "IAM permissions for JSON methods")."""
        s = self.scope
        bucket = params.get("bucket", "")

        def on_object(permission: str, name: str, in_bucket: str = bucket) -> Check:
            return Check(permission, s.object(in_bucket, name))

        def on_bucket(permission: str) -> Check:
            return Check(permission, s.bucket(bucket))

        def created(name: str, in_bucket: str = bucket) -> list[Check]:
            overwrite = query.get("ifGenerationMatch") != "0" and self._exists(in_bucket, name)
            return [on_object("storage.objects.create", name, in_bucket)] + (
                [on_object("storage.objects.delete", name, in_bucket)] if overwrite else []
            )

        meta = _metadata(content_type, data)
        if method in ("buckets.list", "buckets.insert"):
            permission = "storage.buckets.list" if method == "buckets.list" else "storage.buckets.create"
            return [Check(permission, s.project_resource(query.get("project") or s.project))]
        if method == "buckets.patch":
            changes_access = "acl" in meta or "defaultObjectAcl" in meta or "publicAccessPrevention" in (meta.get("iamConfiguration") or {})
            return [on_bucket("storage.buckets.update")] + ([on_bucket("storage.buckets.setIamPolicy")] if changes_access else [])
        simple = {
            "buckets.get": "storage.buckets.get",
            "buckets.delete": "storage.buckets.delete",
            "buckets.getIamPolicy": "storage.buckets.getIamPolicy",
            "buckets.setIamPolicy": "storage.buckets.setIamPolicy",
            "objects.list": "storage.objects.list",
        }
        if method in simple:
            return [on_bucket(simple[method])]
        if method == "bucketAccessControls.list":
            return [on_bucket("storage.buckets.get"), on_bucket("storage.buckets.getIamPolicy")]
        if method == "objects.insert":
            return created(query.get("name") or meta.get("name", ""))
        if method == "objects.upload":
            return []  # a resumable session's URI is its credential
        name = params.get("object", "")
        if method in ("objects.get", "objects.delete"):
            return [on_object(f"storage.{method}", name)]
        if method == "objects.patch":
            return [on_object("storage.objects.update", name)]
        if method == "objectAccessControls.list":
            return [on_object("storage.objects.get", name), on_object("storage.objects.getIamPolicy", name)]
        if method == "objects.copy":
            return [on_object("storage.objects.get", name), *created(params["dest"], params["dest_bucket"])]
        if method == "objects.compose":
            sources = [on_object("storage.objects.get", source.get("name", "")) for source in meta.get("sourceObjects") or ()]
            return sources + created(name)
        if method == "objects.restore":
            return [*created(name), on_object("storage.objects.restore", name)]
        raise KeyError(method)

    def refused(self, principal: str, check: Check) -> JSONResponse:
        """Cloud Storage's answer to a call that lacks ``check``."""
        kind = check.resource.attributes.get("type", "/Project").rsplit("/", 1)[-1]
        who = "Anonymous caller" if principal == ANONYMOUS else principal.partition(":")[2]
        message = (
            f"{who} does not have {check.permission} access to the {WHAT[kind]}. "
            f"Permission '{check.permission}' denied on resource (or it may not exist)."
        )
        code, reason = (401, "required") if principal == ANONYMOUS else (403, "forbidden")
        return JSONResponse(
            {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}, code
        )

    # -- serving ---------------------------------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        method_name = request.headers.get("x-http-method-override") or request.method
        path = request.scope["raw_path"].decode()
        data = await request.body()
        count = f"storage.{request.method}" + (".batch" if "/batch" in path else "")
        principal = self._principal(request)
        if isinstance(principal, Response):
            self.calls[count] += 1
            return principal
        if principal == "sandbox:internal":
            return await self._forward(request, data)
        found = json_method(method_name, path)
        if found is None:
            self.calls[count] += 1
            return _error(
                403, f"The sandbox GCP maps no IAM permission for Cloud Storage's {method_name} {path}, so it refuses it (fail closed)"
            )
        method, params = found
        query = dict(parse_qsl(request.scope["query_string"].decode(), keep_blank_values=True))
        if method == "batch":
            return await self._batch(request, principal, data)
        if method == "buckets.testIamPermissions":
            self.calls[count] += 1
            return self._test_permissions(principal, params["bucket"], request.query_params.getlist("permissions"))
        try:
            if method == "buckets.setIamPolicy":
                self._check_policy(data)
            missing = [
                c
                for c in self.checks(method, params, query, request.headers.get("content-type", ""), data)
                if not self._allows(principal, c)
            ]
        except GoogleError as error:
            self.calls[count] += 1
            return _error(error.code, error.message)
        if missing:
            self.calls[count] += 1
            return self.refused(principal, missing[0])
        meta = _metadata(request.headers.get("content-type", ""), data)
        refusal = self._uniform_access_refusal(method, params.get("bucket", ""), meta, data)
        if refusal is not None:
            self.calls[count] += 1
            return _error(400, refusal)
        response = await self._forward(request, data)
        if response.status_code < 400 and method in ("buckets.setIamPolicy", "buckets.delete", "buckets.insert"):
            bucket = params.get("bucket") or meta.get("name", "")
            self._record(bucket)
            if method == "buckets.insert":
                self._locations[bucket] = str(meta.get("location") or "US").upper()
                self._set_uniform(bucket, bool(_uniform_in(meta)))
            elif method == "buckets.delete":
                self._locations.pop(bucket, None)
        if response.status_code < 400 and method in ("buckets.insert", "buckets.get", "buckets.list", "buckets.patch", "buckets.update"):
            return self._located(response)
        return response

    def _located(self, response: Response) -> Response:
        """``response`` (a bucket, or a listing of them) with each bucket's location as created, and
        its access control (iamConfiguration) as the emulator now keeps it."""
        answer = json.loads(response.body)
        for bucket in answer.get("items", [answer]):
            if isinstance(bucket, dict) and bucket.get("name") in self._locations:
                bucket["location"] = self._locations[bucket["name"]]
            if isinstance(bucket, dict) and "iamConfiguration" in (self.storage.buckets.get(bucket.get("name")) or {}):
                bucket["iamConfiguration"] = self.storage.buckets[bucket["name"]]["iamConfiguration"]
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return Response(json.dumps(answer).encode(), status_code=response.status_code, headers=headers)

    def _principal(self, request: Request) -> str | Response:
        if not request.headers.get("authorization"):
            return ANONYMOUS
        try:
            return self.enforcement.sandbox.api.principal(request)
        except GoogleError:
            error = {
                "message": "Invalid Credentials",
                "domain": "global",
                "reason": "authError",
                "locationType": "header",
                "location": "Authorization",
            }
            return JSONResponse({"error": {"code": 401, "message": "Invalid Credentials", "errors": [error]}}, 401)

    def _allows(self, principal: str, check: Check) -> bool:
        return self.enforcement.allows(principal, check)

    # -- uniform bucket-level access ---------------------------------------------------------------------
    def uniform(self, bucket: str) -> bool:
        """Whether ``bucket`` has uniform bucket-level access enabled."""
        return bool(_uniform_in(self.storage.buckets.get(bucket) or {}))

    def _set_uniform(self, bucket: str, enabled: bool) -> None:
        """Keeps ``bucket``'s uniform bucket-level access as created: the emulator's insert ignores the
        request's iamConfiguration (every bucket it makes has it disabled); Google's honours it."""
        found = self.storage.buckets.get(bucket)
        if found is not None:
            config = dict(found.get("iamConfiguration") or {})
            config["uniformBucketLevelAccess"] = config["bucketPolicyOnly"] = {"enabled": enabled}
            found["iamConfiguration"] = config

    def _uniform_access_refusal(self, method: str, bucket: str, meta: dict[str, Any], data: bytes) -> str | None:
        """Why Cloud Storage refuses (400) a policy with IAM conditions on a bucket without uniform
        bucket-level access, or a patch that disables it while the bucket's policy has conditions; None
        when it does not. Google: "you must enable uniform bucket-level access on a bucket" to use IAM
        Conditions on it, and it can be disabled only once they are removed
        (cloud.google.com/storage/docs/uniform-bucket-level-access). The wording is the sandbox's:
        Google documents the refusal, not its message."""
        if method == "buckets.setIamPolicy" and not self.uniform(bucket):
            try:
                bindings = json.loads(data or b"{}").get("bindings") or ()
            except ValueError:
                return None  # _check_policy refused it
            if any(b.get("condition") for b in bindings):
                return (
                    f"IAM Conditions can only be set on a bucket with uniform bucket-level access enabled; bucket {bucket} "
                    "has it disabled. Read more at https://cloud.google.com/storage/docs/uniform-bucket-level-access"
                )
        if method == "buckets.patch" and _uniform_in(meta) is False and self.uniform(bucket):
            policy = self.storage.get_bucket_iam_policy(bucket) or {}
            if any(b.get("condition") for b in policy.get("bindings") or ()):
                return (
                    f"Uniform bucket-level access cannot be disabled on bucket {bucket}: its IAM policy has conditions. "
                    "Remove them first. Read more at https://cloud.google.com/storage/docs/uniform-bucket-level-access"
                )
        return None

    def _check_policy(self, data: bytes) -> None:
        try:
            policy = json.loads(data or b"{}")
        except ValueError:
            raise GoogleError(400, "Invalid JSON payload received.") from None
        if any(b.get("condition") for b in policy.get("bindings") or ()) and int(policy.get("version") or 1) < 3:
            raise GoogleError(400, "IAM policies with conditions require version 3: set policy.version = 3.")
        self.enforcement.check_conditions(policy)

    def _test_permissions(self, principal: str, bucket: str, permissions: list[str]) -> JSONResponse:
        if bucket not in self.storage.buckets:
            return _error(404, "The specified bucket does not exist.")
        try:
            held = self.enforcement.test_permissions(principal, permissions, self.scope.bucket(bucket))
        except GoogleError as error:
            return _error(error.code, error.message)
        return JSONResponse({"kind": "storage#testIamPermissionsResponse", **held})

    async def _forward(
        self, request: Request, data: bytes, *, path: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        target = (path or request.scope["raw_path"]) + (b"?" + request.scope["query_string"] if request.scope["query_string"] else b"")
        sent = {k: v for k, v in request.headers.items() if k.lower() not in _HOP} | (headers or {})
        answer = await run_in_threadpool(self._client.request, request.method, target.decode(), headers=sent, content=data)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    async def _batch(self, request: Request, principal: str, data: bytes) -> Response:
        """A batch, part by part: refused parts are answered here, the rest by the emulator, in order."""
        found = re.search(r'boundary="?([^";]+)"?', request.headers.get("content-type", ""))
        if found is None:
            self.calls["storage.POST.batch"] += 1
            return _error(400, "Invalid multipart request with 0 mime parts.")
        boundary = b"--" + found.group(1).encode()
        parts = [part for part in data.split(boundary)[1:] if not part.startswith(b"--")]
        refusals: dict[int, bytes] = {}
        for index, part in enumerate(parts):
            refused = self._refused_part(principal, part)
            if refused is not None:
                refusals[index] = refused
        if not refusals:
            return await self._forward(request, data)
        kept = [part for index, part in enumerate(parts) if index not in refusals]
        answered: list[bytes] = []
        answer_boundary = b"--batch_" + secrets.token_hex(16).encode()
        if kept:
            body = b"".join(boundary + part for part in kept) + boundary + b"--\r\n"
            response = await self._forward(request, body)
            if response.status_code >= 400:
                return response
            found = re.search(r'boundary="?([^";]+)"?', response.headers.get("content-type", ""))
            answer_boundary = b"--" + found.group(1).encode() if found else answer_boundary
            answered = [part for part in response.body.split(answer_boundary)[1:] if not part.startswith(b"--")]
        else:
            self.calls["storage.POST.batch"] += 1
        answers = iter(answered)
        merged = [refusals[index] if index in refusals else next(answers, b"\r\n") for index in range(len(parts))]
        out = b"".join(answer_boundary + part for part in merged) + answer_boundary + b"--"
        return Response(out, 200, media_type=f"multipart/mixed; boundary={answer_boundary[2:].decode()}")

    def _refused_part(self, principal: str, part: bytes) -> bytes | None:
        """The 403 part answering batch part ``part``, or None if its principal may make it."""
        text = part.decode("utf-8", "replace").strip("\r\n")
        sections = re.split(r"\r?\n\r?\n", text, maxsplit=2)
        mime, http, sub_body = ([*sections, "", ""])[:3]
        content_id = re.search(r"(?im)^content-id:\s*<?([^>\r\n]+)>?", mime)
        lines = http.splitlines()
        request_line = lines[0].split() if lines else []
        if len(request_line) < 2:
            return None  # the emulator answers malformed parts
        url = urlsplit(request_line[1])
        content_type = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("content-type:")), "")
        found = json_method(request_line[0].upper(), url.path)
        if found is None:
            check = None
            message = f"The sandbox GCP maps no IAM permission for Cloud Storage's {request_line[0]} {url.path} (fail closed)"
            error = {"error": {"code": 403, "message": message}}
        else:
            try:
                missing = [
                    c
                    for c in self.checks(found[0], found[1], dict(parse_qsl(url.query)), content_type, sub_body.encode())
                    if not self._allows(principal, c)
                ]
            except KeyError:
                missing = []
            if not missing:
                return None
            check = missing[0]
            error = json.loads(self.refused(principal, check).body)
        status = error["error"]["code"]
        head = "\r\nContent-Type: application/http\r\n" + (f"Content-ID: <response-{content_id.group(1)}>\r\n" if content_id else "")
        reason = {401: "Unauthorized", 403: "Forbidden"}.get(status, "Forbidden")
        return (
            f"{head}\r\nHTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(error)}\r\n"
        ).encode()

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves the gate in a thread of this process; returns its URL."""
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
        self._stop, self.url = serve_in_thread(app, host, port, name="sandbox-gcp-storage-gate", what="the sandbox GCP's storage gate")
        return self.url

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None
        self._client.close()


def _metadata(content_type: str, data: bytes) -> dict[str, Any]:
    """The object or bucket resource a request's body carries (JSON, or a multipart upload's first part)."""
    try:
        if content_type.startswith("application/json"):
            found = json.loads(data or b"{}")
            return found if isinstance(found, dict) else {}
        if content_type.startswith("multipart/related"):
            message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + data)
            first = message.get_payload()[0].get_payload(decode=True)
            return json.loads(first)
    except (ValueError, IndexError, TypeError, AttributeError):
        pass
    return {}


def _uniform_in(bucket: dict[str, Any]) -> bool | None:
    """A bucket resource's (or a request's) uniform bucket-level access: True, False, or None if it names none."""
    config = bucket.get("iamConfiguration")
    if not isinstance(config, dict):
        return None
    for key in ("uniformBucketLevelAccess", "bucketPolicyOnly"):  # the second: its older name, which clients still send
        if isinstance(config.get(key), dict) and "enabled" in config[key]:
            return bool(config[key]["enabled"])
    return None


def _error(code: int, message: str) -> JSONResponse:
    reason = {400: "invalid", 401: "required", 403: "forbidden", 404: "notFound"}.get(code, "error")
    return JSONResponse(
        {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}, code
    )
