"""The sandbox GCP's one endpoint: every emulated Google API (Cloud Run v2, Compute Engine v1,
Secret Manager v1, Cloud Logging v2, Cloud Quotas v1, the OAuth token endpoint, instance metadata)
served by one Starlette app on loopback, as the google-cloud-* clients call them over REST with
``client_options={"api_endpoint": url}``. Their paths do not collide (``/v2/projects/…/locations``,
``/compute/v1``, ``/v1/projects/…/secrets``, ``/v1/projects/…/locations/global/services/…/quotaInfos``,
``/v2/entries:…``).

A fake service registers its routes on an :class:`GoogleAPI` with :meth:`GoogleAPI.route`, which
checks the caller's bearer token and counts the call under the route's name (``run.jobs.create``),
so a benchmark can count API calls per machine-minute. :meth:`GoogleAPI.disable_api` makes one
service's routes answer as Google does for a project that has not enabled it (403
``SERVICE_DISABLED``). A :class:`Gate` (``api.gate``; the strict sandbox's IAM,
:mod:`prefect_remote.sandbox.gcp.enforcement`) sees every authenticated call before its handler, and
each one answered without error after it.

>>> api = GoogleAPI()                                                     # doctest: +SKIP
>>> @api.route("/v2/projects/{project}/locations/{location}/jobs/{job}", ["GET"], "run.jobs.get")
... def get_job(request, project, location, job): ...                     # doctest: +SKIP
>>> url = api.serve()                                                     # doctest: +SKIP
"""

from __future__ import annotations

import collections
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN_TTL = 3600
# google.rpc.Code names by HTTP status, as Google's REST errors carry them.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class GoogleError(Exception):
    """Raised by a fake service's handler: becomes Google's JSON error body with this status."""

    def __init__(
        self, code: int, message: str, status: str | None = None, reason: str | None = None, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")
        self.reason = reason
        self.details = details  # google.rpc detail messages (an ErrorInfo: the clients' ``error.reason``)

    def response(self) -> JSONResponse:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.reason:  # Compute Engine's errors name a reason (``ZONE_RESOURCE_POOL_EXHAUSTED``…)
            error["errors"] = [{"message": self.message, "domain": "global", "reason": self.reason}]
        if self.details:
            error["details"] = self.details
        return JSONResponse({"error": error}, status_code=self.code)


def service_of(route_name: str) -> str:
    """The Google service a route belongs to, by its name's first part.

    >>> service_of("run.jobs.create")
    'run.googleapis.com'
    """
    return route_name.split(".", 1)[0] + ".googleapis.com"


def service_disabled(service: str, project: str, project_number: str) -> GoogleError:
    """What Google answers a call to ``service`` in a project that has not enabled it."""
    message = (
        f"{service.removesuffix('.googleapis.com').title()} API has not been used in project {project_number} before or it is disabled. "
        f"Enable it by visiting https://console.developers.google.com/apis/api/{service}/overview?project={project_number} then retry. "
        "If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry."
    )
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "SERVICE_DISABLED",
        "domain": "googleapis.com",
        "metadata": {"service": service, "consumer": f"projects/{project_number}", "containerInfo": project},
    }
    return GoogleError(403, message, "PERMISSION_DENIED", details=[info])


def rfc3339(epoch: float | None = None) -> str:
    """``epoch`` (default now) as Google's timestamps print it: ``2026-12-01T10:00:00.123456Z``."""
    epoch = time.time() if epoch is None else epoch
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}Z"


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)


class Gate(Protocol):
    """Decides authenticated calls (``request.state.principal`` is set) by route name."""

    async def check(self, name: str, request: Request) -> Response | None:
        """Before the handler: raise :class:`GoogleError` to refuse, return a response to answer
        instead of the handler, or None to let it run."""

    def done(self, name: str, request: Request) -> None:
        """After the handler answered without error."""


