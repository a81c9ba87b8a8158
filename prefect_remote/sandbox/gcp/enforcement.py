"""The strict sandbox GCP's IAM: every call to the fakes is checked against the project's IAM
policies, as Google checks it (``SandboxGCP(enforce_iam=True)``).

:class:`IAMEnforcement` is the :class:`~prefect_remote.sandbox.gcp.api.Gate` of the sandbox's
endpoint. For each authenticated call it identifies the principal from the request's token (a
service-account key's JWT or token, a machine's metadata-server token), maps the REST method to the
permissions it needs and the resources they are checked on (:mod:`.permissions`; a method it does
not map is refused, naming it), and asks the :class:`~prefect_remote.sandbox.gcp.policy.Evaluator`.
A refusal is the API's own 403 (:func:`~prefect_remote.sandbox.gcp.permissions.refusal`); Compute
Engine's ``iam.serviceAccounts.actAs`` fails the insert's operation instead, as Google's does. Policy
changes made through the APIs (project, service accounts, buckets, secrets; custom roles) are recorded
when they succeed and take effect ``delay`` seconds later (Google: typically 2 minutes, up to 7 or
more). Cloud Storage goes through :class:`~prefect_remote.sandbox.gcp.storage_gate.StorageGate`, an
authorizing proxy in front of gcp-storage-emulator.

It also serves ``testIamPermissions`` from the same evaluator, for projects (Resource Manager v1 and
v3), service accounts and secrets (and buckets, in the storage gate), and the secrets' own IAM
policies (``getIamPolicy``/``setIamPolicy``), which the non-strict sandbox does not have.

Identities (:meth:`IAMEnforcement.grant_identities`): the launcher account whose key the sandbox
exports is granted exactly the roles the docs list for launching
(:data:`~prefect_remote.providers.gcp.grants.LAUNCHER_ROLES`, each where it says) and for provisioning
(:data:`~prefect_remote.providers.gcp.grants.PROVISIONER_ROLES`, on the project); the machines'
account what provisioning grants an account that pools share (:func:`~prefect_remote.providers.gcp.grants.machine_roles`
with ``pool=None``: every pool's secrets and VMs, since the sandbox's tests use many stores), with
the custom roles of :data:`~prefect_remote.providers.gcp.grants.MACHINE_CUSTOM_ROLES` under ids of their
own, ending in :data:`SANDBOX_ROLE_SUFFIX`); machines run as the account their launch names. Calls naming
another project are left to the fakes, which answer as Google does for a project that is not there.
The sandbox's own bookkeeping uses :data:`INTERNAL`, an identity no policy names and no one else gets
a token for (:meth:`IAMEnforcement.credentials`).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError, body
from prefect_remote.sandbox.gcp.common import Sandbox
from prefect_remote.sandbox.gcp.iam import check_condition
from prefect_remote.sandbox.gcp.permissions import (
    METHODS,
    PUBLIC_IMAGES,
    Call,
    Check,
    Scope,
    refusal,
    service_account_access_denied,
    unmapped,
)
from prefect_remote.sandbox.gcp.policy import Evaluator, PolicyStore, Resource

if TYPE_CHECKING:
    from google.oauth2.credentials import Credentials

    from prefect_remote.sandbox.gcp.storage_gate import StorageGate

INTERNAL = "sandbox:internal"  # the sandbox's own principal: allowed everything, named by no policy
# The custom roles of the sandbox's machines' account: grants.MACHINE_CUSTOM_ROLES, as provisioning makes its own,
# each under an id of its own so that provisioning and teardown tests see a fresh project.
SANDBOX_ROLE_SUFFIX = "Sandbox"
PERMISSION_FORMAT = re.compile(r"[a-zA-Z0-9]+(\.[a-zA-Z0-9]+){2,}")
# Where the docs' launcher roles are granted (grants.LAUNCHER_ROLES' second column).
LAUNCHER_PLACES = {"the project": "project", "the machines' service account": "service account", "the store's bucket": "bucket"}


class GovernedSandbox(Sandbox, Protocol):
    """What IAM needs of the sandbox GCP it governs (:class:`~prefect_remote.sandbox.gcp.sandbox.SandboxGCP`,
    which holds it: it takes the sandbox as this, never imports it)."""

    iam: Any  # service accounts, custom roles, the project's policy
    compute: Any  # Compute Engine, whose failed-insert operations it writes
    launcher_account: str
    machine_account: str


class IAMEnforcement:
    """IAM for ``sandbox`` (a :class:`~prefect_remote.sandbox.gcp.sandbox.SandboxGCP`, not started
    yet): it registers its routes and becomes the endpoint's gate. ``delay``: seconds until a policy
    change takes effect; ``clock``: epoch seconds."""

    def __init__(self, sandbox: GovernedSandbox, *, delay: float, clock: Callable[[], float] = time.time) -> None:
        self.sandbox = sandbox
        self.on = True  # off: every call passes (a test that needs IAM off)
        self.refusals: list[str] = []  # "principal lacks permission on resource", for a test to read
        self.store = PolicyStore(clock, delay)
        self.evaluator = Evaluator(self.store, project=sandbox.project, project_number=sandbox.project_number)
        self.scope = Scope(sandbox.project, sandbox.project_number, self._account_email)
        self.secret_policies: dict[str, dict[str, Any]] = {}  # secret id -> its IAM policy
        self.storage: StorageGate | None = None
        self._lock = threading.Lock()
        self._internal_token = sandbox.api.issue_token(INTERNAL, ttl=math.inf)["access_token"]
        public_images = {"bindings": [{"role": "roles/compute.imageUser", "members": ["allAuthenticatedUsers"]}]}
        self.store.set_policy(PUBLIC_IMAGES, public_images, initial=True)
        self._register_routes(sandbox.api)
        sandbox.api.gate = self

    # -- the sandbox's own identity -----------------------------------------------------------------
    def credentials(self) -> Credentials:
        """Google credentials of :data:`INTERNAL`, for the sandbox's bookkeeping and a test's checks
        of what happened (never exported)."""
        from google.oauth2.credentials import Credentials

        return Credentials(token=self._internal_token)

    def is_internal(self, token: str) -> bool:
        return token == self._internal_token

    # -- the gate ------------------------------------------------------------------------------------
    async def check(self, name: str, request: Request) -> Response | None:
        principal = request.state.principal
        if principal == INTERNAL or not self.on:
            return None
        method = METHODS.get(name)
        if method is None:
            raise unmapped(name)
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except ValueError:
            payload = {}
        if name.endswith(".setIamPolicy"):
            self.check_conditions((payload if isinstance(payload, dict) else {}).get("policy") or {})
        call = Call(request.path_params, payload if isinstance(payload, dict) else {}, request.query_params)
        # Another project: the fakes answer as Google does for a project that is not there (404 or 403).
        checks = [check for check in method(self.scope, call) if not self.scope.foreign(check.resource)]
        missing = [check for check in checks if not self.allows(principal, check)]
        if any(not check.deferred for check in missing):
            raise refusal(name, [check for check in missing if not check.deferred])
        if missing:  # Compute Engine: the insert's operation fails
            return self._failed_operation(name, call, missing[0], principal)
        return None

    def allows(self, principal: str, check: Check) -> bool:
        if principal == INTERNAL or not self.on or self.evaluator.allows(principal, check.permission, check.resource):
            return True
        with self._lock:
            self.refusals.append(f"{principal} lacks {check.permission} on {check.resource.name}")
        return False

    def done(self, name: str, request: Request) -> None:
        """Records what a successful call changed in IAM."""
        iam, params = self.sandbox.iam, request.path_params
        if name == "cloudresourcemanager.projects.setIamPolicy":
            self.store.set_policy("project", iam.project_policy())
        elif name in ("iam.serviceAccounts.setIamPolicy", "iam.serviceAccounts.delete"):
            email = self._account_email(params["account"]) or params["account"]
            with iam._lock:
                policy = copy.deepcopy(iam.account_policies.get(email))
            if policy is None:
                self.store.forget(f"serviceAccount:{email}")
            else:
                self.store.set_policy(f"serviceAccount:{email}", policy)
        elif name in ("iam.roles.create", "iam.roles.patch", "iam.roles.delete", "iam.roles.undelete"):
            role_id = params.get("role") or body(request).get("roleId", "")
            with iam._lock:
                self.store.set_role(role_id, iam.roles.get(role_id))
        elif name == "secretmanager.secrets.delete":
            with self._lock:
                self.secret_policies.pop(params["secret"], None)
            self.store.forget(f"secret:{params['secret']}")

    def _failed_operation(self, method: str, call: Call, check: Check, principal: str) -> Response:
        """Compute Engine's answer to an insert (or bulk insert: none of its instances is made) whose
        caller may not act as the instances' account: an operation that failed, as
        ``zoneOperations.wait`` then reports it."""
        compute = self.sandbox.compute
        kind = method.rsplit(".", 1)[-1]  # insert, bulkInsert
        zone, name = call.params["zone"], call.body.get("name", "") if kind == "insert" else "bulkInsert"
        email = check.resource.name.rsplit("/", 1)[-1]
        message = service_account_access_denied(email, principal.partition(":")[2])
        link = compute.project.link("zones", zone, "instances", name)
        error = (400, "BAD REQUEST", "SERVICE_ACCOUNT_ACCESS_DENIED", message)
        return JSONResponse(
            compute.operations.record(zone, kind, link, str(secrets.randbits(63)), user=principal.partition(":")[2], error=error)
        )

    def check_conditions(self, policy: dict[str, Any]) -> None:
        """Refuses, as Google does, a policy whose conditions IAM does not take (:func:`.iam.check_condition`)."""
        for binding in policy.get("bindings") or ():
            expression = (binding.get("condition") or {}).get("expression")
            if expression:
                check_condition(binding.get("role", ""), expression)

    def _account_email(self, account: str) -> str | None:
        if "@" in account:
            return account
        accounts = self.sandbox.iam.accounts
        return next((email for email, found in list(accounts.items()) if found.get("uniqueId") == account), None)

    # -- testIamPermissions and the secrets' IAM policies -------------------------------------------------
    def _register_routes(self, api: GoogleAPI) -> None:
        for version in ("v1", "v3"):
            api.route(f"/{version}/projects/{{project}}:testIamPermissions", ["POST"], "cloudresourcemanager.projects.testIamPermissions")(
                self._test_project
            )
        account = "/v1/projects/{project}/serviceAccounts/{account}"
        api.route(account + ":testIamPermissions", ["POST"], "iam.serviceAccounts.testIamPermissions")(self._test_account)
        secret = "/v1/projects/{project}/secrets/{secret}"
        api.route(secret + ":testIamPermissions", ["POST"], "secretmanager.secrets.testIamPermissions")(self._test_secret)
        api.route(secret + ":setIamPolicy", ["POST"], "secretmanager.secrets.setIamPolicy")(self._set_secret_policy)
        # GET …/secrets/{secret}:getIamPolicy would otherwise be secrets.get of a secret named "x:getIamPolicy"
        api.route(secret + ":getIamPolicy", ["GET"], "secretmanager.secrets.getIamPolicy", first=True)(self._get_secret_policy)

    def test_permissions(self, principal: str, permissions: Any, resource: Resource) -> dict[str, Any]:
        """``testIamPermissions``: which of ``permissions`` the caller holds on ``resource``."""
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise GoogleError(400, "Invalid JSON payload: permissions must be a list of strings.", "INVALID_ARGUMENT")
        for permission in permissions:
            if not PERMISSION_FORMAT.fullmatch(permission):
                raise GoogleError(400, f"Permission {permission} is not valid (wildcards are not allowed).", "INVALID_ARGUMENT")
        if principal == INTERNAL:
            return {"permissions": list(dict.fromkeys(permissions))} if permissions else {}
        held = self.evaluator.granted(principal, permissions, resource)
        return {"permissions": held} if held else {}

    def _test_project(self, request: Request, project: str) -> dict[str, Any]:
        return self.test_permissions(request.state.principal, body(request).get("permissions") or [], self.scope.project_resource(project))

    def _test_account(self, request: Request, project: str, account: str) -> dict[str, Any]:
        resource = self.scope.service_account(project, account)
        return self.test_permissions(request.state.principal, body(request).get("permissions") or [], resource)

    def _test_secret(self, request: Request, project: str, secret: str) -> dict[str, Any]:
        self._secret_exists(project, secret)
        resource = self.scope.secret(project, secret)
        return self.test_permissions(request.state.principal, body(request).get("permissions") or [], resource)

    def _secret_exists(self, project: str, secret: str) -> None:
        self.sandbox.secrets._held(project, secret, "secretmanager.secrets.get")  # 404 (or 403: another project) as the fake answers

    def _get_secret_policy(self, request: Request, project: str, secret: str) -> dict[str, Any]:
        self._secret_exists(project, secret)
        with self._lock:
            return copy.deepcopy(self.secret_policies.setdefault(secret, {"version": 1, "etag": _etag()}))

    def _set_secret_policy(self, request: Request, project: str, secret: str) -> dict[str, Any]:
        self._secret_exists(project, secret)
        wanted = body(request).get("policy") or {}
        with self._lock:
            current = self.secret_policies.setdefault(secret, {"version": 1, "etag": _etag()})
            self.secret_policies[secret] = self.sandbox.iam._replace(current, wanted)
            self.store.set_policy(f"secret:{secret}", self.secret_policies[secret])
            return copy.deepcopy(self.secret_policies[secret])

    # -- identities --------------------------------------------------------------------------------------
    def grant_identities(self, store_bucket: str) -> None:
        """Grants the launcher and the machines' account what the docs list (see the module), and
        records every policy as in force from the start."""
        from prefect_remote.providers.gcp import grants

        sandbox, iam = self.sandbox, self.sandbox.iam
        assert self.storage is not None, "the storage gate starts first"
        for email in sorted(sandbox.service_accounts):
            iam.add_account(email)
        launcher, machine = f"serviceAccount:{sandbox.launcher_account}", f"serviceAccount:{sandbox.machine_account}"
        for role, where, _why in grants.LAUNCHER_ROLES:
            place = LAUNCHER_PLACES.get(where)
            if place is None:
                raise ValueError(
                    f"grants.LAUNCHER_ROLES grants {role} on {where!r}, which the sandbox does not know: add it to LAUNCHER_PLACES"
                )
            if place == "project":
                iam.add_binding(launcher, role)
            elif place == "service account":
                iam.add_binding(launcher, role, account=sandbox.machine_account)
            else:
                self.storage.add_binding(store_bucket, launcher, role)
        for role in dict.fromkeys(grants.PROVISIONER_ROLES.values()):
            iam.add_binding(launcher, role)
        with iam._lock:
            for role_id, permissions in grants.MACHINE_CUSTOM_ROLES.items():
                iam.roles[role_id + SANDBOX_ROLE_SUFFIX] = {
                    "name": f"projects/{sandbox.project}/roles/{role_id}{SANDBOX_ROLE_SUFFIX}",
                    "title": f"prefect-remote machines ({role_id})",
                    "description": "What prefect-remote's machines call (granted as provisioning does)",
                    "includedPermissions": list(permissions),
                    "stage": "GA",
                    "etag": _etag(),
                }
        # The sandbox's own machines' account serves every store its tests use: granted on every pool's
        # secrets and VMs, as an account pools share is (a pool provisioned in it gets one of its own).
        machine_grants = grants.machine_roles(
            project=sandbox.project,
            project_number=sandbox.project_number,
            bucket=store_bucket,
            service_account=sandbox.machine_account,
            pool=None,
        )
        for where, bindings in machine_grants.items():
            for binding in bindings:
                if where == "project":
                    role = binding["role"]
                    if role.rpartition("/")[2] in grants.MACHINE_CUSTOM_ROLES:
                        role += SANDBOX_ROLE_SUFFIX
                    iam.add_binding(machine, role, binding.get("condition"))
                elif where == f"bucket {store_bucket}":
                    self.storage.add_binding(store_bucket, machine, binding["role"])
                elif where == f"service account {sandbox.machine_account}":
                    iam.add_binding(machine, binding["role"], account=sandbox.machine_account)
                else:
                    raise ValueError(f"grants.machine_roles() grants on {where!r}, which the sandbox does not know")
        self.store.set_policy("project", iam.project_policy(), initial=True)
        with iam._lock:
            policies = copy.deepcopy(iam.account_policies)
            roles = copy.deepcopy(iam.roles)
        for email, policy in policies.items():
            self.store.set_policy(f"serviceAccount:{email}", policy, initial=True)
        for role_id, role in roles.items():
            self.store.set_role(role_id, role, initial=True)
        self.storage.record_policies(initial=True)


def _etag() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()
