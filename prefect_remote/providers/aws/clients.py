"""The aws provider's boto3 clients, made once each, and AWS's errors as ones that name the fix.

Every client comes from one boto3 session of the provider's own (boto3's default session keeps the
first credentials it found), in the provider's region, with botocore's standard retry mode. Region,
credentials and endpoint come from boto3's usual chain (``AWS_PROFILE``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``, an instance profile…).

Standard library only at import: boto3 is imported when the clients are made.

>>> clients = AWSClients("us-east-2")                                       # doctest: +SKIP
>>> with translated():                                                     # doctest: +SKIP
...     clients.client("ec2").describe_instances()
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from prefect_remote.errors import RemoteError

if TYPE_CHECKING:
    from botocore.client import BaseClient

logger = logging.getLogger("prefect_remote.providers.aws")
T = TypeVar("T")

INSTALL_HINT = "pip install 'prefect-remote[aws]'"
DOCS_PAGE = "docs/providers/aws.md"  # its "Permissions" section lists what each identity needs
NO_CREDENTIALS = (
    "no AWS credentials found for the aws provider; set AWS_PROFILE (after `aws configure` or `aws sso login`) "
    "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance profile or role provides them"
)
# What AWS answers for credentials it does not accept, and for a permission the identity lacks.
BAD_CREDENTIALS = frozenset(
    {"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId", "InvalidAccessKeyId", "ExpiredToken", "SignatureDoesNotMatch"}
)
DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "403"})
# How long AWS may take to show what was just made to the next call (an instance profile: 5-15 s;
# SkyPilot waits 15 s). Throttling is botocore's retry mode's job, not this.
PROPAGATION_TIMEOUT = 60.0
# S3 operations whose IAM action has another name.
S3_ACTIONS = {
    "HeadBucket": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "DeleteObjects": "DeleteObject",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "PutBucketEncryption": "PutEncryptionConfiguration",
}


class AWSError(RemoteError):
    """AWS refused the provider (no credentials, a missing permission): the message says what to fix."""


def boto3() -> Any:
    """The boto3 module; an :class:`AWSError` saying how to install it when it is missing."""
    try:
        import boto3
    except ImportError:
        raise AWSError(f"the aws provider needs boto3, which is not installed: {INSTALL_HINT}") from None
    return boto3


def error_code(error: Exception) -> str:
    """The ``Error.Code`` of a botocore ``ClientError`` (``"InvalidInstanceID.NotFound"``); ``""`` for anything else."""
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


class AWSClients:
    """One boto3 session and a client per service (``"ec2"``, ``"ssm"``, ``"logs"``…) in ``region``
    (default: the session's, e.g. ``AWS_DEFAULT_REGION``; None if it has none). The session and
    clients do not pickle (a flow sends its task runner, and so its provider, with every task): they
    are made again on first use."""

    def __init__(self, region: str | None = None) -> None:
        self._session: Any = boto3().session.Session()
        self.region: str | None = region or self._session.region_name
        self._clients: dict[str, BaseClient] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"region": self.region}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _session=None, _clients={})

    def client(self, service: str) -> BaseClient:
        """The client for ``service``, made once."""
        if service not in self._clients:
            from botocore.config import Config

            if self._session is None:  # unpickled
                self._session = boto3().session.Session()
            config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
            self._clients[service] = self._session.client(service, region_name=self.region, config=config)
        return self._clients[service]

    def instances(self, **params: Any) -> list[dict[str, Any]]:
        """Every instance ``describe_instances(**params)`` finds, over all its pages."""
        pages = self.client("ec2").get_paginator("describe_instances").paginate(**params)
        return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]


def not_yet_visible(error: Exception, *, groups: bool = True) -> bool:
    """Whether ``error`` is AWS's eventual consistency: a resource made a moment ago that the call does
    not see yet (a new instance profile, security group or instance id). ``groups=False`` when the
    groups named were not just made (the user's own: NotFound is then their mistake)."""
    code, message = error_code(error), str(error)
    if code == "InvalidParameterValue":
        return "Invalid IAM Instance Profile" in message
    return code == "InvalidInstanceID.NotFound" or (groups and code == "InvalidGroup.NotFound")


def eventually(
    call: Callable[[], T],
    *,
    retry_if: Callable[[Exception], bool] = not_yet_visible,
    timeout: float = PROPAGATION_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """What ``call()`` returns once AWS sees what it names: an error ``retry_if`` accepts is retried
    with exponential backoff and jitter (0.5 s, 1 s, 2 s… at most 8 s) for up to ``timeout`` seconds,
    then raised; any other error at once.

    >>> eventually(lambda: 42)
    42
    """
    delay, deadline = 0.5, clock() + timeout
    while True:
        try:
            return call()
        except Exception as error:
            if not retry_if(error) or clock() + delay > deadline:
                raise
            logger.info("AWS does not see it yet (%s); retrying in %.1fs", error_code(error) or error, delay)
        sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, 8.0)


@contextmanager
def translated(service: str | None = None, purpose: str | None = None) -> Iterator[None]:
    """Turns what boto3 raises inside the block for missing or rejected credentials, or a refused
    permission, into an :class:`AWSError` that names the fix. With ``purpose`` (what calls to
    ``service`` are for: ``"s3", "make the store's bucket b"``, as provisioning says), a refusal
    names what for. A refusal names the IAM action (AWS's message names it; else ``service`` and the
    operation: ``s3:CreateBucket``) and the docs page that lists what the provider needs. Other
    errors pass.
    """
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise AWSError(NO_CREDENTIALS) from None
    except ClientError as error:
        code, operation = error_code(error), error.operation_name
        if code in BAD_CREDENTIALS:
            raise AWSError(
                f"AWS rejected the credentials in use ({code} on {operation}); check AWS_PROFILE or run `aws configure`"
            ) from None
        if code not in DENIED:
            raise
        message = error.response["Error"].get("Message", "")
        action = refused_action(service, operation, message)
        need = f"the permission {action} to {purpose}" if purpose else f"the permission {action}"
        raise AWSError(
            f"AWS refused {action} ({code}): the identity in use needs {need} ({DOCS_PAGE}, Permissions, lists what "
            "launching, provisioning and teardown need)"
        ) from None


def refused_action(service: str | None, operation: str, message: str = "") -> str:
    """The IAM action a refused call needed: the one AWS's ``message`` names, else ``service:operation``
    (with S3's own action names), else the operation.

    >>> refused_action(None, "GetLogEvents", "User: arn:aws:iam::1:user/u is not authorized to perform: logs:GetLogEvents on ...")
    'logs:GetLogEvents'
    >>> refused_action("s3", "HeadBucket")
    's3:ListBucket'
    """
    named = re.search(r"not authorized to perform:? ([a-z0-9-]+:[A-Za-z0-9]+)", message)
    if named:
        return named.group(1)
    if service is None:
        return operation
    return f"{service}:{S3_ACTIONS.get(operation, operation) if service == 's3' else operation}"
