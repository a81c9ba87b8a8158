"""The Google Cloud clients of the gcp provider, made once each, and Google's errors as ones that name the fix.

Every client uses the same credentials (Google's chain: ``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login``, a service account through the metadata server) and,
when ``api_endpoint`` is set (a sandbox, a private endpoint), that endpoint, over REST. Cloud
Storage is the exception: google-cloud-storage reads ``STORAGE_EMULATOR_HOST`` itself.

Standard library only at import (the machine side imports it): each client's library is imported
when the client is first asked for.

>>> clients = GoogleClients(GCPOptions(project="my-project"))    # doctest: +SKIP
>>> with translated("run.jobs.create", project=clients.project):  # doctest: +SKIP
...     clients.jobs().create_job(...)
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from prefect_remote import google_auth_lookups
from prefect_remote.errors import AccessDenied, RemoteError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

INSTALL_HINT = "pip install 'prefect-remote[gcp]'"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
NO_CREDENTIALS = (
    "no Google Cloud credentials found for the gcp provider; run `gcloud auth application-default login`, "
    "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run where a service account provides them"
)
# The role that grants each family of permissions (the longest matching prefix wins); the README's
# GCP section lists them all.
ROLES = {
    "run.": "roles/run.developer",
    "compute.": "roles/compute.instanceAdmin.v1",
    "compute.firewalls.": "roles/compute.securityAdmin",
    "iam.serviceAccounts.actAs": "roles/iam.serviceAccountUser",
    "secretmanager.": "roles/secretmanager.admin",
    "secretmanager.versions.access": "roles/secretmanager.secretAccessor",
    "logging.": "roles/logging.viewer",
    "logging.logEntries.create": "roles/logging.logWriter",
    "storage.": "roles/storage.objectAdmin",
    "cloudquotas.": "roles/cloudquotas.viewer",
}
# The API behind each family of permissions, for "enable it" errors.
APIS = {
    "run": "run.googleapis.com",
    "compute": "compute.googleapis.com",
    "secretmanager": "secretmanager.googleapis.com",
    "logging": "logging.googleapis.com",
    "storage": "storage.googleapis.com",
    "iam": "iam.googleapis.com",
    "cloudquotas": "cloudquotas.googleapis.com",
}


class GCPError(RemoteError):
    """Google Cloud refused the provider (no credentials or project, a missing role, a disabled API):
    the message says what to fix."""


class GCPAccessDenied(GCPError, AccessDenied):
    """Google Cloud refused a call for a missing permission (403 ``PERMISSION_DENIED``): the message names the role."""


class ClientOptions(Protocol):
    """What the clients need of the provider's options (:class:`~prefect_remote.providers.gcp.options.GCPOptions`;
    on a machine, anything with these attributes)."""

    project: str | None
    api_endpoint: str | None


def default_credentials(scopes: tuple[str, ...] = SCOPES) -> tuple[Credentials, str | None]:
    """Google's default credentials and project (``google.auth.default``), without urllib3's warnings
    about a lookup google-auth itself treats as harmless when it fails (:mod:`.google_auth_lookups`)."""
    from google.auth import default

    google_auth_lookups.quiet()
    return default(scopes=list(scopes))


class GoogleClients:
    """The project, the credentials and one client per Google API, each made on first use.

    ``options`` gives ``project`` (else ``$GOOGLE_CLOUD_PROJECT``, else the credentials' project)
    and ``api_endpoint`` (every API's base URL but Cloud Storage's; None: Google's).
    """

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self._clients: dict[str, Any] = {}

    @functools.cached_property
    def _default(self) -> tuple[Credentials, str | None]:
        from google.auth.exceptions import DefaultCredentialsError

        try:
            return default_credentials(SCOPES)
        except DefaultCredentialsError:
            raise GCPError(NO_CREDENTIALS) from None

    @property
    def credentials(self) -> Credentials:
        return self._default[0]

    def member(self) -> str | None:
        """The IAM member the credentials act as (``serviceAccount:…`` or ``user:…``), or None when they
        do not say (user credentials without their account, workload identity federation without a
        service account). The metadata server names its account once a token is fetched."""
        credentials = self.credentials
        email = getattr(credentials, "service_account_email", None) or getattr(credentials, "account", None)
        if email == "default":
            from google.auth.transport.requests import Request

            with self.translated("read the credentials' service account"):
                credentials.refresh(Request())
            email = getattr(credentials, "service_account_email", None)
        if not email or "@" not in email:
            return None
        return f"{'serviceAccount' if email.endswith('.gserviceaccount.com') else 'user'}:{email}"

    @functools.cached_property
    def project(self) -> str:
        """The project id: the option, ``$GOOGLE_CLOUD_PROJECT``, or the credentials'."""
        project = self.options.project or os.environ.get(PROJECT_ENV) or self._default[1]
        if not project:
            raise GCPError(
                "no Google Cloud project for the gcp provider: set PREFECT_REMOTE_GCP_PROJECT (or pass project=…, "
                "or set GOOGLE_CLOUD_PROJECT, or `gcloud config set project PROJECT`)"
            )
        return project

    def _client_options(self) -> dict[str, str] | None:
        return {"api_endpoint": self.options.api_endpoint} if self.options.api_endpoint else None

    def _made(self, name: str, make: Any) -> Any:
        if name not in self._clients:
            try:
                self._clients[name] = make()
            except ImportError as error:
                raise GCPError(
                    f"the gcp provider needs {error.name or 'the Google Cloud client libraries'}, which is not installed: {INSTALL_HINT}"
                ) from None
        return self._clients[name]

    def _gapic(self, module: str, cls: str) -> Any:
        """A generated (GAPIC) client over REST: ``google.cloud.<module>.<cls>``."""
        import importlib

        def make() -> Any:
            kind = getattr(importlib.import_module(f"google.cloud.{module}"), cls)
            return kind(credentials=self.credentials, transport="rest", client_options=self._client_options())

        return self._made(f"{module}.{cls}", make)

    # -- Cloud Run v2 -------------------------------------------------------------------------------
    def jobs(self) -> Any:
        return self._gapic("run_v2", "JobsClient")

    def executions(self) -> Any:
        return self._gapic("run_v2", "ExecutionsClient")

    def tasks(self) -> Any:
        return self._gapic("run_v2", "TasksClient")

    # -- Compute Engine v1 ----------------------------------------------------------------------------
    def instances(self) -> Any:
        return self._gapic("compute_v1", "InstancesClient")

    def machine_types(self) -> Any:
        return self._gapic("compute_v1", "MachineTypesClient")

    def accelerator_types(self) -> Any:
        return self._gapic("compute_v1", "AcceleratorTypesClient")

    def firewalls(self) -> Any:
        return self._gapic("compute_v1", "FirewallsClient")

    def zone_operations(self) -> Any:
        return self._gapic("compute_v1", "ZoneOperationsClient")

    def global_operations(self) -> Any:
        return self._gapic("compute_v1", "GlobalOperationsClient")

    def zones(self) -> Any:
        return self._gapic("compute_v1", "ZonesClient")

    def regions(self) -> Any:
        return self._gapic("compute_v1", "RegionsClient")

    def subnetworks(self) -> Any:
        return self._gapic("compute_v1", "SubnetworksClient")

    def images(self) -> Any:
        return self._gapic("compute_v1", "ImagesClient")

    # -- the rest ------------------------------------------------------------------------------------
    def secret_manager(self) -> Any:
        return self._gapic("secretmanager_v1", "SecretManagerServiceClient")

    def logging(self) -> Any:
        """google-cloud-logging's client over HTTP/JSON (its gRPC transport ignores REST endpoints)."""

        def make() -> Any:
            from google.cloud import logging as cloud_logging

            return cloud_logging.Client(
                project=self.project, credentials=self.credentials, _use_grpc=False, client_options=self._client_options()
            )

        return self._made("logging", make)

    def storage(self) -> Any:
        """google-cloud-storage's client (its endpoint: ``STORAGE_EMULATOR_HOST``, else Google's)."""

        def make() -> Any:
            from prefect_remote.software.gcsstore import storage_library

            return storage_library().Client(project=self.project, credentials=self.credentials)

        return self._made("storage", make)

    def resource_manager(self) -> Any:
        """Resource Manager's projects client (a project's number and IAM policy, for provisioning)."""
        return self._gapic("resourcemanager_v3", "ProjectsClient")

    def iam(self) -> RestApi:
        """IAM v1 over REST (service accounts and custom roles, for provisioning)."""
        return self._made("iam", lambda: RestApi(self, "iam.googleapis.com"))

    def cloud_quotas(self) -> RestApi:
        """Cloud Quotas v1 over REST (Cloud Run's regional quotas, for doctor)."""
        return self._made("cloudquotas", lambda: RestApi(self, "cloudquotas.googleapis.com"))

    def translated(self, action: str) -> Any:
        """:func:`translated` for this project."""
        return translated(action, project=self.options.project or os.environ.get(PROJECT_ENV))


class RestApi:
    """A Google API's v1 over REST, for those whose Python clients speak gRPC only (google-cloud-iam's
    ``iam_admin_v1``: service accounts, custom roles) or that have none here (Cloud Quotas), which
    neither a sandbox nor a REST-only network serves. ``service`` is its host
    (``iam.googleapis.com``). Errors are the clients' own (``google.api_core.exceptions``)."""

    def __init__(self, clients: GoogleClients, service: str) -> None:
        from google.auth.transport.requests import AuthorizedSession

        self.base = (clients.options.api_endpoint or f"https://{service}").rstrip("/")
        self.session = AuthorizedSession(clients.credentials)
        self.project = clients.project

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: str) -> dict[str, Any]:
        """One call of ``method`` on ``path`` under the project (``serviceAccounts``, ``roles/…``,
        ``locations/global/services/…``); the JSON it answers."""
        from google.api_core.exceptions import from_http_response

        response = self.session.request(
            method, f"{self.base}/v1/projects/{self.project}/{path}", json=body, params=params or None, timeout=60
        )
        if response.status_code >= 400:
            raise from_http_response(response)
        return response.json() if response.content else {}

    def list_all(self, path: str, field: str, **params: str) -> Iterator[dict[str, Any]]:
        """Every item of list method ``path`` (``serviceAccounts``), the ``field`` (``accounts``) of each
        of its pages, following ``nextPageToken``: Google answers a page at a time (IAM's service
        accounts: 20 by default, at most 100), never everything at once."""
        token = ""
        while True:
            answer = self.call("GET", path, **params, **({"pageToken": token} if token else {}))
            yield from answer.get(field) or ()
            token = answer.get("nextPageToken", "")
            if not token:
                return


@contextmanager
def translated(action: str, *, project: str | None = None) -> Iterator[None]:
    """Turns what Google's clients raise inside the block for a missing credential, role, project or
    API into a :class:`GCPError` that names the fix. ``action`` is the permission the call needs
    (``"run.jobs.create"``), or says what it does (``"create Cloud Run jobs"``): with the permission
    Google's message names, it picks the role and the API the error names. Other errors pass.

    >>> from google.api_core.exceptions import Forbidden
    >>> with translated("run.jobs.create", project="my-project"):                    # doctest: +ELLIPSIS
    ...     raise Forbidden("Permission 'run.jobs.create' denied on resource")
    Traceback (most recent call last):
    prefect_remote.providers.gcp.clients.GCPAccessDenied: Google Cloud refused run.jobs.create......roles/run.developer...
    """
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    where = f" in project {project}" if project else ""
    try:
        yield
    except auth.DefaultCredentialsError:
        raise GCPError(NO_CREDENTIALS) from None
    except (auth.RefreshError, api.Unauthenticated, api.Unauthorized) as error:
        raise GCPError(
            f"Google Cloud rejected the credentials in use ({error_message(error)}) on {action}{where}; log in again "
            "(`gcloud auth application-default login`) or check GOOGLE_APPLICATION_CREDENTIALS"
        ) from None
    except (api.PermissionDenied, api.Forbidden) as error:
        if service_disabled(error):
            raise _disabled(action, project, error) from None
        role = role_for(action, error_message(error))
        binding = f"`gcloud projects add-iam-policy-binding {project or 'PROJECT'} --member=MEMBER --role={role}`"
        raise GCPAccessDenied(
            f"Google Cloud refused {action}{where}: the identity in use lacks a permission ({error_message(error)}); "
            f"grant it {role} ({binding}; docs/providers/gcp.md lists the roles)"
        ) from None
    except api.NotFound as error:
        if project and _names_project(error_message(error), project):
            raise GCPError(
                f"Google Cloud project {project!r} not found (or not visible to the identity in use); check PREFECT_REMOTE_GCP_PROJECT"
            ) from None
        raise
    except api.GoogleAPICallError as error:
        if service_disabled(error):
            raise _disabled(action, project, error) from None
        raise


def permission_of(action: str, message: str = "") -> str:
    """The permission a refused call needed: the one Google's ``message`` names, else ``action`` if it
    is one, else the family its words name (``"create Cloud Run jobs"`` → ``"run."``).

    >>> permission_of("create Cloud Run jobs", "Permission 'run.jobs.create' denied on resource")
    'run.jobs.create'
    >>> permission_of("read Secret Manager secrets")
    'secretmanager.'
    """
    named = re.search(r"[Pp]ermission '?([a-zA-Z]+(?:\.[a-zA-Z]+)+)'?|does not have ([a-z]+(?:\.[a-zA-Z]+)+) access", message)
    if named:
        return named.group(1) or named.group(2)
    if re.fullmatch(r"[a-z]+(\.[a-zA-Z]+)+", action):
        return action
    words = action.lower()
    for word, family in (
        ("cloud run", "run."),
        ("firewall", "compute.firewalls."),
        ("compute", "compute."),
        ("secret", "secretmanager."),
        ("log", "logging."),
        ("storage", "storage."),
        ("bucket", "storage."),
        ("service account", "iam.serviceAccounts.actAs"),
    ):
        if word in words:
            return family
    return action


def role_for(action: str, message: str = "") -> str:
    """The role that grants ``action`` (or the permission Google's ``message`` names).

    >>> role_for("compute.instances.insert"), role_for("run.jobs.run", "Permission 'iam.serviceaccounts.actAs' denied")
    ('roles/compute.instanceAdmin.v1', 'roles/iam.serviceAccountUser')
    """
    permission = permission_of(action, message)
    if "actas" in permission.lower():  # launching as a service account needs to act as it
        permission = "iam.serviceAccounts.actAs"
    matches = [prefix for prefix in ROLES if permission.startswith(prefix)]
    return ROLES[max(matches, key=len)] if matches else "a role with this permission"


def error_message(error: Exception) -> str:
    """What Google said in ``error``, without the ``POST https://…:`` the REST clients put before it."""
    return re.sub(r"^[A-Z]+ \S+: ", "", str(getattr(error, "message", None) or error))


def service_disabled(error: Exception) -> bool:
    reason = getattr(error, "reason", None)
    text = error_message(error)
    return reason == "SERVICE_DISABLED" or "has not been used in project" in text or "it is disabled" in text


def _disabled(action: str, project: str | None, error: Exception) -> GCPError:
    service = (getattr(error, "metadata", None) or {}).get("service") or APIS.get(
        permission_of(action, error_message(error)).split(".")[0], "the API"
    )
    flag = f" --project={project}" if project else ""
    return GCPError(
        f"the {service} API is not enabled{f' in project {project}' if project else ''} ({action}); enable it with "
        f"`gcloud services enable {service}{flag}` (prefect-remote enables nothing by itself)"
    )


def _names_project(message: str, project: str) -> bool:
    """Whether a "not found" is about the project itself, not something in it.

    >>> _names_project("Project 'p-123' not found or permission denied.", "p-123")
    True
    >>> _names_project("The resource 'projects/p-123/zones/z/instances/vm-1' was not found", "p-123")
    False
    """
    return re.search(rf"projects?[/ ]'?{re.escape(project)}'?(?![/\w-])", message, re.IGNORECASE) is not None
