"""Who calls the sandbox AWS, for its IAM enforcement (:mod:`~prefect_remote.sandbox.iam_server`): a
request's access key (and session token) found among moto's identities (IAM users' keys, STS
sessions), its signature checked again, and the caller as a :class:`Principal`, with the policies
that decide for it (identity policies, permissions boundary, session policy) and the global
condition keys it brings. What AWS would refuse at this stage raises :class:`Refusal`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_remote.sandbox.iam_policy import Check, Evaluation, evaluate

# The STS sessions EC2 handed to instances for their profile's role (aws_identities.MachineCredentials), by
# access key id. Only those bring ec2:SourceInstanceARN: "present only when the request comes from an
# Amazon EC2 instance using an IAM role associated with an EC2 instance profile" (IAM User Guide, policy
# variables), never a session someone assumed with an instance-like name.
_INSTANCE_SESSIONS: set[str] = set()


def handed_to_instance(access_key_id: str) -> None:
    """Records that EC2 handed the session of ``access_key_id`` to an instance (named as the session)."""
    _INSTANCE_SESSIONS.add(access_key_id)


class Refusal(Exception):
    """A request AWS would refuse: ``kind`` is ``"denied"``, ``"unknown-key"``, ``"bad-token"``,
    ``"signature"``, ``"expired"`` or ``"unsigned"``, which the middleware answers in each protocol's shape."""

    def __init__(self, kind: str, message: str | None = None, *, decision: Mapping[str, Any] | None = None) -> None:
        super().__init__(message or kind)
        self.kind, self.message, self.decision = kind, message, decision


@dataclass
class Principal:
    """An authenticated caller and the policies that decide for it."""

    arn: str
    kind: str  # "user" or "assumed-role"
    name: str  # the user's or the role's name
    account: str
    policies: list[tuple[str, Mapping[str, Any], str]]  # (id, document, SourcePolicyType)
    boundary: list[tuple[str, Mapping[str, Any], str]] | None = None
    session: list[tuple[str, Mapping[str, Any], str]] | None = None
    context: dict[str, Any] = field(default_factory=dict)  # the global condition keys it brings

    def decide(self, check: Check) -> tuple[Evaluation, str | None]:
        """The decision on ``check``, and which kind of policy failed it (``None``: identity)."""
        identity = evaluate(((pid, doc) for pid, doc, _ in self.policies), check)
        layers = [("permissions boundary", self.boundary), ("session policy", self.session)]
        for label, documents in layers:
            if documents is None:
                continue
            limited = evaluate(((pid, doc) for pid, doc, _ in documents), check)
            if limited.decision == "explicitDeny":
                return limited, label
            if identity.allowed and not limited.allowed:
                return limited, label
        return identity, None


def policy_document(text: str | Mapping[str, Any]) -> Mapping[str, Any]:
    """A policy document, given as JSON (URL-encoded, as moto keeps some) or already parsed."""
    if isinstance(text, Mapping):
        return text
    from urllib.parse import unquote

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(unquote(text))


def _managed(policy: Any) -> Mapping[str, Any]:
    version = next(v for v in policy.versions if v.is_default)
    return policy_document(version.document)


def _managed_type(policy: Any) -> str:
    return "aws-managed" if ":iam::aws:policy" in policy.arn else "user-managed"


def _policies_of(owner: Any, inline: str) -> list[tuple[str, Mapping[str, Any], str]]:
    """A moto user's, group's or role's inline policies (of SourcePolicyType ``inline``), then its attached ones."""
    attached = [(policy.name, _managed(policy), _managed_type(policy)) for policy in owner.managed_policies.values()]
    return [(name, policy_document(doc), inline) for name, doc in owner.policies.items()] + attached


def identity_policies(backend: Any, arn: str) -> tuple[list[tuple[str, Mapping[str, Any], str]], list | None]:
    """The identity policies of the user, role or group ``arn`` (moto's ``backend``), and its
    permissions boundary's; raises ``LookupError`` for an unknown one."""
    kind, _, rest = arn.split(":", 5)[5].partition("/")
    name = rest.rsplit("/", 1)[-1]
    found: list[tuple[str, Mapping[str, Any], str]] = []
    boundary = None
    if kind == "user":
        user = backend.users.get(name)
        if user is None:
            raise LookupError(f"no user {name}")
        found += _policies_of(user, "user")
        for group in backend.get_groups_for_user(name):
            found += _policies_of(group, "group")
    elif kind == "role":
        role = next((r for r in list(backend.roles.values()) if r.name == name), None)
        if role is None:
            raise LookupError(f"no role {name}")
        found += _policies_of(role, "role")
        if role.permissions_boundary_arn:
            policy = backend.get_policy(role.permissions_boundary_arn)
            boundary = [(policy.name, _managed(policy), "permissions-boundary")]
    elif kind == "group":
        group = backend.groups.get(name)
        if group is None:
            raise LookupError(f"no group {name}")
        found += _policies_of(group, "group")
    else:
        raise LookupError(f"{arn} is not a user, role or group")
    return found, boundary


