"""IAM enforced in front of the sandbox's moto server: a WSGI middleware that authenticates every
request (:mod:`~prefect_remote.sandbox.iam_identity`), asks :mod:`~prefect_remote.sandbox.iam_requests`
what AWS would authorize for it, evaluates the caller's policies with
:mod:`~prefect_remote.sandbox.iam_policy`, and refuses in AWS's own shape per protocol (EC2's
``UnauthorizedOperation``, IAM's and STS's ``AccessDenied``, S3's ``AccessDenied``, 400
``AccessDeniedException`` in JSON for SSM, CloudWatch Logs and ECR), with AWS's wording ("User: arn:… is
not authorized to perform: ssm:GetParameter on resource: arn:… because no identity-based policy
allows the ssm:GetParameter action"). It also answers
``iam:SimulatePrincipalPolicy`` (moto has none) from the same evaluator.

Why not moto's own access control: it compares specific-ARN statements with ``"*"`` and refuses
them, ignores every condition (an ``Allow`` with a condition allows), reads ``NotResource`` as an
allow, and misses the checks AWS adds (``iam:PassRole``, tag-on-create). moto's check stays off;
its identities (access keys, users, roles, STS sessions) and signature check are reused here.

Callers are moto's IAM users (by access key) and STS sessions (``ASIA…`` keys with their session
token; expired ones get ``ExpiredToken``). Their policies are their identity policies (user
inline and attached, their groups' inline and attached; role inline and attached), within the
role's permissions boundary and the session's policy when there are. Resource-based policies
(bucket policies) are not evaluated: the sandbox's account is one account, where identity
policies decide. An operation :mod:`iam_requests` does not model is refused, naming it.
"""

from __future__ import annotations

import base64
import datetime
import inspect
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from prefect_remote.sandbox.iam_identity import Principal, Refusal, authenticate, identity_policies, policy_document, signature_matches
from prefect_remote.sandbox.iam_policy import Check, Evaluation, PolicyError
from prefect_remote.sandbox.iam_requests import Account, Request, UnknownOperation, checks

