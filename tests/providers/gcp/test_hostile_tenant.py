"""No gcp pool can touch another pool's secrets, VMs or store: two pools provisioned as a user provisions
them (each with its own service account, its secrets and VMs named for it, its folder of the default
bucket), and pool A's machine identity (its service account's token, as A's metadata server hands it to
A's machines) turned against pool B, on the strict sandbox (IAM enforced as Google enforces it:
conditions on secret, instance and object names). Every attempt is refused with Google's 403, B's
machine runs on and completes with its own secret and record, and A's own flow run (a VM that boots
from the agent wheel in A's folder, reads its secret, keeps its record and ends itself) still works."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
from google.api_core import exceptions

from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.gcp import infra
from prefect_remote.providers.gcp.provider import GCPProvider
from prefect_remote.providers.gcp.secrets import secret_name, version_name
from prefect_remote.spec import MachineSpec
from tests.conftest import wait_for
from tests.providers.infra_clouds import LAUNCHER_IP, GCPInfra

PROJECT = GCPInfra.PROJECT


@pytest.fixture
def pools(gcp_env, monkeypatch):
    """Pools A and B provisioned in the sandbox's project, each with its own store folder and account:
    their providers, as each pool's block makes them."""
    with GCPInfra.prepared(gcp_env, monkeypatch):
        token = secrets.token_hex(3)
        made = {}
        for name in ("a", "b"):
            setup = infra.provision(GCPProvider(), f"hostile-{name}-{token}", say=lambda _: None)
            provider = GCPProvider(service="compute", service_account=setup.service_account, public_ip=LAUNCHER_IP)
            provider.store_url = setup.store
            made[name] = provider
        assert made["a"].options.service_account != made["b"].options.service_account
        assert made["a"].records.label != made["b"].records.label
        yield made


def credentials_of(sandbox, email: str):
    """``email``'s credentials as a machine running as it gets them: its metadata server's token."""
    from google.oauth2.credentials import Credentials

    key = "hostile-" + secrets.token_hex(4)
    sandbox.metadata.register(key, lambda: {"instance/name": key}, email)
    try:
        answer = httpx.get(
            f"{sandbox.url}/{key}/computeMetadata/v1/instance/service-accounts/default/token", headers={"Metadata-Flavor": "Google"}
        )
    finally:
        sandbox.metadata.forget(key)
    return Credentials(answer.json()["access_token"])


def storage_as(sandbox, credentials):
    """A Cloud Storage client calling with ``credentials``."""
    from google.cloud import storage

    return storage.Client(project=PROJECT, credentials=credentials, client_options={"api_endpoint": sandbox.storage_url})


def refused(call) -> str:
    """What Google answered a call that must be refused: 403 PERMISSION_DENIED (Secret Manager) or
    Compute Engine's 403 ``forbidden``."""
    with pytest.raises(exceptions.GoogleAPICallError) as raised:
        call()
    assert raised.value.code == 403, raised.value
    return str(raised.value)


