"""The sandbox GCP's IAM: small stateful fakes of IAM v1 (service accounts, their IAM policies, and
custom roles) and of Resource Manager v3's project (get, and its IAM policy), as ``--provision-infra`` and
``prefect-remote gcp teardown`` call them over REST.

How it follows Google, and where it simplifies:

* a service account is ``projects/<project>/serviceAccounts/<email>``; the path takes its email or
  ``-`` for the project; creating one that exists answers 409, and a created account joins
  ``sandbox.service_accounts`` (the emails the Cloud Run and Compute Engine fakes accept); past the
  project's quota (:data:`MAX_SERVICE_ACCOUNTS`, ``max_accounts`` for a test) creating one answers
  429 ``RESOURCE_EXHAUSTED`` "Maximum number of service accounts on project reached." with a
  ``RetryInfo`` of a day, as IAM does (the body users report; a deleted account frees its place at
  once here, which Google does not document);
* the project has, as every project with Compute Engine does, its default Compute Engine account
  (``<number>-compute@developer.gserviceaccount.com``) with ``roles/editor`` on the project (Google's
  automatic grant, unless an organization policy disables it): listings show it, and a job or VM that
  names no account runs as it;
* a deleted custom role is kept, ``deleted: true``, and its id cannot be taken again until it is
  undeleted (Google keeps it 7 days, then purges it);
* IAM policies carry an ``etag`` that changes with every write; a ``setIamPolicy`` with a stale
  one answers 409 ABORTED, as Google does on a concurrent change; a policy with a condition must
  be version 3;
* nothing is enforced here: any authenticated caller may do anything, unless the sandbox enforces
  the policies (:mod:`prefect_remote.sandbox.gcp.enforcement`).

>>> iam = IAMFake(sandbox)                                                       # doctest: +SKIP
>>> iam.project_policy()["bindings"]                                             # doctest: +SKIP
[{'role': 'roles/owner', 'members': ['user:sandbox@example.com']},
 {'role': 'roles/editor', 'members': ['serviceAccount:123…-compute@developer.gserviceaccount.com']}]
"""

from __future__ import annotations

import base64
import collections
import copy
import re
import secrets
import threading
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError, body
from prefect_remote.sandbox.gcp.common import Sandbox, default_compute_account, page
from prefect_remote.sandbox.gcp.policy import compile_condition, without_strings

ACCOUNT_ID = re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])")
ROLE_ID = re.compile(r"[a-zA-Z0-9_.]{3,64}")
# IAM's limits on conditions (IAM quotas and limits): logical operators in one expression, and
# conditional bindings of one role to one principal in one policy.
MAX_LOGIC_OPERATORS = 12
MAX_CONDITIONAL_BINDINGS = 20
# A project's default quota of service accounts (IAM quotas: "each project can have up to 100 service
# accounts"; more by a quota increase). Every account of the project counts, the default compute one too.
MAX_SERVICE_ACCOUNTS = 100
# How long IAM tells a caller past that quota to wait: a day and a second (its RetryInfo, as users report it).
QUOTA_RETRY_DELAY = "86401s"
OWNER = "user:sandbox@example.com"  # who the sandbox's project belongs to
DEFAULT_COMPUTE_NAME = "Compute Engine default service account"  # its displayName in every project


def _etag() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()


