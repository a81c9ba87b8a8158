"""A sandbox cloud's instance metadata service: IMDSv2 (session tokens required) for every instance
the sandbox runs, each under its own base URL (``http://HOST:PORT/<instance id>``), which the
instance's image sets as ``AWS_EC2_METADATA_SERVICE_ENDPOINT``: boto3 and the machine runtime on
the instance use it as they would the link-local one.

>>> service = MetadataService()                                         # doctest: +SKIP
>>> service.register("i-0abc", lambda: {"instance-id": "i-0abc", "tags": {"team": "data"}})  # doctest: +SKIP
>>> service.endpoint("i-0abc")                                          # doctest: +SKIP
'http://127.0.0.1:41234/i-0abc'
"""

from __future__ import annotations

import datetime
import json
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What an instance's facts() returns: metadata paths ("instance-id", "placement/region"…) to text,
# plus "tags" (its live tags), "role" (its instance profile's role name, or None) and, where IAM is
# enforced, "credentials" (a callable giving the role's current session as IMDS serves it).
Facts = dict[str, Any]
MAX_TOKEN_TTL = 21600


class MetadataService:
    """One HTTP server answering for many instances; ``facts`` callables are read on every request,
    so tags written through the API (a lease renewal) show at once."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._instances: dict[str, Callable[[], Facts | None]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (instance id, expiry)
        self._lock = threading.Lock()
        self.requests = 0  # answered requests, for the sandbox's API-call counts
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: one line per request otherwise
                pass

            def do_PUT(self) -> None:
                service._answer(self, "PUT")

            def do_GET(self) -> None:
                service._answer(self, "GET")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-imds", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def endpoint(self, instance_id: str) -> str:
        """The base URL instance ``instance_id`` uses as its metadata service."""
        return f"{self.url}/{instance_id}"

    def register(self, instance_id: str, facts: Callable[[], Facts | None]) -> None:
        with self._lock:
            self._instances[instance_id] = facts

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._instances.pop(instance_id, None)
            self._tokens = {token: held for token, held in self._tokens.items() if held[0] != instance_id}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the protocol ---------------------------------------------------------------------------------
    def _answer(self, request: BaseHTTPRequestHandler, method: str) -> None:
        self.requests += 1
        instance_id, _, path = request.path.lstrip("/").partition("/")
        facts_of = self._instances.get(instance_id)
        facts = facts_of() if facts_of else None
        if facts is None:
            return _send(request, 404, "no such instance")
        if path == "latest/api/token":
            if method != "PUT":
                return _send(request, 405, "")
            try:
                ttl = int(request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                return _send(request, 400, "")
            if not 1 <= ttl <= MAX_TOKEN_TTL:
                return _send(request, 400, "")
            token = secrets.token_urlsafe(32)
            with self._lock:
                self._tokens[token] = (instance_id, time.time() + ttl)
            return _send(request, 200, token)
        held = self._tokens.get(request.headers.get("X-aws-ec2-metadata-token", ""))
        if held is None or held[0] != instance_id or held[1] < time.time():
            return _send(request, 401, "")  # IMDSv2 required: no token, no answer
        if method != "GET" or not path.startswith("latest/meta-data/"):
            return _send(request, 404, "")
        found = _lookup(facts, path.removeprefix("latest/meta-data/").rstrip("/"))
        return _send(request, 404, "") if found is None else _send(request, 200, found)


def _lookup(facts: Facts, path: str) -> str | None:
    tags: dict[str, str] = facts.get("tags") or {}
    role: str | None = facts.get("role")
    if path == "tags/instance":
        return "\n".join(tags)
    if path.startswith("tags/instance/"):
        return tags.get(path.removeprefix("tags/instance/"))
    if path == "iam/security-credentials":
        return role
    if role and path == f"iam/security-credentials/{role}" and facts.get("credentials"):
        return json.dumps(facts["credentials"]())  # the sandbox's STS session of the role
    if role and path == f"iam/security-credentials/{role}":
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)
        return json.dumps(
            {
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": "testing",  # the sandbox's moto accepts any key
                "SecretAccessKey": "testing",
                "Token": f"sandbox-{role}",
                "LastUpdated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    value = facts.get(path)
    return None if value is None else str(value)


def _send(request: BaseHTTPRequestHandler, status: int, body: str) -> None:
    data = body.encode()
    request.send_response(status)
    request.send_header("Content-Type", "text/plain")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