class GoogleAPI:
    """Routes, bearer tokens and call counts shared by the sandbox's fake services."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()  # route name -> calls answered
        self._routes: list[Route] = []
        self._tokens: dict[str, tuple[str, float]] = {}  # access token -> (principal, expiry)
        self._keys: dict[str, bytes] = {}  # service account email -> its key's public PEM (self-signed JWTs)
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None  # stops serving
        self.url = ""
        self.disabled: dict[str, tuple[str, str]] = {}  # service -> (project, number) it answers SERVICE_DISABLED for
        self.gate: Gate | None = None
        self.route("/token", ["POST"], "oauth2.token", authenticated=False)(self._token)

    # -- tokens ------------------------------------------------------------------------------------
    def issue_token(self, principal: str, ttl: float = TOKEN_TTL) -> dict[str, Any]:
        """A fresh access token for ``principal`` (a user's refresh token, an instance's service
        account), valid ``ttl`` seconds (``math.inf``: the sandbox's own)."""
        token = "ya29.sandbox-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (principal, time.time() + ttl)
        return {"access_token": token, "expires_in": min(ttl, TOKEN_TTL), "token_type": "Bearer"}

    def service_account_key(self, email: str, project: str) -> dict[str, Any]:
        """A new JSON key of service account ``email``, as ``gcloud iam service-accounts keys create``
        writes it, whose ``token_uri`` is this endpoint (google-auth honours it for service accounts)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        with self._lock:
            self._keys[email] = public
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": secrets.token_hex(20),
            "private_key": private.decode(),
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "token_uri": f"{self.url}/token",
        }

    def principal(self, request: Request) -> str:
        """Who made ``request``: an access token this endpoint issued, or a JWT self-signed by a
        service account key it made (the google-cloud-* clients send those without asking for a
        token). A missing, unknown or expired credential is refused as Google does."""
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        with self._lock:
            found = self._tokens.get(token)
        if found is not None and found[1] >= time.time():
            return found[0]
        claims = self._self_signed(token)
        if claims is None:
            raise GoogleError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
                "authentication credential.",
            )
        return f"serviceAccount:{claims['iss']}"

    def _self_signed(self, token: str) -> dict[str, Any] | None:
        from google.auth import jwt

        if token.count(".") != 2:
            return None
        try:
            claims = jwt.decode(token, verify=False)
            public = self._keys.get(claims.get("iss", ""))
            return jwt.decode(token, certs=public, verify=True, audience=None) if public else None  # type: ignore[arg-type]
        except (ValueError, KeyError):
            return None

    async def _token(self, request: Request) -> Response:
        # A service account's JWT assertion (RFC 7523), as google-auth sends it to token_uri.
        from urllib.parse import parse_qs

        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
        claims = self._self_signed(form.get("assertion", ""))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or claims is None:
            return JSONResponse({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, status_code=400)
        return JSONResponse(self.issue_token(f"serviceAccount:{claims['iss']}"))

    def disable_api(self, service: str, project: str = "sandbox-project", project_number: str = "0") -> None:
        """Makes every route of ``service`` (``run.googleapis.com``) answer 403 SERVICE_DISABLED, as
        Google does until ``gcloud services enable`` (:meth:`enable_api` undoes it)."""
        self.disabled[service] = (project, project_number)

    def enable_api(self, service: str) -> None:
        self.disabled.pop(service, None)

    # -- routes ------------------------------------------------------------------------------------
    def route(
        self, path: str, methods: list[str], name: str, *, authenticated: bool = True, first: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Registers ``handler(request, **path_params)`` (sync: it runs in a thread; or async) for
        ``path``. It returns a dict (JSON 200), a :class:`Response`, or raises :class:`GoogleError`.
        Routes with a ``:verb`` suffix must be registered before the same path without it
        (``first``: before every route registered so far)."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            import inspect

            is_async = inspect.iscoroutinefunction(handler)
            service = service_of(name)

            async def endpoint(request: Request) -> Response:
                from starlette.concurrency import run_in_threadpool

                try:
                    if authenticated:
                        request.state.principal = self.principal(request)
                        if service in self.disabled:
                            raise service_disabled(service, *self.disabled[service])
                        if self.gate is not None and (answer := await self.gate.check(name, request)) is not None:
                            self.calls[name] += 1
                            return answer
                    if is_async:
                        result = await handler(request, **request.path_params)
                    else:
                        if request.method in ("POST", "PUT", "PATCH"):
                            raw = await request.body()
                            request.state.body = json.loads(raw) if raw.strip() else {}
                        result = await run_in_threadpool(handler, request, **request.path_params)
                except GoogleError as error:
                    self.calls[name] += 1
                    return error.response()
                self.calls[name] += 1
                response = result if isinstance(result, Response) else JSONResponse(result)
                if authenticated and self.gate is not None and response.status_code < 400:
                    self.gate.done(name, request)
                return response

            self._routes.insert(0 if first else len(self._routes), Route(path, endpoint, methods=methods, name=name))
            return handler

        return register

    # -- serving -----------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves every registered route in a thread of this process; returns the base URL."""
        self._stop, self.url = serve_in_thread(
            Starlette(routes=self._routes), host, port, name="sandbox-gcp-api", what="the sandbox GCP endpoint"
        )
        return self.url

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def serve_in_thread(app: Starlette, host: str, port: int, *, name: str, what: str) -> tuple[Callable[[], None], str]:
    """Serves ``app`` with uvicorn from a daemon thread ``name`` of this process, on ``port`` (0: a free
    one); returns how to stop it and its base URL once it accepts requests. ``what`` names it in the
    error raised when it does not start within 10 s."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start on {host}:{port}")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return stop, f"http://{host}:{sock.getsockname()[1]}"


def body(request: Request) -> dict[str, Any]:
    """The JSON body of a sync handler's request (``{}`` when empty)."""
    return getattr(request.state, "body", {})