IAM_XMLNS = "https://iam.amazonaws.com/doc/2010-05-08/"
QUERY_XMLNS = {"iam": IAM_XMLNS, "sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
JSON_SERVICES = ("ssm", "logs", "pricing", "servicequotas", "ecr")
MODEL_NAMES = {"servicequotas": "service-quotas"}  # signing names whose botocore model is named otherwise

# (kind of refusal, protocol) -> (status, code); protocols: ec2, query (iam, sts), json, s3.
_CODES: dict[str, dict[str, tuple[int, str]]] = {
    "denied": {
        "ec2": (403, "UnauthorizedOperation"),
        "query": (403, "AccessDenied"),
        "json": (400, "AccessDeniedException"),
        "s3": (403, "AccessDenied"),
    },
    "unknown-key": {
        "ec2": (401, "AuthFailure"),
        "query": (403, "InvalidClientTokenId"),
        "json": (400, "UnrecognizedClientException"),
        "s3": (403, "InvalidAccessKeyId"),
    },
    "bad-token": {
        "ec2": (401, "AuthFailure"),
        "query": (403, "InvalidClientTokenId"),
        "json": (400, "UnrecognizedClientException"),
        "s3": (400, "InvalidToken"),
    },
    "signature": {
        "ec2": (401, "AuthFailure"),
        "query": (403, "SignatureDoesNotMatch"),
        "json": (400, "InvalidSignatureException"),
        "s3": (403, "SignatureDoesNotMatch"),
    },
    "expired": {
        "ec2": (400, "RequestExpired"),
        "query": (403, "ExpiredToken"),
        "json": (400, "ExpiredTokenException"),
        "s3": (400, "ExpiredToken"),
    },
    "unsigned": {
        "ec2": (401, "AuthFailure"),
        "query": (403, "MissingAuthenticationToken"),
        "json": (400, "MissingAuthenticationTokenException"),
        "s3": (403, "AccessDenied"),
    },
}
_MESSAGES = {
    "unknown-key": "The security token included in the request is invalid.",
    "bad-token": "The security token included in the request is invalid.",
    "signature": (
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key "
        "and signing method. Consult the service documentation for details."
    ),
    "expired": "The security token included in the request is expired",
    "unsigned": "Request is missing Authentication Token",
}
_EC2_MESSAGES = {"expired": "Request has expired."}  # else "AWS was not able to validate the provided access credentials"
_S3_MESSAGES = {
    "unknown-key": "The AWS Access Key Id you provided does not exist in our records.",
    "bad-token": "The provided token is malformed or otherwise invalid.",
    "expired": "The provided token has expired.",
    "unsigned": "Access Denied",
}


# -- the middleware --------------------------------------------------------------------------------
@dataclass
class _Parsed:
    service: str
    protocol: str  # ec2, query, json, s3
    operation: str
    params: dict[str, Any]
    region: str


class IAMEnforcer:
    """WSGI middleware: every request is authenticated and authorized before ``app`` (moto) sees it,
    while ``on`` (a sandbox switches it on once its account is ready)."""

    def __init__(
        self,
        app: Any,
        *,
        account: str,
        partition: str = "aws",
        on: bool = True,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        world: Account | None = None,
    ) -> None:
        self.app, self.account, self.partition, self.on, self.clock = app, account, partition, on, clock
        self.world = world or Account()
        self.refusals: list[str] = []  # "kind: message", for a test to read
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not self.on:
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return _respond(start_response, 403, "text/plain", b"the sandbox's moto-api is closed while IAM is enforced")
        protocol = _protocol_of(environ)
        try:
            key_id, region, service = _scope(environ)
            principal = self._authenticate(environ, body, key_id, region)
            parsed = self._parse(environ, body, key_id, region, service)
            protocol = parsed.protocol
            if (parsed.service, parsed.operation) == ("iam", "SimulatePrincipalPolicy"):
                self._authorize(principal, parsed)
                return _respond(start_response, 200, "text/xml", self.simulate(parsed.params).encode())
            self._authorize(principal, parsed)
        except Refusal as refusal:
            with self._lock:
                self.refusals.append(f"{refusal.kind}: {refusal.message or ''}")
            return _refuse(start_response, refusal, protocol, environ)
        environ["wsgi.input"] = io.BytesIO(body)
        if parsed.service == "s3" and parsed.operation in ("GetObject", "HeadObject") and not self._may_list(principal, parsed):
            return self._missing_is_forbidden(
                environ, start_response, f"{principal.arn} may not s3:ListBucket {parsed.params.get('Bucket')}"
            )
        return self.app(environ, start_response)

    def _may_list(self, principal: Principal, parsed: _Parsed) -> bool:
        from prefect_remote.sandbox.iam_requests import s3_arn

        request = Request("s3", "ListBucket", {}, parsed.region, self.account, self.partition)
        check = Check("s3:ListBucket", s3_arn(request, parsed.params.get("Bucket", "")), principal.context)
        try:
            return principal.decide(check)[0].allowed
        except PolicyError:
            return False

    def _missing_is_forbidden(self, environ: dict[str, Any], start_response: Any, why: str) -> Any:
        """S3 answers a missing key with 404 only to callers who may list the bucket; others get 403
        Access Denied (GetObject's documentation), which tells them nothing of what is there."""
        answered: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            answered.update(status=status, headers=headers)
            return lambda data: None

        chunks = self.app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        if answered["status"].startswith("404"):
            with self._lock:
                self.refusals.append(f"missing-key: 403 for a missing key of {environ.get('PATH_INFO')}: {why}")
            return _refuse(start_response, Refusal("denied", "Access Denied"), "s3", environ)
        start_response(answered["status"], answered["headers"])
        return [body]

    # -- reading the request ----------------------------------------------------------------------
    def _parse(self, environ: dict[str, Any], body: bytes, key_id: str, region: str, service: str) -> _Parsed:
        from moto.core.parse import PROTOCOL_PARSERS
        from moto.core.request import Request as MotoRequest
        from moto.core.request import determine_request_protocol
        from moto.core.routing import get_service_router
        from moto.core.utils import get_service_model

        request = MotoRequest(dict(environ, **{"wsgi.input": io.BytesIO(body)}))
        try:
            model = get_service_model(MODEL_NAMES.get(service, service))
            # moto 5.2.6 reads the request itself; 5.2.5 and earlier take its content type
            takes_request = "request" in inspect.signature(determine_request_protocol).parameters
            protocol = determine_request_protocol(model, request if takes_request else request.content_type)
            uri: dict[str, Any] = {}
            if protocol in ("query", "ec2"):
                operation = request.values.get("Action", "")
            elif protocol == "json":
                operation = (request.headers.get("X-Amz-Target") or "").rpartition(".")[2]
            else:
                matched, uri = get_service_router(service).match(request)
                operation = matched.name
            operation_model = model.operation_model(operation)
        except Exception as error:  # no such service or operation: nothing to authorize it against
            raise Refusal("denied", f"the sandbox cannot tell which {service} operation this request is ({error})") from None
        kind = "s3" if service == "s3" else "json" if protocol == "json" else "ec2" if protocol == "ec2" else "query"
        try:
            params = PROTOCOL_PARSERS[protocol](operation_model).parse(
                {
                    "method": request.method,
                    "values": request.values,
                    "headers": request.headers,
                    "body": body,
                    "url_path": request.path,
                    "url_params": uri,
                }
            )
        except Exception:
            if service != "s3":
                raise Refusal("denied", f"the sandbox could not read the parameters of {service}:{operation}") from None
            params = dict(uri)  # an S3 body it cannot parse (a streamed upload): the URL names bucket and key
        return _Parsed(service, kind, operation, dict(params), region)

    def _authenticate(self, environ: dict[str, Any], body: bytes, key_id: str, region: str) -> Principal:
        token = environ.get("HTTP_X_AMZ_SECURITY_TOKEN")
        principal, secret = authenticate(self.account, self.partition, key_id, token, self.clock())
        if not signature_matches(environ, body, key_id, secret, token):
            raise Refusal("signature")
        principal.context = {**principal.context, "aws:RequestedRegion": region, **_times(self.clock())}
        return principal

    def _authorize(self, principal: Principal, parsed: _Parsed) -> None:
        request = Request(parsed.service, parsed.operation, parsed.params, parsed.region, self.account, self.partition)
        try:
            wanted = checks(request, self.world)
        except UnknownOperation as error:
            raise Refusal("denied", _denied_message(principal, f"{parsed.service}:{parsed.operation}", "*", "", str(error))) from None
        for check in wanted:
            check = Check(check.action, check.resource, {**principal.context, **check.context})
            try:
                evaluation, layer = principal.decide(check)
            except PolicyError as error:
                raise Refusal(
                    "denied", _denied_message(principal, check.action, check.resource, "", f"a policy cannot be read: {error}")
                ) from None
            if not evaluation.allowed:
                reason = _reason(evaluation, layer, check.action)
                decision = {
                    "allowed": False,
                    "explicitDeny": evaluation.decision == "explicitDeny",
                    "matchedStatements": [m.sid or f"{m.policy}#{m.index}" for m in evaluation.matched],
                    "context": {"principal": principal.arn, "action": check.action, "resource": check.resource},
                }
                raise Refusal("denied", _denied_message(principal, check.action, check.resource, reason), decision=decision)

    # -- iam:SimulatePrincipalPolicy --------------------------------------------------------------
    def simulate(self, params: Mapping[str, Any]) -> str:
        """SimulatePrincipalPolicy's answer (XML), from the same evaluator as every request."""
        from moto.iam.models import iam_backends

        source = params["PolicySourceArn"]
        try:
            policies, boundary = identity_policies(iam_backends[self.account][self.partition], source)
        except LookupError:
            raise Refusal("denied", f"PolicySourceArn {source} names no user, role or group of this account") from None
        policies = policies + [
            (f"PolicyInputList.{i + 1}", policy_document(doc), "none") for i, doc in enumerate(params.get("PolicyInputList") or [])
        ]
        if params.get("PermissionsBoundaryPolicyInputList"):
            boundary = [
                (f"PermissionsBoundaryPolicyInputList.{i + 1}", policy_document(d), "none")
                for i, d in enumerate(params["PermissionsBoundaryPolicyInputList"])
            ]
        principal = Principal(source, "simulated", source, self.account, policies, boundary)
        context = {entry["ContextKeyName"]: list(entry.get("ContextKeyValues") or []) for entry in params.get("ContextEntries") or []}
        types = {name: source_type for name, _, source_type in policies + (boundary or [])}
        results = []
        for action in params.get("ActionNames") or []:
            for resource in params.get("ResourceArns") or ["*"]:
                try:
                    evaluation, layer = principal.decide(Check(action, resource, context))
                except PolicyError as error:
                    raise Refusal("denied", f"a policy of {source} cannot be read: {error}") from None
                results.append(_evaluation_xml(action, resource, evaluation, boundary is not None and layer is None, types))
        return (
            f'<SimulatePrincipalPolicyResponse xmlns="{IAM_XMLNS}"><SimulatePrincipalPolicyResult>'
            f"<IsTruncated>false</IsTruncated><EvaluationResults>{''.join(results)}</EvaluationResults>"
            f"</SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</SimulatePrincipalPolicyResponse>"
        )


def _evaluation_xml(action: str, resource: str, evaluation: Evaluation, within_boundary: bool, types: Mapping[str, str]) -> str:
    statements = "".join(
        f"<member><SourcePolicyId>{escape(m.policy)}</SourcePolicyId>"
        f"<SourcePolicyType>{types.get(m.policy, 'none')}</SourcePolicyType></member>"
        for m in evaluation.matched
    )
    missing = "".join(f"<member>{escape(key)}</member>" for key in evaluation.missing)
    boundary = (
        f"<PermissionsBoundaryDecisionDetail><AllowedByPermissionsBoundary>{'true' if within_boundary else 'false'}"
        "</AllowedByPermissionsBoundary></PermissionsBoundaryDecisionDetail>"
    )
    common = f"<MatchedStatements>{statements}</MatchedStatements><MissingContextValues>{missing}</MissingContextValues>"
    return (
        f"<member><EvalActionName>{escape(action)}</EvalActionName><EvalResourceName>{escape(resource)}</EvalResourceName>"
        f"<EvalDecision>{evaluation.decision}</EvalDecision>{common}{boundary}"
        f"<ResourceSpecificResults><member><EvalResourceName>{escape(resource)}</EvalResourceName>"
        f"<EvalResourceDecision>{evaluation.decision}</EvalResourceDecision>{common}</member></ResourceSpecificResults></member>"
    )


# -- helpers ---------------------------------------------------------------------------------------
def _times(now: datetime.datetime) -> dict[str, str]:
    return {"aws:CurrentTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "aws:EpochTime": str(int(now.timestamp()))}


def _protocol_of(environ: Mapping[str, Any]) -> str:
    """The protocol a refusal is answered in, guessed before the request is read."""
    scope = environ.get("HTTP_AUTHORIZATION", "").partition("Credential=")[2].split("/")
    service = scope[3] if len(scope) > 3 else ""
    if service == "s3" or (
        not service and not environ.get("HTTP_X_AMZ_TARGET") and "x-www-form-urlencoded" not in environ.get("CONTENT_TYPE", "")
    ):
        return "s3"
    if environ.get("HTTP_X_AMZ_TARGET") or service in JSON_SERVICES:
        return "json"
    return "ec2" if service == "ec2" else "query"


def _scope(environ: Mapping[str, Any]) -> tuple[str, str, str]:
    """The access key, region and service of a request's SigV4 credential scope."""
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    scope = authorization.partition("Credential=")[2].partition(",")[0].split("/")
    if not authorization.startswith("AWS4-HMAC-SHA256") or len(scope) < 5:
        raise Refusal("unsigned")
    return scope[0], scope[2], scope[3]


def _reason(evaluation: Evaluation, layer: str | None, action: str) -> str:
    if evaluation.decision == "explicitDeny":
        return f"with an explicit deny in a {layer}" if layer else "with an explicit deny in an identity-based policy"
    if layer:
        return f"because no {layer} allows the {action} action"
    return f"because no identity-based policy allows the {action} action"


def _denied_message(principal: Principal, action: str, resource: str, reason: str, detail: str = "") -> str:
    on = "" if resource == "*" else f" on resource: {resource}"
    text = f"User: {principal.arn} is not authorized to perform: {action}{on}"
    return f"{text} {reason}" if reason else f"{text}: {detail}"


def _respond(start_response: Any, status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    from http import HTTPStatus

    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("x-amzn-RequestId", str(uuid.uuid4())), *headers],
    )
    return [body]


def _refuse(start_response: Any, refusal: Refusal, protocol: str, environ: Mapping[str, Any]) -> list[bytes]:
    status, code = _CODES[refusal.kind][protocol]
    request_id = str(uuid.uuid4())
    message = refusal.message or _MESSAGES.get(refusal.kind, refusal.kind)
    if protocol == "ec2":
        if refusal.kind == "denied":
            encoded = base64.urlsafe_b64encode(json.dumps(refusal.decision or {}).encode()).decode()
            message = f"You are not authorized to perform this operation. {message}. Encoded authorization failure message: {encoded}"
        else:
            message = _EC2_MESSAGES.get(refusal.kind, "AWS was not able to validate the provided access credentials")
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message>'
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
        return _respond(start_response, status, "text/xml", body.encode())
    if protocol == "json":
        return _respond(start_response, status, "application/x-amz-json-1.1", json.dumps({"__type": code, "message": message}).encode())
    if protocol == "s3":
        if refusal.kind != "denied":
            message = _S3_MESSAGES.get(refusal.kind, message)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return _respond(start_response, status, "application/xml", b"")
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}</Message>'
            f"<RequestId>{request_id}</RequestId><HostId>sandbox</HostId></Error>"
        )
        return _respond(start_response, status, "application/xml", body.encode())
    scope = environ.get("HTTP_AUTHORIZATION", "").partition("Credential=")[2].split("/")
    xmlns = QUERY_XMLNS.get(scope[3] if len(scope) > 3 else "", IAM_XMLNS)
    body = (
        f'<ErrorResponse xmlns="{xmlns}"><Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message></Error>'
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return _respond(start_response, status, "text/xml", body.encode())