def authenticate(account: str, partition: str, key_id: str, token: str | None, now: datetime.datetime) -> tuple[Principal, str]:
    """The caller holding access key ``key_id`` (and session ``token``), and its secret; raises
    :class:`Refusal` for an unknown key, a wrong token or expired credentials."""
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    backend = iam_backends[account][partition]
    base = {"aws:PrincipalAccount": account, "aws:SecureTransport": "true"}  # the cloud is https
    if not key_id.startswith("ASIA"):
        for user in list(backend.users.values()):
            for key in user.access_keys:
                if key.access_key_id == key_id and key.status == "Active":
                    if token is not None:
                        raise Refusal("bad-token")
                    policies, boundary = identity_policies(backend, user.arn)
                    tags = {t["Key"]: t["Value"] for t in backend.tagger.list_tags_for_resource(user.arn).get("Tags", [])}
                    context = {
                        **base,
                        "aws:PrincipalArn": user.arn,
                        "aws:PrincipalType": "User",
                        "aws:username": user.name,
                        "aws:userid": user.id,
                        **{f"aws:PrincipalTag/{k}": v for k, v in tags.items()},
                    }
                    return Principal(user.arn, "user", user.name, account, policies, boundary, None, context), key.secret_access_key
        raise Refusal("unknown-key")
    for session in list(sts_backends[account][partition].assumed_roles):
        if session.access_key_id != key_id:
            continue
        if token != session.session_token:
            raise Refusal("bad-token")
        if session.expiration <= now.replace(tzinfo=None):
            raise Refusal("expired")
        role_name = session.role_arn.rsplit("/", 1)[-1]
        role = next((r for r in list(backend.roles.values()) if r.arn == session.role_arn), None)
        if role is None:
            raise Refusal("bad-token")
        policies, boundary = identity_policies(backend, role.arn)
        context = {
            **base,
            "aws:PrincipalArn": role.arn,
            "aws:PrincipalType": "AssumedRole",
            "aws:userid": f"{role.id}:{session.session_name}",
            **{f"aws:PrincipalTag/{t['Key']}": t["Value"] for t in role.tags},
        }
        if session.access_key_id in _INSTANCE_SESSIONS:  # an instance's credentials, as EC2 hands them out
            context["ec2:SourceInstanceARN"] = f"arn:{partition}:ec2:{session.region_name}:{account}:instance/{session.session_name}"
        session_policy = [("session", policy_document(session.policy), "session")] if session.policy else None
        arn = f"arn:{partition}:sts::{account}:assumed-role/{role_name}/{session.session_name}"
        return Principal(arn, "assumed-role", role_name, account, policies, boundary, session_policy, context), session.secret_access_key
    raise Refusal("unknown-key")


def signature_matches(environ: Mapping[str, Any], body: bytes, key_id: str, secret: str, token: str | None) -> bool:
    """Signs the request again with the caller's secret (botocore's SigV4, as moto's own check
    does) and compares."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    authorization = environ.get("HTTP_AUTHORIZATION", "")
    fields = dict(part.strip().split("=", 1) for part in authorization.split(" ", 1)[-1].split(",") if "=" in part)
    signed = fields.get("SignedHeaders", "").split(";")
    headers = {}
    for name in signed:
        key = (
            "CONTENT_TYPE"
            if name == "content-type"
            else "CONTENT_LENGTH"
            if name == "content-length"
            else "HTTP_" + name.upper().replace("-", "_")
        )
        if key in environ:
            headers[name] = environ[key]
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
    if "?" not in target and environ.get("QUERY_STRING"):
        target += "?" + environ["QUERY_STRING"]
    host = headers.get("host", "localhost")
    request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"), url=f"http://{host}{target}", data=body, headers=headers)
    request.context["timestamp"] = headers.get("x-amz-date", "")
    scope = fields.get("Credential", "").split("/")
    signing_region, signing_service = scope[2], scope[3]
    auth = (S3SigV4Auth if signing_service == "s3" else SigV4Auth)(Credentials(key_id, secret, token), signing_service, signing_region)
    canonical = auth.canonical_request(request)
    return auth.signature(auth.string_to_sign(request, canonical), request) == fields.get("Signature")