def test_pool_as_machine_cannot_touch_another_pools_secrets_or_vms(gcp_env, pools, tmp_path):
    from google.cloud import compute_v1, secretmanager

    a, b = pools["a"], pools["b"]
    go = tmp_path / "go"  # B's payload waits for it, then checks its secret is still its own
    [victim] = b.launch(
        MachineSpec(cpu=2),
        BootPayload(["sh", "-c", f'while [ ! -e {go} ]; do sleep 0.2; done; test "$TOKEN" = b-secret'], secrets={"TOKEN": "b-secret"}),
    )
    launch = b.describe(victim.id).details["launch"]
    b_secret = secret_name(PROJECT, launch, b.records.label)
    assert victim.id.startswith(f"vm-{b.records.label}-")
    wait_for(lambda: b.describe(victim.id).state == "running", timeout=60, message="B's VM running")

    creds = credentials_of(gcp_env, a.options.service_account)  # pool A's machine identity
    options = {"api_endpoint": gcp_env.url}
    manager = secretmanager.SecretManagerServiceClient(transport="rest", credentials=creds, client_options=options)
    instances = compute_v1.InstancesClient(transport="rest", credentials=creds, client_options=options)
    zone = b.describe(victim.id).details["zone"]

    # B's secret: read (pinned or latest), overwritten, deleted, listed.
    for version in (f"{b_secret}/versions/1", f"{b_secret}/versions/latest"):
        assert "PERMISSION_DENIED" in refused(lambda v=version: manager.access_secret_version(name=v))
    assert "PERMISSION_DENIED" in refused(lambda: manager.add_secret_version(parent=b_secret, payload={"data": b'{"TOKEN": "evil"}'}))
    assert "PERMISSION_DENIED" in refused(lambda: manager.delete_secret(name=b_secret))
    assert "PERMISSION_DENIED" in refused(lambda: list(manager.list_secrets(parent=f"projects/{PROJECT}")))

    # B's VM: read, its metadata (the startup script) and labels set, deleted; a VM made under B's name.
    # (setTags, under the same condition, is a method the sandbox's Compute Engine does not serve.)
    assert "Required 'compute.instances.get'" in refused(lambda: instances.get(project=PROJECT, zone=zone, instance=victim.id))
    instance = b.clients.instances().get(project=PROJECT, zone=zone, instance=victim.id)  # its fingerprints, as a listing shows them
    metadata = compute_v1.Metadata(fingerprint=instance.metadata.fingerprint, items=[{"key": "startup-script", "value": "evil"}])
    labels = compute_v1.InstancesSetLabelsRequest(label_fingerprint=instance.label_fingerprint, labels={"owner": "a"})
    for call in (
        lambda: instances.set_metadata(project=PROJECT, zone=zone, instance=victim.id, metadata_resource=metadata),
        lambda: instances.set_labels(project=PROJECT, zone=zone, instance=victim.id, instances_set_labels_request_resource=labels),
        lambda: instances.delete(project=PROJECT, zone=zone, instance=victim.id),
    ):
        assert "Required 'compute.instances." in refused(call)
    squatter = compute_v1.Instance(
        name=f"vm-{b.records.label}-{secrets.token_hex(6)}",
        machine_type=f"zones/{zone}/machineTypes/e2-small",
        disks=[
            {
                "boot": True,
                "auto_delete": True,
                "initialize_params": {"source_image": "projects/debian-cloud/global/images/family/debian-12"},
            }
        ],
        network_interfaces=[{"network": "global/networks/default"}],
        service_accounts=[{"email": a.options.service_account, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
    )
    assert "Required 'compute.instances.create'" in refused(
        lambda: instances.insert(project=PROJECT, zone=zone, instance_resource=squatter)
    )

    # B's store folder: an environment's spec and blob (what B's machines rebuild and run), and its
    # machine's record (its lease and end): read, overwritten, patched (a forged end), deleted.
    b_store = b.machine_store()
    digest = b_store.put_bytes(b"b's software")
    b_store.put_env("b-env", b'{"packages": []}')
    gcs = storage_as(gcp_env, creds)
    bucket = gcs.bucket(b_store.bucket)
    victims = [b_store.key("envs/b-env.json"), b_store.key(f"blobs/{digest}"), b.records.store.key(f"machines/{victim.id}.json")]
    for name in victims:
        assert "storage.objects.get" in refused(lambda n=name: bucket.blob(n).download_as_bytes())
        assert "storage.objects." in refused(lambda n=name: bucket.blob(n).upload_from_string(b"evil"))
        assert "storage.objects.delete" in refused(lambda n=name: bucket.blob(n).delete())
    forged = bucket.blob(victims[-1])
    forged.metadata = {"reason": "evil", "ended": "1"}
    assert "storage.objects.update" in refused(forged.patch)
    # What stays open (docs/known-limits.md): Cloud Storage checks a listing on the bucket, so A sees
    # the names in B's folder, never their contents.
    assert victims[0] in {blob.name for blob in gcs.list_blobs(b_store.bucket, prefix=b_store.key(""))}

    # B is unharmed: its secret, labels and metadata as its launch made them, its store and record as
    # they were; its payload completes.
    assert b_store.get_bytes(digest) == b"b's software" and b_store.get_env("b-env") == b'{"packages": []}'
    assert "ended" not in (b.records.read([victim.id])[victim.id].metadata or {})
    assert json.loads(gcp_env.secrets.value(b_secret.rsplit("/", 1)[-1], "1")) == {"TOKEN": "b-secret"}
    after = b.clients.instances().get(project=PROJECT, zone=zone, instance=victim.id)
    assert after.labels == instance.labels and after.metadata.items == instance.metadata.items and after.status == "RUNNING"
    go.touch()
    [ended] = b.wait([victim.id], timeout=120)
    assert ended.exit_code == 0, ended

    # A's own: the same identity reads its launch's secret (pinned), and A's flow run works end to end:
    # its VM reads its secret as A's account and ends itself.
    [own] = a.launch(MachineSpec(cpu=2), BootPayload(["sh", "-c", 'test "$TOKEN" = a-secret'], secrets={"TOKEN": "a-secret"}))
    own_launch = a.describe(own.id).details["launch"]
    read = manager.access_secret_version(name=version_name(PROJECT, own_launch, a.records.label))
    assert json.loads(read.payload.data) == {"TOKEN": "a-secret"}
    [done] = a.wait([own.id], timeout=120)
    assert done.exit_code == 0, done
    wait_for(lambda: own.id not in gcp_env.compute._vms, timeout=60, message="A's VM deleted by itself")


def test_a_pools_machine_identity_reads_its_store_and_writes_only_its_records(gcp_env, pools):
    """In its own folder, A's machine identity reads its software environments (as a machine rebuilds
    them) and writes its machine records (create, patch, delete: what a scheduler does for its workers);
    it changes no software there (only launchers build environments)."""
    from prefect_remote.software.gcsstore import GCSStore

    a = pools["a"]
    launcher_store = a.machine_store()
    digest = launcher_store.put_bytes(b"a's software")
    launcher_store.put_env("a-env", b'{"packages": []}')
    gcs = storage_as(gcp_env, credentials_of(gcp_env, a.options.service_account))
    own = GCSStore(launcher_store.bucket, launcher_store.prefix, client=gcs)
    assert own.get_env("a-env") == b'{"packages": []}' and own.get_bytes(digest) == b"a's software" and own.has_blob(digest)
    record = gcs.bucket(own.bucket).blob(own.key("machines/vm-probe.json"))
    record.upload_from_string(b"{}")
    record.metadata = {"reason": "probe", "ended": "1"}
    record.patch()
    record.delete()
    bucket = gcs.bucket(own.bucket)
    assert "storage.objects.create" in refused(lambda: bucket.blob(own.key("blobs/forged")).upload_from_string(b"evil"))
    assert "storage.objects.delete" in refused(lambda: bucket.blob(own.key(f"blobs/{digest}")).delete())


def test_a_pools_machine_identity_still_acts_on_its_own_vms(gcp_env, pools):
    """The conditions leave a pool's machines what they need on their own VMs: labels set, deleted by name."""
    from google.cloud import compute_v1

    a = pools["a"]
    creds = credentials_of(gcp_env, a.options.service_account)
    instances = compute_v1.InstancesClient(transport="rest", credentials=creds, client_options={"api_endpoint": gcp_env.url})
    [own] = a.launch(MachineSpec(cpu=2), BootPayload(["sleep", "300"]))
    zone = a.describe(own.id).details["zone"]
    instance = instances.get(project=PROJECT, zone=zone, instance=own.id)
    labels = compute_v1.InstancesSetLabelsRequest(label_fingerprint=instance.label_fingerprint, labels={**instance.labels, "seen": "yes"})
    instances.set_labels(project=PROJECT, zone=zone, instance=own.id, instances_set_labels_request_resource=labels).result()
    assert instances.get(project=PROJECT, zone=zone, instance=own.id).labels["seen"] == "yes"
    instances.delete(project=PROJECT, zone=zone, instance=own.id).result()  # as its own halt deletes it
    wait_for(lambda: own.id not in gcp_env.compute._vms, timeout=60, message="A's VM deleted")


def as_machine_of(sandbox, pool: GCPProvider, store: str | None = None) -> GCPProvider:
    """``pool``'s provider as its machines have it (a cluster's scheduler launching its workers, a flow
    run scaling out): Google's APIs called with the pool's machine identity; ``store``: another's."""
    provider = GCPProvider(**pool.options.model_dump())
    provider.store_url = store or pool.store_url
    provider.clients.__dict__["_default"] = (credentials_of(sandbox, pool.options.service_account), PROJECT)
    return provider


def test_a_pools_scheduler_launches_its_workers_under_its_names_only(gcp_env, pools):
    """What a scheduler does with its pool's identity, its workers' launch secret and VMs, works for
    its own pool; named for another pool's (its store), the secret's version is refused."""
    a, b = pools["a"], pools["b"]
    scheduler = as_machine_of(gcp_env, a)
    [worker] = scheduler.launch(MachineSpec(cpu=2), BootPayload(["sh", "-c", 'test "$TOKEN" = w'], secrets={"TOKEN": "w"}))
    assert worker.id.startswith(f"vm-{a.records.label}-")
    [done] = scheduler.wait([worker.id], timeout=120)
    assert done.exit_code == 0, done
    intruder = as_machine_of(gcp_env, a, store=b.store_url)  # A's identity, B's names
    with pytest.raises(Exception, match="refused secretmanager.versions.add"):
        intruder.launch(MachineSpec(cpu=2), BootPayload(["true"], secrets={"TOKEN": "x"}))
    assert not [m for m in b.list() if m.alive]  # nothing started under B's names
