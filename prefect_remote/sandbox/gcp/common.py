"""What the sandbox GCP's fakes share: what they need of the sandbox (:class:`Sandbox`, so that none
imports it), its one project (every request's ``projects/<id or number>`` is checked against it),
Google's rules for labels, and page tokens.

>>> project = Project("sandbox-project", "123456789012")
>>> project.check("123456789012", "run.jobs.get", "projects/123456789012/locations/us-central1/jobs/x")
>>> project.check("other", "run.jobs.get", "projects/other")
Traceback (most recent call last):
...
prefect_remote.sandbox.gcp.api.GoogleError: Permission 'run.jobs.get' denied on resource 'projects/other' (or it may not exist).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError

if TYPE_CHECKING:
    from prefect_remote.sandbox.gcp.metadata import MetadataServer
    from prefect_remote.sandbox.instances import InstanceRunner


class Sandbox(Protocol):
    """What the fakes (Cloud Run, Compute Engine, IAM) need of the sandbox GCP that holds them
    (:class:`prefect_remote.sandbox.gcp.sandbox.SandboxGCP`): they take it as this, never import it."""

    api: GoogleAPI  # the endpoint their routes are served on
    project: str
    project_number: str
    region: str
    zones: list[str]
    service_accounts: set[str]  # the emails that exist: a launch naming another is refused
    metadata: MetadataServer  # a metadata server per task or instance
    secrets: Any  # Secret Manager (``value(secret, version)``), for Cloud Run's secretKeyRefs
    logging: Any  # Cloud Logging (``write(entries)``), where Cloud Run tasks' output goes
    compute: Any  # Compute Engine, whose network (``network.allocate()``) Cloud Run tasks join by Direct VPC egress
    quotas: Any  # Cloud Quotas: Cloud Run's regional quotas (``violations(region, requested)``), checked when a job is made
    images: Any  # the registry and engine (SandboxImages) whose images Cloud Run pulls and runs, or None
    enforcement: Any  # IAM (IAMEnforcement: ``allows(principal, check)``), or None when not enforced

    @property
    def runner(self) -> InstanceRunner:
        """Where tasks and instances run as local machines (once the sandbox is started)."""
        ...

    def image_env(self, key: str) -> dict[str, str]:
        """What the sandbox image sets on the machine whose metadata server is ``key``."""
        ...

    def no_egress_env(self) -> dict[str, str]:
        """What a machine with no way out of its network gets: its traffic beyond the sandbox hangs."""
        ...


@dataclass(frozen=True)
class Project:
    id: str
    number: str

    @classmethod
    def named(cls, project_id: str) -> Project:
        """A project with a number made from its id (stable across runs, as a real one's is)."""
        return cls(project_id, str(10**11 + int(hashlib.sha256(project_id.encode()).hexdigest(), 16) % (9 * 10**11)))

    def check(self, given: str, permission: str, resource: str) -> None:
        """A request naming another project is refused as Google refuses it: the caller may not
        see whether it exists."""
        if given not in (self.id, self.number):
            raise GoogleError(403, f"Permission '{permission}' denied on resource '{resource}' (or it may not exist).")


def default_compute_account(project_number: str) -> str:
    """The email of the project's default Compute Engine service account: what a Cloud Run job or a VM
    that names no account runs as. Google makes it with the project and grants it ``roles/editor``
    on the project, unless an organization policy (``iam.automaticIamGrantsForDefaultServiceAccounts``)
    disables that grant.

    >>> default_compute_account("123456789012")
    '123456789012-compute@developer.gserviceaccount.com'
    """
    return f"{project_number}-compute@developer.gserviceaccount.com"


_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


def check_labels(labels: Any, where: str = "labels") -> dict[str, str]:
    """``labels`` if Google would take them (at most 64; keys start with a lowercase letter; keys and
    values hold lowercase letters, digits, ``_`` and ``-``, at most 63 characters), else 400.

    >>> check_labels({"prefect-remote-launch": "l-1"})
    {'prefect-remote-launch': 'l-1'}
    """
    labels = dict(labels or {})
    if len(labels) > 64:
        raise GoogleError(400, f"{where}: {len(labels)} labels; at most 64 are allowed")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(str(key)):
            raise GoogleError(
                400,
                f"{where}: invalid label key {key!r}: keys start with a lowercase letter and hold only lowercase letters, digits, "
                "'_' and '-' (at most 63 characters)",
            )
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            raise GoogleError(
                400,
                f"{where}: invalid value {value!r} of label {key!r}: values hold only lowercase letters, digits, '_' and '-' (at "
                "most 63 characters)",
            )
    return labels


T = TypeVar("T")


def page(
    items: Sequence[T],
    query: Mapping[str, str],
    *,
    default: int = 100,
    maximum: int = 1000,
    size_key: str = "pageSize",
    token_key: str = "pageToken",
) -> tuple[list[T], str]:
    """One page of ``items`` for a list request's ``pageSize`` and ``pageToken``, and the next
    page's token ("" on the last page). Tokens are opaque to clients, as Google's are."""
    try:
        size = int(query.get(size_key) or 0) or default
        start = int(base64.urlsafe_b64decode(query[token_key]).decode()) if query.get(token_key) else 0
    except ValueError:
        raise GoogleError(400, "Invalid page token or page size") from None
    size = min(max(size, 1), maximum)
    chunk = list(items[start : start + size])
    more = start + size < len(items)
    return chunk, base64.urlsafe_b64encode(str(start + size).encode()).decode() if more else ""