class IAMFake:
    """Service accounts, custom roles and IAM policies of the sandbox's one project."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._lock = threading.Lock()
        self.accounts: dict[str, dict[str, Any]] = {}  # email -> ServiceAccount
        self.account_policies: dict[str, dict[str, Any]] = {}  # email -> Policy
        self.roles: dict[str, dict[str, Any]] = {}  # role id -> Role
        self.max_accounts = MAX_SERVICE_ACCOUNTS  # the project's quota of service accounts (a test sets it)
        self._project_policy: dict[str, Any] = {"version": 1, "etag": _etag(), "bindings": [{"role": "roles/owner", "members": [OWNER]}]}
        # Every project has its default Compute Engine account, an Editor of the project (Google's automatic grant):
        # what a job or VM that names no account runs as.
        self.default_compute_account = default_compute_account(sandbox.project_number)
        self.add_account(self.default_compute_account, DEFAULT_COMPUTE_NAME)
        self.add_binding(f"serviceAccount:{self.default_compute_account}", "roles/editor")
        self._register_routes(sandbox.api)

    # -- for tests ---------------------------------------------------------------------------------
    def project_policy(self) -> dict[str, Any]:
        """A copy of the project's IAM policy as it is now."""
        with self._lock:
            return copy.deepcopy(self._project_policy)

    def grants_of(self, member: str) -> list[dict[str, Any]]:
        """The project's bindings that name ``member`` (``serviceAccount:…``), each as role (and condition)."""
        found = []
        for binding in self.project_policy()["bindings"]:
            if member in binding["members"]:
                found.append({key: value for key, value in binding.items() if key != "members"})
        return found

    def add_account(self, email: str, display_name: str = "") -> None:
        """Makes ``email`` (one of ``sandbox.service_accounts``, made before the sandbox started) an
        account this API knows."""
        with self._lock:
            if email not in self.accounts:
                unique = str(100000000000000000000 + secrets.randbelow(10**20))
                account_id = email.split("@", 1)[0]
                self.accounts[email] = {
                    "name": f"projects/{self.sandbox.project}/serviceAccounts/{email}",
                    "projectId": self.sandbox.project,
                    "uniqueId": unique,
                    "email": email,
                    "displayName": display_name or account_id,
                    "description": "",
                    "etag": _etag(),
                    "oauth2ClientId": unique,
                }

    def add_binding(self, member: str, role: str, condition: dict[str, Any] | None = None, *, account: str | None = None) -> None:
        """Grants ``role`` (under ``condition``) to ``member`` in the project's IAM policy, or in
        service account ``account``'s: what an admin granted before the sandbox started."""
        with self._lock:
            policy = self._project_policy if account is None else self.account_policies.setdefault(account, {"version": 1})
            bindings = policy.setdefault("bindings", [])
            binding = next((b for b in bindings if b["role"] == role and b.get("condition") == condition), None)
            if binding is None:
                binding = {"role": role, "members": [], **({"condition": dict(condition)} if condition else {})}
                bindings.append(binding)
            if member not in binding["members"]:
                binding["members"].append(member)
            policy["version"] = 3 if any(b.get("condition") for b in bindings) else policy.get("version", 1)
            policy["etag"] = _etag()

    # -- routes -----------------------------------------------------------------------------------
    def _register_routes(self, api: GoogleAPI) -> None:
        p = "/v1/projects/{project}"
        sa = p + "/serviceAccounts/{account}"
        role = p + "/roles/{role}"
        routes = [
            (sa + ":getIamPolicy", ["POST"], "iam.serviceAccounts.getIamPolicy", self.get_account_policy),
            (sa + ":setIamPolicy", ["POST"], "iam.serviceAccounts.setIamPolicy", self.set_account_policy),
            (p + "/serviceAccounts", ["POST"], "iam.serviceAccounts.create", self.create_account),
            (p + "/serviceAccounts", ["GET"], "iam.serviceAccounts.list", self.list_accounts),
            (sa, ["GET"], "iam.serviceAccounts.get", self.get_account),
            (sa, ["DELETE"], "iam.serviceAccounts.delete", self.delete_account),
            (role + ":undelete", ["POST"], "iam.roles.undelete", self.undelete_role),
            (p + "/roles", ["POST"], "iam.roles.create", self.create_role),
            (p + "/roles", ["GET"], "iam.roles.list", self.list_roles),
            (role, ["GET"], "iam.roles.get", self.get_role),
            (role, ["PATCH"], "iam.roles.patch", self.patch_role),
            (role, ["DELETE"], "iam.roles.delete", self.delete_role),
            ("/v3/projects/{project}:getIamPolicy", ["POST"], "cloudresourcemanager.projects.getIamPolicy", self.get_project_policy),
            ("/v3/projects/{project}:setIamPolicy", ["POST"], "cloudresourcemanager.projects.setIamPolicy", self.set_project_policy),
            ("/v3/projects/{project}", ["GET"], "cloudresourcemanager.projects.get", self.get_project),
        ]
        for path, methods, name, handler in routes:
            api.route(path, methods, name)(handler)

    def _check_project(self, project: str) -> None:
        if project not in (self.sandbox.project, self.sandbox.project_number, "-"):
            raise GoogleError(404, f"Project {project} not found or permission denied.")

    # -- service accounts -------------------------------------------------------------------------
    def _account(self, project: str, account: str) -> dict[str, Any]:
        self._check_project(project)
        found = self.accounts.get(account) or next((a for a in self.accounts.values() if a["uniqueId"] == account), None)
        if found is None:
            raise GoogleError(404, f"Unknown service account {account}", "NOT_FOUND")
        return found

    def create_account(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        wanted = body(request)
        account_id = wanted.get("accountId", "")
        if not ACCOUNT_ID.fullmatch(account_id):
            raise GoogleError(400, f"Invalid account id {account_id!r}: 6-30 lowercase letters, digits or hyphens, starting with a letter.")
        email = f"{account_id}@{self.sandbox.project}.iam.gserviceaccount.com"
        given = wanted.get("serviceAccount") or {}
        with self._lock:
            if email in self.accounts:
                raise GoogleError(
                    409, f"Service account {account_id} already exists within project projects/{self.sandbox.project}.", "ALREADY_EXISTS"
                )
            if len(self.accounts) >= self.max_accounts:
                retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": QUOTA_RETRY_DELAY}
                raise GoogleError(429, "Maximum number of service accounts on project reached.", "RESOURCE_EXHAUSTED", details=[retry])
            unique = str(100000000000000000000 + secrets.randbelow(10**20))
            self.accounts[email] = {
                "name": f"projects/{self.sandbox.project}/serviceAccounts/{email}",
                "projectId": self.sandbox.project,
                "uniqueId": unique,
                "email": email,
                "displayName": given.get("displayName", ""),
                "description": given.get("description", ""),
                "etag": _etag(),
                "oauth2ClientId": unique,
            }
            self._add_account(email)
            return dict(self.accounts[email])

    def _add_account(self, email: str) -> None:
        self.sandbox.service_accounts.add(email)

    def _remove_account(self, email: str) -> None:
        self.sandbox.service_accounts.discard(email)

    def list_accounts(self, request: Request, project: str) -> dict[str, Any]:
        """A page of the project's accounts: ``pageSize`` 20 by default, at most 100, as IAM's."""
        self._check_project(project)
        with self._lock:
            accounts = [dict(a) for a in self.accounts.values()]
        chunk, token = page(accounts, request.query_params, default=20, maximum=100)
        return {**({"accounts": chunk} if chunk else {}), **({"nextPageToken": token} if token else {})}

    def get_account(self, request: Request, project: str, account: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._account(project, account))

    def delete_account(self, request: Request, project: str, account: str) -> dict[str, Any]:
        with self._lock:
            email = self._account(project, account)["email"]
            del self.accounts[email]
            self.account_policies.pop(email, None)
            self._remove_account(email)
        return {}

    def get_account_policy(self, request: Request, project: str, account: str) -> dict[str, Any]:
        with self._lock:
            email = self._account(project, account)["email"]
            return copy.deepcopy(self.account_policies.setdefault(email, {"version": 1, "etag": _etag()}))

    def set_account_policy(self, request: Request, project: str, account: str) -> dict[str, Any]:
        with self._lock:
            email = self._account(project, account)["email"]
            current = self.account_policies.setdefault(email, {"version": 1, "etag": _etag()})
            self.account_policies[email] = self._replace(current, body(request).get("policy") or {})
            return copy.deepcopy(self.account_policies[email])

    # -- custom roles -----------------------------------------------------------------------------
    def _role(self, project: str, role: str) -> dict[str, Any]:
        self._check_project(project)
        if role not in self.roles:
            raise GoogleError(404, f"The role named projects/{self.sandbox.project}/roles/{role} was not found.", "NOT_FOUND")
        return self.roles[role]

    def create_role(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        wanted = body(request)
        role_id = wanted.get("roleId", "")
        if not ROLE_ID.fullmatch(role_id):
            raise GoogleError(400, f"The role id {role_id!r} is invalid: 3-64 letters, digits, '_' or '.'.")
        given = wanted.get("role") or {}
        permissions = given.get("includedPermissions") or []
        if not permissions:
            raise GoogleError(400, "A custom role needs at least one permission.")
        with self._lock:
            if role_id in self.roles:
                deleted = " and is deleted: undelete it" if self.roles[role_id].get("deleted") else ""
                raise GoogleError(
                    409, f"A role named {role_id} in projects/{self.sandbox.project} already exists{deleted}.", "ALREADY_EXISTS"
                )
            self.roles[role_id] = {
                "name": f"projects/{self.sandbox.project}/roles/{role_id}",
                "title": given.get("title", role_id),
                "description": given.get("description", ""),
                "includedPermissions": list(permissions),
                "stage": given.get("stage", "GA"),
                "etag": _etag(),
            }
            return dict(self.roles[role_id])

    def list_roles(self, request: Request, project: str) -> dict[str, Any]:
        """A page of the project's custom roles: ``pageSize`` 300 by default, at most 1,000, as IAM's."""
        self._check_project(project)
        show_deleted = request.query_params.get("showDeleted") in ("true", "True")
        with self._lock:
            roles = [dict(r) for r in self.roles.values() if show_deleted or not r.get("deleted")]
        chunk, token = page(roles, request.query_params, default=300, maximum=1000)
        return {**({"roles": chunk} if chunk else {}), **({"nextPageToken": token} if token else {})}

    def get_role(self, request: Request, project: str, role: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._role(project, role))

    def patch_role(self, request: Request, project: str, role: str) -> dict[str, Any]:
        wanted = body(request)
        mask = [field for field in request.query_params.get("updateMask", "").split(",") if field]
        with self._lock:
            found = self._role(project, role)
            if wanted.get("etag") and wanted["etag"] != found["etag"]:
                raise GoogleError(
                    409,
                    "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
                    "ABORTED",
                )
            for field in mask or [key for key in ("title", "description", "includedPermissions", "stage") if key in wanted]:
                found[field] = wanted.get(field)
            found["etag"] = _etag()
            return dict(found)

    def delete_role(self, request: Request, project: str, role: str) -> dict[str, Any]:
        with self._lock:
            found = self._role(project, role)
            found["deleted"] = True
            found["etag"] = _etag()
            return dict(found)

    def undelete_role(self, request: Request, project: str, role: str) -> dict[str, Any]:
        with self._lock:
            found = self._role(project, role)
            found.pop("deleted", None)
            found["etag"] = _etag()
            return dict(found)

    # -- the project and its IAM policy -------------------------------------------------------------
    def get_project(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        return {
            "name": f"projects/{self.sandbox.project_number}",
            "projectId": self.sandbox.project,
            "state": "ACTIVE",
            "displayName": self.sandbox.project,
            "parent": "organizations/0",
        }

    def get_project_policy(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        with self._lock:
            return copy.deepcopy(self._project_policy)

    def set_project_policy(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        with self._lock:
            self._project_policy = self._replace(self._project_policy, body(request).get("policy") or {})
            return copy.deepcopy(self._project_policy)

    @staticmethod
    def _replace(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        """``wanted`` as the new policy, after Google's checks: the etag read-modify-write guard and
        conditions only in version 3."""
        if wanted.get("etag") and wanted["etag"] != current.get("etag"):
            raise GoogleError(
                409, "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.", "ABORTED"
            )
        bindings = [b for b in wanted.get("bindings") or [] if b.get("members")]
        for binding in bindings:
            if not binding.get("role"):
                raise GoogleError(400, "A binding needs a role.")
            if binding.get("condition") and int(wanted.get("version", 1)) < 3:
                raise GoogleError(400, "Policies with conditions must be version 3 (set policy.version = 3).")
            if binding.get("condition") and not binding["condition"].get("expression"):
                raise GoogleError(400, "A condition needs an expression.")
            if binding.get("condition"):
                check_condition(binding["role"], binding["condition"]["expression"])
        conditional = collections.Counter((b["role"], member) for b in bindings if b.get("condition") for member in b["members"])
        crowded = next((pair for pair, count in conditional.items() if count > MAX_CONDITIONAL_BINDINGS), None)
        if crowded:
            raise GoogleError(
                400, f"{crowded[1]} has more than {MAX_CONDITIONAL_BINDINGS} conditional bindings of {crowded[0]} in one policy."
            )
        return {"version": int(wanted.get("version", 1)), "etag": _etag(), **({"bindings": bindings} if bindings else {})}


def check_condition(role: str, expression: str) -> None:
    """Refuses, as Google does (400 INVALID_ARGUMENT), a condition that is not CEL, calls a function IAM
    Conditions do not have (:func:`~prefect_remote.sandbox.gcp.policy.compile_condition`), or holds more
    logical operators than IAM's limit; with IAM enforced or not."""
    try:
        compile_condition(expression)
    except ValueError as error:
        raise GoogleError(400, f"Condition expression is invalid: {error}", "INVALID_ARGUMENT") from None
    if _logic_operators(expression) > MAX_LOGIC_OPERATORS:
        raise GoogleError(400, f"The condition of a binding of {role} has more than {MAX_LOGIC_OPERATORS} logical operators.")


def _logic_operators(expression: str) -> int:
    """How many of CEL's logical operators (``&&``, ``||``, ``!``) ``expression`` holds outside its strings.

    >>> _logic_operators('a.startsWith("x&&y") && !(b || c) && d != "e"')
    4
    """
    return len(re.findall(r"&&|\|\||!(?!=)", without_strings(expression)))
