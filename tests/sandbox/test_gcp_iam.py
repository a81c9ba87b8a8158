"""The strict sandbox GCP's IAM: the evaluator on a fake clock (roles, custom roles, CEL conditions,
resource-level bindings, propagation delay), the method map, and the enforcement through Google's own
clients against a sandbox with ``enforce_iam=True`` (allowed and refused calls per API, in each API's
error shape; ``testIamPermissions``).

What it cannot show: that Google answers exactly these bodies. Their wording comes from Google's
documentation and the error bodies users report (see ``prefect_remote/sandbox/gcp/permissions.py``).
"""

from __future__ import annotations

import datetime
import json
import secrets
import time

import httpx
import pytest
from google.api_core import exceptions

from prefect_remote.sandbox.gcp.permissions import METHODS, Call, Check, Scope, refusal
from prefect_remote.sandbox.gcp.policy import ANONYMOUS, Evaluator, PolicyStore, Resource, predefined_role

PROJECT, NUMBER = "p-1", "42"
ALICE, BOB = "serviceAccount:alice@p-1.iam.gserviceaccount.com", "user:bob@example.com"
MACHINE_CONDITION = (
    '!resource.type.startsWith("secretmanager.googleapis.com/") || resource.name.startsWith("projects/42/secrets/prefect-remote-")'
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def evaluator(delay: float = 0.0) -> tuple[Evaluator, PolicyStore, Clock]:
    clock = Clock()
    store = PolicyStore(clock, delay)
    return Evaluator(store, project=PROJECT, project_number=NUMBER), store, clock


def grant(store: PolicyStore, key: str, *bindings: tuple[str, str] | tuple[str, str, str], initial: bool = True) -> None:
    store.set_policy(
        key,
        {"bindings": [{"role": b[1], "members": [b[0]], **({"condition": {"expression": b[2]}} if len(b) > 2 else {})} for b in bindings]},
        initial=initial,
    )


SCOPE = Scope(PROJECT, NUMBER)
PROJECT_RESOURCE = SCOPE.project_resource(PROJECT)
JOBS = SCOPE.run(PROJECT, "us-central1")  # Cloud Run: no condition attributes
VM = SCOPE.compute(PROJECT, "zones/us-central1-a/instances/vm-1")
SUBNETWORK = SCOPE.compute(PROJECT, "regions/us-central1/subnetworks/default")


# -- the evaluator ----------------------------------------------------------------------------------------
def test_predefined_roles_grant_their_real_permission_lists_and_nothing_else():
    iam, store, _ = evaluator()
    grant(store, "project", (ALICE, "roles/run.developer"), (ALICE, "roles/logging.logWriter"))
    assert len(predefined_role("roles/run.developer")) == 89  # the copy of 2026-08-22 (roles/SOURCE.md)
    assert iam.allows(ALICE, "run.jobs.create", JOBS)
    assert not iam.allows(ALICE, "iam.serviceAccounts.actAs", JOBS)  # run.developer cannot deploy as an account
    assert iam.allows(ALICE, "logging.logEntries.create", PROJECT_RESOURCE)
    assert not iam.allows(ALICE, "logging.logEntries.list", PROJECT_RESOURCE)  # logWriter writes only
    assert not iam.allows(BOB, "run.jobs.create", JOBS)  # not a member
    assert not iam.allows(ALICE, "run.jobs.create", SCOPE.run("someone-else", "us-central1"))  # another project: no policy here


def test_a_predefined_role_the_sandbox_has_no_copy_of_grants_nothing(caplog):
    iam, store, _ = evaluator()
    grant(store, "project", (ALICE, "roles/compute.admin"))
    assert predefined_role("roles/compute.admin") is None
    assert not iam.allows(ALICE, "compute.instances.create", VM)
    assert "roles/compute.admin" in caplog.text  # said once, in the log


def test_custom_roles_grant_their_permissions_until_deleted_or_disabled():
    iam, store, _ = evaluator()
    grant(store, "project", (ALICE, f"projects/{PROJECT}/roles/starter"), (BOB, f"projects/{NUMBER}/roles/starter"))
    store.set_role("starter", {"includedPermissions": ["run.jobs.run"], "stage": "GA"}, initial=True)
    job = SCOPE.run(PROJECT, "us-central1", "jobs", "j")
    assert iam.allows(ALICE, "run.jobs.run", job) and iam.allows(BOB, "run.jobs.run", job)  # named by project id or number
    assert not iam.allows(ALICE, "run.jobs.delete", job)
    store.set_role("starter", {"includedPermissions": ["run.jobs.run"], "stage": "DISABLED"})
    assert not iam.allows(ALICE, "run.jobs.run", job)
    store.set_role("starter", {"includedPermissions": ["run.jobs.run"], "deleted": True})
    assert not iam.allows(ALICE, "run.jobs.run", job)
    grant(store, "project", (ALICE, "projects/other/roles/starter"))
    store.set_role("starter", {"includedPermissions": ["run.jobs.run"]})
    assert not iam.allows(ALICE, "run.jobs.run", job)  # another project's role of the same id


def test_grants_and_revocations_take_effect_after_the_delay():
    iam, store, clock = evaluator(delay=120)
    grant(store, "project", (BOB, "roles/run.developer"))  # initial: in force from the start
    assert iam.allows(BOB, "run.jobs.get", JOBS)
    grant(store, "project", (BOB, "roles/run.developer"), (ALICE, "roles/run.developer"), initial=False)
    clock.now += 119
    assert not iam.allows(ALICE, "run.jobs.get", JOBS)
    clock.now += 1
    assert iam.allows(ALICE, "run.jobs.get", JOBS)
    grant(store, "project", (ALICE, "roles/run.developer"), initial=False)  # Bob removed
    clock.now += 60
    assert iam.allows(BOB, "run.jobs.get", JOBS)  # still, for a while
    clock.now += 60
    assert not iam.allows(BOB, "run.jobs.get", JOBS) and iam.allows(ALICE, "run.jobs.get", JOBS)
    store.set_role("r", {"includedPermissions": ["run.jobs.setIamPolicy"]})  # a new custom role propagates too
    grant(store, "project", (ALICE, f"projects/{PROJECT}/roles/r"), initial=False)
    assert not iam.allows(ALICE, "run.jobs.setIamPolicy", JOBS)  # run.developer's lacks it
    clock.now += 120
    assert iam.allows(ALICE, "run.jobs.setIamPolicy", JOBS)
    store.forget("project")  # a deleted resource's policy goes at once
    assert not iam.allows(ALICE, "run.jobs.get", JOBS)


def test_the_machines_condition_keeps_secrets_to_prefect_remote_ones_and_never_grants_where_attributes_are_missing():
    iam, store, _ = evaluator()
    grant(store, "project", (ALICE, f"projects/{PROJECT}/roles/machine", MACHINE_CONDITION))
    permissions = ["secretmanager.versions.add", "compute.instances.create", "compute.subnetworks.use", "run.jobs.list"]
    permissions += ["secretmanager.secrets.create"]
    store.set_role("machine", {"includedPermissions": permissions}, initial=True)
    ours, theirs = SCOPE.secret(PROJECT, "prefect-remote-l-1"), SCOPE.secret(PROJECT, "db-password")
    assert ours.attributes["name"] == "projects/42/secrets/prefect-remote-l-1"  # conditions see the project number
    assert iam.allows(ALICE, "secretmanager.versions.add", ours)
    assert not iam.allows(ALICE, "secretmanager.versions.add", theirs)
    assert iam.allows(ALICE, "secretmanager.secrets.create", PROJECT_RESOURCE)  # checked on the project: its type is not a secret's
    assert iam.allows(ALICE, "compute.instances.create", VM)  # an instance has a type
    # "If part of a condition uses an attribute that isn't available for a resource, then that part of the
    # condition is never interpreted as granting access" (IAM's attribute reference): a subnetwork has no
    # type, a Cloud Run location nothing.
    assert not iam.allows(ALICE, "compute.subnetworks.use", SUBNETWORK)
    assert not iam.allows(ALICE, "run.jobs.list", JOBS)


def test_conditions_on_service_time_and_tags():
    iam, store, clock = evaluator()
    deadline = datetime.datetime.fromtimestamp(clock.now + 60, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    grant(
        store,
        "project",
        (ALICE, "roles/run.developer", f'request.time < timestamp("{deadline}")'),
        (BOB, "roles/compute.instanceAdmin.v1", 'resource.service == "compute.googleapis.com" && resource.matchTag("p-1/env", "dev")'),
        (BOB, "roles/logging.viewer", "resource.hasTagKey('p-1/team') || true"),  # an error part absorbed by || true
    )
    assert iam.allows(ALICE, "run.jobs.get", JOBS)
    clock.now += 61
    assert not iam.allows(ALICE, "run.jobs.get", JOBS)  # expired
    assert not iam.allows(BOB, "compute.instances.get", VM)
    store.attach_tag("project", "p-1/env", "dev")  # tags are inherited from the project
    assert iam.allows(BOB, "compute.instances.get", VM) and iam.allows(BOB, "compute.subnetworks.get", SUBNETWORK)
    store.attach_tag("project", "p-1/env", "prod")
    assert not iam.allows(BOB, "compute.instances.get", VM)
    assert iam.allows(BOB, "logging.logEntries.list", PROJECT_RESOURCE)
    with pytest.raises(ValueError, match="invalid condition"):
        iam.parse("resource.name.startsWith(")


def test_extract_reads_a_part_of_a_name_as_iams_conditions_do():
    iam, store, _ = evaluator()
    pool_vms = 'resource.name.extract("/instances/{name}").startsWith("pr-a-c0-")'
    one_version = 'resource.name.extract("/versions/{version}") == "1"'
    grant(store, "project", (ALICE, "roles/compute.instanceAdmin.v1", pool_vms), (BOB, "roles/secretmanager.secretAccessor", one_version))
    assert iam.allows(ALICE, "compute.instances.delete", SCOPE.compute(PROJECT, "zones/us-central1-a/instances/pr-a-c0-1234"))
    assert not iam.allows(ALICE, "compute.instances.delete", SCOPE.compute(PROJECT, "zones/us-central1-a/instances/pr-a-c1-1234"))
    assert not iam.allows(ALICE, "compute.instances.delete", SCOPE.compute(PROJECT, "zones/us-central1-a/instances/vm-pr-a-c0-1"))
    assert iam.allows(BOB, "secretmanager.versions.access", SCOPE.secret(PROJECT, "one", "1"))
    assert not iam.allows(BOB, "secretmanager.versions.access", SCOPE.secret(PROJECT, "one", "latest"))
    for template in ("/instances/", "/a/{x}/{y}"):  # refused when the policy is set, as Google does, not at a check
        with pytest.raises(ValueError, match=r"invalid condition expression .*a template holds one \{placeholder\}"):
            iam.parse(f'resource.name.extract("{template}") == "1"')


def test_matches_is_not_in_iams_conditions_and_is_refused_when_the_policy_is_set(strict, who):
    """CEL has RE2's matches(); IAM Conditions do not: their attribute reference lists startsWith(),
    endsWith(), extract(), == and != for resource.name, and Google's condition linter refuses matches().
    A policy naming it is refused at setIamPolicy (400 INVALID_ARGUMENT), not accepted and then never
    granting; the word in a string is no call."""
    iam, _, _ = evaluator()
    for expression in ('resource.name.matches("^projects/42/secrets/prefect-remote-.*")', 'matches(resource.name, "x")'):
        with pytest.raises(ValueError, match=r"matches\(\) is not supported in IAM Conditions"):
            iam.parse(expression)
    iam.parse('resource.name.endsWith("matches(x)")')
    expression = f'resource.name.matches("^projects/{strict.project_number}/secrets/prefect-remote-.*")'
    refused_when_set(strict, who, "regex", expression, r"Condition expression is invalid: .*matches\(\) is not supported")


def refused_when_set(strict, who, account: str, expression: str, message: str) -> None:
    """The launcher's setIamPolicy of a project binding conditioned on ``expression`` fails with 400
    ``message``, and grants the binding's member nothing."""
    projects = who.client("projects", who.launcher())
    resource, member = f"projects/{strict.project}", f"serviceAccount:{account}@{strict.project}.iam.gserviceaccount.com"
    policy = projects.get_iam_policy(request={"resource": resource, "options": {"requested_policy_version": 3}})
    policy.version = 3
    policy.bindings.add(role="roles/secretmanager.secretAccessor", members=[member], condition={"title": account, "expression": expression})
    with pytest.raises(exceptions.BadRequest, match=message):
        projects.set_iam_policy(request={"resource": resource, "policy": policy})
    assert strict.iam.grants_of(member) == []


def test_only_the_functions_of_iams_attribute_reference_are_taken_when_the_policy_is_set(strict, who):
    """cel-python takes all of CEL's standard library; IAM Conditions take only the functions their
    attribute reference lists (startsWith, endsWith, extract, the tag and date/time functions…).
    contains(), size(), has() and the macros are refused at setIamPolicy (400 INVALID_ARGUMENT), with
    IAM enforced or not, rather than accepted and then evaluated as Google never would."""
    from prefect_remote.sandbox.gcp.api import GoogleError

    iam, _, _ = evaluator()
    refused = [
        'resource.name.contains("/secrets/prefect-remote-")',
        "size(resource.name) > 3",
        "has(resource.name)",
        '["a"].exists(x, resource.name.endsWith(x))',
        'string(request.time) != ""',
    ]
    for expression in refused:
        with pytest.raises(ValueError, match=r"\(\) is not supported in IAM Conditions"):
            iam.parse(expression)
        with pytest.raises(GoogleError, match="Condition expression is invalid") as raised:  # the fake IAM itself, enforcement aside
            strict.iam._replace(
                {}, {"version": 3, "bindings": [{"role": "roles/viewer", "members": [ALICE], "condition": {"expression": expression}}]}
            )
        assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")
    taken = [
        MACHINE_CONDITION,
        'resource.name.extract("/secrets/{name}/") == "x" && request.time < timestamp("2030-01-01T00:00:00Z")',
        'request.time.getHours("Europe/Berlin") >= 9 && resource.matchTag("42/env", "prod")',
        'request.time < timestamp("2030-01-01T00:00:00Z") + duration("3600s")',
    ]
    for expression in taken:
        iam.parse(expression)
    expression = f'resource.name.contains("projects/{strict.project_number}/secrets/prefect-remote-")'
    refused_when_set(strict, who, "contains", expression, r"Condition expression is invalid: .*contains\(\) is not supported")


def test_resource_level_bindings_apply_to_the_resource_and_what_it_holds():
    iam, store, _ = evaluator()
    grant(store, "bucket:store", (ALICE, "roles/storage.objectUser"))
    grant(store, "serviceAccount:m@p-1.iam.gserviceaccount.com", (ALICE, "roles/iam.serviceAccountUser"))
    grant(store, "secret:one", (BOB, "roles/secretmanager.secretAccessor"))
    assert iam.allows(ALICE, "storage.objects.get", SCOPE.object("store", "a/b.json"))
    assert not iam.allows(ALICE, "storage.objects.get", SCOPE.object("elsewhere", "a/b.json"))
    assert not iam.allows(ALICE, "storage.buckets.get", SCOPE.bucket("store"))  # objectUser has no bucket permission
    assert iam.allows(ALICE, "iam.serviceAccounts.actAs", SCOPE.service_account("-", "m@p-1.iam.gserviceaccount.com"))
    assert not iam.allows(ALICE, "iam.serviceAccounts.actAs", SCOPE.service_account("-", "other@p-1.iam.gserviceaccount.com"))
    assert iam.allows(BOB, "secretmanager.versions.access", SCOPE.secret(PROJECT, "one", "latest"))
    assert not iam.allows(BOB, "secretmanager.versions.access", SCOPE.secret(PROJECT, "two", "latest"))


def test_members_public_authenticated_convenience_and_case():
    iam, store, _ = evaluator()
    grant(store, "project", (BOB, "roles/owner"))
    store.set_policy(
        "bucket:site",
        {
            "bindings": [
                {"role": "roles/storage.objectUser", "members": ["allUsers"]},
                {"role": "roles/storage.objectAdmin", "members": ["allAuthenticatedUsers"]},
                {"role": "roles/storage.admin", "members": ["projectOwner:p-1"]},
            ]
        },
        initial=True,
    )
    page = SCOPE.object("site", "index.html")
    assert iam.allows(ANONYMOUS, "storage.objects.get", page)
    assert not iam.allows(ANONYMOUS, "storage.objects.setIamPolicy", page) and iam.allows(ALICE, "storage.objects.setIamPolicy", page)
    assert iam.allows("user:BOB@example.com", "storage.buckets.delete", SCOPE.bucket("site"))  # emails compare case-insensitively
    assert not iam.allows(ALICE, "storage.buckets.delete", SCOPE.bucket("site"))


def test_granted_answers_test_iam_permissions_in_the_order_asked():
    iam, store, _ = evaluator()
    grant(store, "project", (ALICE, "roles/logging.viewer"), (ALICE, "roles/logging.logWriter"))
    asked = ["logging.logEntries.create", "run.jobs.create", "logging.logEntries.list", "logging.logEntries.create"]
    assert iam.granted(ALICE, asked, PROJECT_RESOURCE) == ["logging.logEntries.create", "logging.logEntries.list"]


# -- the method map and Google's refusals ------------------------------------------------------------------------
def test_every_authenticated_method_the_fakes_serve_is_mapped():
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP

    served = {route.name for route in SandboxGCP(enforce_iam=True).api._routes}
    unauthenticated = {"oauth2.token", "metadata.get", "metadata.ping"}
    assert served - unauthenticated - set(METHODS) == set()


def test_an_instance_insert_needs_a_permission_per_property_it_sets():
    spec = {
        "name": "vm-1",
        "disks": [{"boot": True, "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}],
        "networkInterfaces": [{"network": "global/networks/default", "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}],
        "metadata": {"items": [{"key": "startup-script", "value": "true"}]},
        "labels": {"a": "b"},
        "tags": {"items": ["t"]},
        "serviceAccounts": [{"email": "m@p-1.iam.gserviceaccount.com"}],
    }
    checks = METHODS["compute.instances.insert"](SCOPE, Call({"project": PROJECT, "zone": "us-central1-a"}, spec))
    assert [(c.permission, c.resource.name, c.deferred) for c in checks] == [
        ("compute.instances.create", "projects/p-1/zones/us-central1-a/instances/vm-1", False),
        ("compute.disks.create", "projects/p-1/zones/us-central1-a/disks/vm-1", False),
        ("compute.images.useReadOnly", "projects/debian-cloud/global/images/family/debian-12", False),
        ("compute.subnetworks.use", "projects/p-1/regions/us-central1/subnetworks/default", False),
        ("compute.subnetworks.useExternalIp", "projects/p-1/regions/us-central1/subnetworks/default", False),
        ("compute.instances.setMetadata", "projects/p-1/zones/us-central1-a/instances/vm-1", False),
        ("compute.instances.setLabels", "projects/p-1/zones/us-central1-a/instances/vm-1", False),
        ("compute.instances.setTags", "projects/p-1/zones/us-central1-a/instances/vm-1", False),
        ("compute.instances.setServiceAccount", "projects/p-1/zones/us-central1-a/instances/vm-1", False),
        ("iam.serviceAccounts.actAs", "projects/p-1/serviceAccounts/m@p-1.iam.gserviceaccount.com", True),  # by the operation
    ]


def test_a_bulk_insert_needs_what_an_insert_of_each_of_its_instances_needs():
    properties = {
        "machineType": "e2-small",
        "disks": [{"boot": True, "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}],
        "networkInterfaces": [{"network": "global/networks/default"}],
        "serviceAccounts": [{"email": "m@p-1.iam.gserviceaccount.com"}],
    }
    spec = {"count": 3, "perInstanceProperties": {"vm-1": {}, "vm-2": {}}, "namePattern": "vm-##", "instanceProperties": properties}
    checks = METHODS["compute.instances.bulkInsert"](SCOPE, Call({"project": PROJECT, "zone": "us-central1-a"}, spec))
    created = [c.resource.name for c in checks if c.permission == "compute.instances.create"]
    assert created == [f"projects/p-1/zones/us-central1-a/instances/{name}" for name in ("vm-1", "vm-2", "vm-##")]
    assert ("compute.disks.create", "projects/p-1/zones/us-central1-a/disks/vm-2") in [(c.permission, c.resource.name) for c in checks]
    assert ("iam.serviceAccounts.actAs", True) in [(c.permission, c.deferred) for c in checks]  # by the operation, as an insert's


def test_refusals_are_worded_as_each_api_words_them():
    def body(method: str, permission: str, resource: Resource) -> dict:
        return json.loads(refusal(method, [Check(permission, resource)]).response().body)["error"]

    run = body("run.jobs.get", "run.jobs.get", SCOPE.run(PROJECT, "l", "jobs", "j"))
    assert run["message"] == "Permission 'run.jobs.get' denied on resource 'projects/p-1/locations/l/jobs/j' (or resource may not exist)."
    assert run["status"] == "PERMISSION_DENIED" and run["details"][0]["reason"] == "IAM_PERMISSION_DENIED"
    secret = body("secretmanager.versions.access", "secretmanager.versions.access", SCOPE.secret(PROJECT, "s", "latest"))
    assert secret["message"].startswith(
        "Permission 'secretmanager.versions.access' denied for resource 'projects/p-1/secrets/s/versions/latest'"
    )
    logs = body("logging.entries.list", "logging.logEntries.list", PROJECT_RESOURCE)
    assert logs["message"] == "Permission 'logging.logEntries.list' denied on resource (or it may not exist)."
    assert logs["details"][0]["domain"] == "iam.googleapis.com"
    compute = body("compute.instances.get", "compute.instances.get", VM)
    assert compute["message"] == "Required 'compute.instances.get' permission for 'projects/p-1/zones/us-central1-a/instances/vm-1'"
    assert compute["errors"][0]["reason"] == "forbidden"
    assert body("cloudresourcemanager.projects.setIamPolicy", "resourcemanager.projects.setIamPolicy", PROJECT_RESOURCE)["message"] == (
        "Policy update access denied."
    )
    act_as = body("run.jobs.create", "iam.serviceAccounts.actAs", SCOPE.service_account("-", "m@p-1.iam.gserviceaccount.com"))
    assert (
        act_as["message"]
        == "Permission 'iam.serviceaccounts.actAs' denied on service account m@p-1.iam.gserviceaccount.com (or it may not exist)."
    )


# -- through Google's clients, against a strict sandbox ---------------------------------------------------------
DELAY = 1.5


def test_object_conditions_read_an_objects_name_and_listing_is_checked_on_the_bucket():
    """As Cloud Storage names them in conditions: an object ``projects/_/buckets/B/objects/NAME``, the
    bucket (where ``storage.objects.list`` is checked) ``projects/_/buckets/B``: a prefix condition on
    object names grants no listing; naming the bucket itself does."""
    iam, store, _ = evaluator()
    folder = 'resource.name.startsWith("projects/_/buckets/b/objects/store/p/")'
    grant(
        store,
        "bucket:b",
        (ALICE, "roles/storage.objectViewer", folder),
        (BOB, "roles/storage.objectViewer", 'resource.name == "projects/_/buckets/b"'),
    )
    assert iam.allows(ALICE, "storage.objects.get", SCOPE.object("b", "store/p/envs/e.json"))
    assert not iam.allows(ALICE, "storage.objects.get", SCOPE.object("b", "store/q/envs/e.json"))
    assert not iam.allows(ALICE, "storage.objects.get", SCOPE.object("b", "store/p"))  # the folder's name without its slash
    assert not iam.allows(ALICE, "storage.objects.list", SCOPE.bucket("b"))
    assert iam.allows(BOB, "storage.objects.list", SCOPE.bucket("b"))
    assert not iam.allows(BOB, "storage.objects.get", SCOPE.object("b", "store/p/envs/e.json"))


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A sandbox GCP with IAM enforced, grants taking effect after DELAY seconds, and one method the
    permission map does not know."""
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP

    sandbox = SandboxGCP(home=tmp_path_factory.mktemp("strict-gcp"), enforce_iam=True, iam_delay=DELAY)
    sandbox.api.route("/v1/projects/{project}/gadgets", ["GET"], "gadgets.things.list")(lambda request, project: {"gadgets": []})
    with sandbox:
        yield sandbox


class Identities:
    """Credentials and clients of the strict sandbox's identities."""

    def __init__(self, gcp) -> None:
        self.gcp = gcp
        self.options = {"api_endpoint": gcp.url}

    def launcher(self):
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_file(
            str(self.gcp.key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )

    def of(self, email: str):
        """``email``'s credentials as a machine running as it gets them: its metadata server's token."""
        from google.oauth2.credentials import Credentials

        key = "iam-test-" + secrets.token_hex(4)
        self.gcp.metadata.register(key, lambda: {"instance/name": key}, email)
        try:
            answer = httpx.get(
                f"{self.gcp.url}/{key}/computeMetadata/v1/instance/service-accounts/default/token", headers={"Metadata-Flavor": "Google"}
            )
        finally:
            self.gcp.metadata.forget(key)
        return Credentials(answer.json()["access_token"])

    def machine(self):
        return self.of(self.gcp.machine_account)

    def client(self, kind: str, credentials):
        from google.cloud import compute_v1, logging, resourcemanager_v3, run_v2, secretmanager, storage

        if kind == "storage":
            return storage.Client(project=self.gcp.project, credentials=credentials, client_options={"api_endpoint": self.gcp.storage_url})
        if kind == "logging":
            return logging.Client(project=self.gcp.project, credentials=credentials, _use_grpc=False, client_options=self.options)
        factory = {
            "jobs": run_v2.JobsClient,
            "secrets": secretmanager.SecretManagerServiceClient,
            "projects": resourcemanager_v3.ProjectsClient,
            "instances": compute_v1.InstancesClient,
            "machine_types": compute_v1.MachineTypesClient,
            "firewalls": compute_v1.FirewallsClient,
        }[kind]
        return factory(transport="rest", credentials=credentials, client_options=self.options)

    @staticmethod
    def bearer(credentials) -> dict[str, str]:
        from google.auth.transport.requests import Request

        if not credentials.token:
            credentials.refresh(Request())
        return {"Authorization": f"Bearer {credentials.token}"}

    def iam(self, credentials, method: str, path: str, payload: dict | None = None) -> httpx.Response:
        """IAM v1 over REST, as the product calls it (google-cloud-iam has no REST transport)."""
        return httpx.request(method, f"{self.gcp.url}/v1/{path}", json=payload, headers=self.bearer(credentials), timeout=30)


@pytest.fixture(scope="module")
def who(strict):
    return Identities(strict)


def _new_secret(client, project: str, secret_id: str) -> str:
    secret = client.create_secret(parent=f"projects/{project}", secret_id=secret_id, secret={"replication": {"automatic": {}}})
    client.add_secret_version(parent=secret.name, payload={"data": b"value"})
    return secret.name


def test_the_launcher_holds_what_the_docs_list(strict, who):
    launcher = who.launcher()
    parent = f"projects/{strict.project}/locations/{strict.region}"
    assert list(who.client("jobs", launcher).list_jobs(parent=parent)) == []
    secrets_client = who.client("secrets", launcher)
    _new_secret(secrets_client, strict.project, "prefect-remote-launch-1")
    assert any(s.name.endswith("/prefect-remote-launch-1") for s in secrets_client.list_secrets(parent=f"projects/{strict.project}"))
    types = who.client("machine_types", launcher).list(project=strict.project, zone=strict.zones[0])
    assert any(t.name == "e2-small" for t in types)
    list(who.client("logging", launcher).list_entries(resource_names=[f"projects/{strict.project}"]))
    bucket = who.client("storage", launcher).bucket("prefect-remote-sandbox")
    bucket.blob("store/envs/a.json").upload_from_string("{}")
    assert [b.name for b in bucket.list_blobs(prefix="store/envs/")] == ["store/envs/a.json"]
    assert who.client("projects", launcher).get_project(name=f"projects/{strict.project}").name == f"projects/{strict.project_number}"
    assert who.iam(launcher, "GET", f"projects/{strict.project}/serviceAccounts/{strict.machine_account}").status_code == 200


def test_refusals_per_api_in_googles_shape(strict, who):
    machine = who.machine()
    parent = f"projects/{strict.project}/locations/{strict.region}"
    with pytest.raises(exceptions.Forbidden, match=r"Permission 'run.jobs.create' denied on resource") as refused:
        who.client("jobs", machine).create_job(
            parent=parent, job_id="j-1", job={"template": {"template": {"containers": [{"image": "x"}]}}}
        )
    assert refused.value.reason == "IAM_PERMISSION_DENIED"
    firewall = {"name": "fw-1", "network": "global/networks/default", "allowed": [{"I_p_protocol": "tcp", "ports": ["1"]}]}
    with pytest.raises(exceptions.Forbidden, match=r"Required 'compute.firewalls.create' permission for") as refused:
        who.client("firewalls", machine).insert(project=strict.project, firewall_resource=firewall)
    assert [e["message"] for e in refused.value.errors][1].startswith("Required 'compute.networks.updatePolicy'")  # every missing one
    launcher_secrets = who.client("secrets", who.launcher())
    _new_secret(launcher_secrets, strict.project, "db-password")
    _new_secret(launcher_secrets, strict.project, "prefect-remote-launch-2")
    machine_secrets = who.client("secrets", machine)
    assert machine_secrets.access_secret_version(name=f"projects/{strict.project}/secrets/prefect-remote-launch-2/versions/latest")
    with pytest.raises(exceptions.Forbidden, match=r"Permission 'secretmanager.versions.access' denied for resource 'projects/"):
        machine_secrets.access_secret_version(name=f"projects/{strict.project}/secrets/db-password/versions/latest")
    with pytest.raises(exceptions.Forbidden, match=r"Permission 'logging.logEntries.list' denied on resource \(or it may not exist\)"):
        list(who.client("logging", machine).list_entries(resource_names=[f"projects/{strict.project}"]))
    with pytest.raises(exceptions.Forbidden, match="Policy update access denied"):
        who.client("projects", machine).set_iam_policy(request={"resource": f"projects/{strict.project}", "policy": {"bindings": []}})
    answer = who.iam(machine, "POST", f"projects/{strict.project}/roles", {"roleId": "x", "role": {"includedPermissions": ["a.b.c"]}})
    assert answer.status_code == 403 and answer.json()["error"]["details"][0]["metadata"] == {"permission": "iam.roles.create"}
    storage = who.client("storage", machine)
    storage.bucket("prefect-remote-sandbox").blob("store/machines/m.json").upload_from_string("{}")  # objectUser on the store
    with pytest.raises(exceptions.Forbidden, match=r"does not have storage.buckets.get access to the Google Cloud Storage bucket"):
        storage.get_bucket("prefect-remote-sandbox")


def test_the_anonymous_caller_and_unmapped_methods_are_refused_and_other_projects_are_not_there(strict, who):
    answer = httpx.get(f"{strict.storage_url}/storage/v1/b/prefect-remote-sandbox/o")
    assert answer.status_code == 401
    assert answer.json()["error"]["message"].startswith("Anonymous caller does not have storage.objects.list access")
    answer = httpx.get(f"{strict.url}/v1/projects/{strict.project}/gadgets", headers=who.bearer(who.launcher()))
    assert answer.status_code == 403 and "gadgets.things.list" in answer.json()["error"]["message"]
    with pytest.raises(exceptions.NotFound):  # as Compute Engine answers for a project that does not exist
        list(who.client("machine_types", who.launcher()).list(project="nope-project", zone=strict.zones[0]))


def test_launching_as_an_account_the_launcher_may_not_act_as(strict, who):
    from google.cloud import compute_v1

    launcher = who.launcher()
    default = f"{strict.project_number}-compute@developer.gserviceaccount.com"
    parent = f"projects/{strict.project}/locations/{strict.region}"
    job = {"template": {"template": {"containers": [{"image": "python:3.11-slim"}], "service_account": default}}}
    with pytest.raises(exceptions.Forbidden, match=rf"Permission 'iam.serviceaccounts.actAs' denied on service account {default}"):
        who.client("jobs", launcher).create_job(parent=parent, job_id="as-default", job=job)
    vm = compute_v1.Instance(
        name="as-default",
        machine_type=f"zones/{strict.zones[0]}/machineTypes/e2-small",
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image="projects/debian-cloud/global/images/family/debian-12"
                ),
            )
        ],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
        service_accounts=[compute_v1.ServiceAccount(email="default")],
    )
    instances = who.client("instances", launcher)
    operation = instances.insert(project=strict.project, zone=strict.zones[0], instance_resource=vm)  # accepted...
    with pytest.raises(exceptions.BadRequest, match="SERVICE_ACCOUNT_ACCESS_DENIED: The user does not have access to service account"):
        operation.result()  # ...and its operation fails, as Compute Engine's does
    assert [i.name for i in instances.list(project=strict.project, zone=strict.zones[0])] == []
    properties = compute_v1.InstanceProperties(
        machine_type="e2-small",
        disks=vm.disks,
        network_interfaces=vm.network_interfaces,
        service_accounts=vm.service_accounts,
    )
    bulk = compute_v1.BulkInsertInstanceResource(count=2, name_pattern="as-default-#", instance_properties=properties)
    operation = instances.bulk_insert(project=strict.project, zone=strict.zones[0], bulk_insert_instance_resource_resource=bulk)
    with pytest.raises(exceptions.BadRequest, match="SERVICE_ACCOUNT_ACCESS_DENIED"):
        operation.result()  # a bulk insert's operation fails alike, and makes none of its instances
    assert [i.name for i in instances.list(project=strict.project, zone=strict.zones[0])] == []


def test_the_projects_default_compute_account_exists_and_is_an_editor(strict, who):
    """As in a real project: the default Compute Engine account is listed, holds roles/editor on the
    project (Google's automatic grant), and what runs as it may do what an Editor may (delete any VM,
    change the project's secrets) but not read a secret's value or change IAM policies."""
    launcher, default = who.launcher(), f"{strict.project_number}-compute@developer.gserviceaccount.com"
    listed = who.iam(launcher, "GET", f"projects/{strict.project}/serviceAccounts?pageSize=100").json()["accounts"]
    [account] = [a for a in listed if a["email"] == default]
    assert account["displayName"] == "Compute Engine default service account" and account["projectId"] == strict.project
    policy = who.client("projects", launcher).get_iam_policy(request={"resource": f"projects/{strict.project}"})
    assert [b.role for b in policy.bindings if f"serviceAccount:{default}" in b.members] == ["roles/editor"]
    secret = _new_secret(who.client("secrets", launcher), strict.project, f"someone-{secrets.token_hex(3)}")
    as_default = who.client("secrets", who.of(default))
    as_default.add_secret_version(parent=secret, payload={"data": b"overwritten"})  # any secret of the project
    with pytest.raises(exceptions.Forbidden, match="secretmanager.versions.access"):
        as_default.access_secret_version(name=f"{secret}/versions/latest")
    assert list(who.client("jobs", who.of(default)).list_jobs(parent=f"projects/{strict.project}/locations/{strict.region}")) == []
    with pytest.raises(exceptions.Forbidden):
        who.client("projects", who.of(default)).set_iam_policy(request={"resource": f"projects/{strict.project}", "policy": policy})


def test_service_accounts_are_listed_a_page_at_a_time_and_the_product_follows_the_pages(strict, who):
    """IAM's serviceAccounts.list answers ``pageSize`` accounts (20 by default, at most 100) and a
    ``nextPageToken`` while more remain, never all at once; the product's REST client
    (``RestApi.list_all``) follows the tokens to the last page."""
    from types import SimpleNamespace

    from google.auth.transport.requests import AuthorizedSession

    from prefect_remote.providers.gcp.clients import RestApi

    session, url = AuthorizedSession(who.launcher()), f"{strict.url}/v1/projects/{strict.project}/serviceAccounts"
    made: list[str] = []
    try:
        while len(strict.iam.accounts) < 45:
            answer = session.post(url, json={"accountId": f"page-{len(made):03d}-{secrets.token_hex(2)}"})
            assert answer.status_code == 200, answer.text
            made.append(answer.json()["email"])
        first = session.get(url).json()
        assert len(first["accounts"]) == 20 and first["nextPageToken"]
        assert len(session.get(url, params={"pageSize": 500}).json()["accounts"]) == 45  # at most 100, here all 45
        assert len(session.get(url, params={"pageSize": 7}).json()["accounts"]) == 7
        second = session.get(url, params={"pageToken": first["nextPageToken"]}).json()
        assert {a["email"] for a in first["accounts"]}.isdisjoint(a["email"] for a in second["accounts"])
        clients = SimpleNamespace(options=SimpleNamespace(api_endpoint=strict.url), credentials=who.launcher(), project=strict.project)
        listed = [a["email"] for a in RestApi(clients, "iam.googleapis.com").list_all("serviceAccounts", "accounts")]
        assert sorted(listed) == sorted(strict.iam.accounts) and len(listed) == 45
    finally:
        for email in made:
            session.delete(f"{url}/{email}")


def test_the_101st_service_account_is_refused_as_iam_refuses_it(strict, who):
    """A project holds at most 100 service accounts by default (IAM quotas), its default compute one
    among them: the next create answers 429 RESOURCE_EXHAUSTED with a day's RetryInfo (the body
    users report), which the product's REST calls (an AuthorizedSession, google-api-core's errors)
    raise as TooManyRequests. A deleted account frees its place."""
    from google.api_core.exceptions import TooManyRequests, from_http_response
    from google.auth.transport.requests import AuthorizedSession

    assert strict.iam.max_accounts == 100
    session, url = AuthorizedSession(who.launcher()), f"{strict.url}/v1/projects/{strict.project}/serviceAccounts"
    made: list[str] = []
    try:
        while len(strict.iam.accounts) < 100:
            answer = session.post(url, json={"accountId": f"quota-{len(made):03d}-{secrets.token_hex(2)}"})
            assert answer.status_code == 200, answer.text
            made.append(answer.json()["email"])
        refused = session.post(url, json={"accountId": "one-too-many", "serviceAccount": {"displayName": "101st"}})
        assert refused.status_code == 429 and refused.json()["error"] == {
            "code": 429,
            "message": "Maximum number of service accounts on project reached.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "86401s"}],
        }
        with pytest.raises(TooManyRequests, match="Maximum number of service accounts on project reached"):
            raise from_http_response(refused)
        assert f"one-too-many@{strict.project}.iam.gserviceaccount.com" not in strict.service_accounts  # nothing made
        assert session.delete(f"{url}/{made.pop()}").status_code == 200
        answer = session.post(url, json={"accountId": "one-too-many"})
        assert answer.status_code == 200, answer.text
        made.append(answer.json()["email"])
    finally:
        for email in made:
            session.delete(f"{url}/{email}")
    assert len(strict.iam.accounts) < 100


def test_custom_roles_are_listed_a_page_at_a_time(strict, who):
    """IAM's roles.list pages as its other lists do (300 by default, at most 1,000)."""
    launcher, made = who.launcher(), [f"paged{index}{secrets.token_hex(3)}" for index in range(3)]
    for role_id in made:
        answer = who.iam(
            launcher, "POST", f"projects/{strict.project}/roles", {"roleId": role_id, "role": {"includedPermissions": ["run.jobs.list"]}}
        )
        assert answer.status_code == 200, answer.text
    try:
        listed, token, pages = [], "", 0
        while True:
            answer = who.iam(
                launcher, "GET", f"projects/{strict.project}/roles?pageSize=1" + (f"&pageToken={token}" if token else "")
            ).json()
            assert len(answer["roles"]) == 1
            listed += [role["name"].rsplit("/", 1)[-1] for role in answer["roles"]]
            pages, token = pages + 1, answer.get("nextPageToken", "")
            if not token:
                break
        assert set(made) <= set(listed) and pages == len(listed)
    finally:
        for role_id in made:
            who.iam(launcher, "DELETE", f"projects/{strict.project}/roles/{role_id}")


def test_custom_roles_and_grants_made_through_the_apis_take_effect_after_the_delay(strict, who):
    launcher, tester = who.launcher(), f"tester-{secrets.token_hex(3)}@{strict.project}.iam.gserviceaccount.com"
    created = who.iam(
        launcher, "POST", f"projects/{strict.project}/roles", {"roleId": "jobReader", "role": {"includedPermissions": ["run.jobs.list"]}}
    )
    assert created.status_code == 200, created.text
    projects = who.client("projects", launcher)
    policy = projects.get_iam_policy(request={"resource": f"projects/{strict.project}"})
    policy.bindings.add(role=f"projects/{strict.project}/roles/jobReader", members=[f"serviceAccount:{tester}"])
    projects.set_iam_policy(request={"resource": f"projects/{strict.project}", "policy": policy})
    granted = time.monotonic()
    jobs = who.client("jobs", who.of(tester))
    parent = f"projects/{strict.project}/locations/{strict.region}"
    with pytest.raises(exceptions.Forbidden):
        list(jobs.list_jobs(parent=parent))  # not yet
    time.sleep(max(0.0, granted + DELAY + 0.2 - time.monotonic()))
    assert list(jobs.list_jobs(parent=parent)) == []
    policy = projects.get_iam_policy(request={"resource": f"projects/{strict.project}"})
    kept = [b for b in policy.bindings if not b.role.endswith("/jobReader")]
    del policy.bindings[:]
    policy.bindings.extend(kept)
    projects.set_iam_policy(request={"resource": f"projects/{strict.project}", "policy": policy})
    revoked = time.monotonic()
    assert list(jobs.list_jobs(parent=parent)) == []  # still, for a while
    time.sleep(max(0.0, revoked + DELAY + 0.2 - time.monotonic()))
    with pytest.raises(exceptions.Forbidden):
        list(jobs.list_jobs(parent=parent))


def test_a_policy_over_iams_condition_limits_is_refused(strict, who):
    """IAM's limits: 12 logical operators in a condition, 20 conditional bindings of one role to one
    principal in a policy. A product whose grants outgrow them must fail here, as on Google."""
    projects = who.client("projects", who.launcher())
    resource, member = f"projects/{strict.project}", f"serviceAccount:limits@{strict.project}.iam.gserviceaccount.com"

    def with_bindings(*conditions: str):
        policy = projects.get_iam_policy(request={"resource": resource, "options": {"requested_policy_version": 3}})
        policy.version = 3
        for index, expression in enumerate(conditions):
            policy.bindings.add(role="roles/logging.viewer", members=[member], condition={"title": f"c{index}", "expression": expression})
        return policy

    names = [f'resource.name.startsWith("projects/{strict.project}/x{index}")' for index in range(14)]
    with pytest.raises(exceptions.BadRequest, match="more than 12 logical operators"):
        projects.set_iam_policy(request={"resource": resource, "policy": with_bindings(" || ".join(names))})
    with pytest.raises(exceptions.BadRequest, match="more than 20 conditional bindings of roles/logging.viewer"):
        projects.set_iam_policy(request={"resource": resource, "policy": with_bindings(*[*names, *names[:7]])})
    projects.set_iam_policy(request={"resource": resource, "policy": with_bindings(" || ".join(names[:13]), *names[:19])})
    policy = with_bindings()
    kept = [b for b in policy.bindings if member not in b.members]
    del policy.bindings[:]
    policy.bindings.extend(kept)
    projects.set_iam_policy(request={"resource": resource, "policy": policy})


def test_bindings_on_a_bucket_and_a_secret(strict, who):
    launcher, reader = who.launcher(), f"reader-{secrets.token_hex(3)}@{strict.project}.iam.gserviceaccount.com"
    storage = who.client("storage", launcher)
    bucket = storage.create_bucket(f"iam-test-{secrets.token_hex(4)}")
    bucket.blob("a.txt").upload_from_string("a")
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": "roles/storage.objectUser", "members": {f"serviceAccount:{reader}"}})
    bucket.set_iam_policy(policy)
    secret = _new_secret(who.client("secrets", launcher), strict.project, f"shared-{secrets.token_hex(3)}")
    who.client("secrets", launcher).set_iam_policy(
        request={
            "resource": secret,
            "policy": {"bindings": [{"role": "roles/secretmanager.secretAccessor", "members": [f"serviceAccount:{reader}"]}]},
        }
    )
    time.sleep(DELAY + 0.2)
    credentials = who.of(reader)
    assert who.client("storage", credentials).bucket(bucket.name).blob("a.txt").download_as_text() == "a"
    with pytest.raises(exceptions.Forbidden):  # only that bucket
        who.client("storage", credentials).bucket("prefect-remote-sandbox").blob("store/envs/a.json").download_as_text()
    assert who.client("secrets", credentials).access_secret_version(name=f"{secret}/versions/latest").payload.data == b"value"


def test_conditions_on_a_bucket_need_uniform_access_which_then_stays(strict, who):
    """Cloud Storage takes IAM conditions only on a bucket with uniform bucket-level access, and keeps
    it from being disabled while they are there; a bucket keeps the uniform access its insert asked for."""
    storage = who.client("storage", who.launcher())
    member = f"serviceAccount:reader-{secrets.token_hex(3)}@{strict.project}.iam.gserviceaccount.com"
    fine_grained = storage.create_bucket(f"iam-acl-{secrets.token_hex(4)}")
    uniform = storage.bucket(f"iam-uniform-{secrets.token_hex(4)}")
    uniform.iam_configuration.uniform_bucket_level_access_enabled = True
    uniform = storage.create_bucket(uniform)
    assert uniform.iam_configuration.uniform_bucket_level_access_enabled
    assert storage.get_bucket(uniform.name).iam_configuration.uniform_bucket_level_access_enabled
    assert not storage.get_bucket(fine_grained.name).iam_configuration.uniform_bucket_level_access_enabled
    for bucket in (fine_grained, uniform):
        policy = bucket.get_iam_policy(requested_policy_version=3)
        policy.version = 3
        condition = {"title": "a folder", "expression": f'resource.name.startsWith("projects/_/buckets/{bucket.name}/objects/a/")'}
        policy.bindings.append({"role": "roles/storage.objectViewer", "members": {member}, "condition": condition})
        if bucket is fine_grained:
            with pytest.raises(exceptions.BadRequest, match="uniform bucket-level access enabled"):
                bucket.set_iam_policy(policy)
        else:
            bucket.set_iam_policy(policy)
    uniform.iam_configuration.uniform_bucket_level_access_enabled = False
    with pytest.raises(exceptions.BadRequest, match="its IAM policy has conditions"):
        uniform.patch()
    assert storage.get_bucket(uniform.name).iam_configuration.uniform_bucket_level_access_enabled


def test_a_batch_answers_each_part_as_its_permissions_allow(strict, who):
    launcher, writer = who.launcher(), f"writer-{secrets.token_hex(3)}@{strict.project}.iam.gserviceaccount.com"
    storage = who.client("storage", launcher)
    mine, theirs = storage.create_bucket(f"iam-mine-{secrets.token_hex(4)}"), storage.create_bucket(f"iam-theirs-{secrets.token_hex(4)}")
    for bucket in (mine, theirs):
        bucket.blob("r.json").upload_from_string("{}")
    policy = mine.get_iam_policy()
    policy.bindings.append({"role": "roles/storage.objectUser", "members": {f"serviceAccount:{writer}"}})
    mine.set_iam_policy(policy)
    time.sleep(DELAY + 0.2)
    client = who.client("storage", who.of(writer))
    allowed, refused = client.bucket(mine.name).blob("r.json"), client.bucket(theirs.name).blob("r.json")
    with pytest.raises(exceptions.Forbidden, match="does not have storage.objects.update access"):
        with client.batch():
            for blob in (allowed, refused):
                blob.metadata = {"lease": "1"}
                blob.patch()
    assert storage.bucket(mine.name).get_blob("r.json").metadata == {"lease": "1"}  # the allowed part was applied
    assert storage.bucket(theirs.name).get_blob("r.json").metadata is None


def test_test_iam_permissions_answers_from_the_same_evaluator(strict, who):
    machine, launcher = who.machine(), who.launcher()
    asked = ["logging.logEntries.create", "logging.logEntries.list", "compute.instances.delete", "resourcemanager.projects.setIamPolicy"]
    answer = who.client("projects", machine).test_iam_permissions(resource=f"projects/{strict.project}", permissions=asked)
    # The machines may delete VMs by name only (a condition on the instance): not on the project itself.
    assert list(answer.permissions) == ["logging.logEntries.create"]
    answer = who.client("projects", launcher).test_iam_permissions(resource=f"projects/{strict.project}", permissions=asked)
    assert list(answer.permissions) == ["logging.logEntries.list", "compute.instances.delete", "resourcemanager.projects.setIamPolicy"]
    account = f"projects/{strict.project}/serviceAccounts/{strict.machine_account}:testIamPermissions"
    answer = who.iam(launcher, "POST", account, {"permissions": ["iam.serviceAccounts.actAs", "iam.serviceAccounts.delete"]})
    assert answer.json() == {
        "permissions": ["iam.serviceAccounts.actAs", "iam.serviceAccounts.delete"]
    }  # serviceAccountAdmin on the project
    answer = who.iam(machine, "POST", account, {"permissions": ["iam.serviceAccounts.actAs", "iam.serviceAccounts.delete"]})
    assert answer.json() == {"permissions": ["iam.serviceAccounts.actAs"]}
    secret = _new_secret(who.client("secrets", launcher), strict.project, "prefect-remote-tested")
    answer = who.client("secrets", machine).test_iam_permissions(
        request={
            "resource": secret,
            "permissions": ["secretmanager.versions.access", "secretmanager.secrets.delete", "secretmanager.secrets.get"],
        }
    )
    assert list(answer.permissions) == ["secretmanager.versions.access", "secretmanager.secrets.delete"]
    bucket = who.client("storage", machine).bucket("prefect-remote-sandbox")
    assert bucket.test_iam_permissions(["storage.objects.get", "storage.buckets.get", "storage.objects.update"]) == [
        "storage.objects.get",
        "storage.objects.update",
    ]
    with pytest.raises(exceptions.BadRequest):
        who.client("projects", machine).test_iam_permissions(resource=f"projects/{strict.project}", permissions=["storage.*"])


def test_the_sandbox_itself_uses_an_identity_of_its_own(strict, who):
    internal = strict.enforcement.credentials()
    assert list(who.client("jobs", internal).list_jobs(parent=f"projects/{strict.project}/locations/{strict.region}")) == []
    assert who.client("storage", internal).get_bucket("prefect-remote-sandbox").name == "prefect-remote-sandbox"
    bindings = who.client("projects", internal).get_iam_policy(request={"resource": f"projects/{strict.project}"}).bindings
    assert not any("internal" in member for binding in bindings for member in binding.members)  # no policy names it
