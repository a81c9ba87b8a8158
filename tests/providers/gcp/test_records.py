"""The gcp provider's machine records in the gs:// store, against gcp-storage-emulator through the
real google-cloud-storage client: the owner's side (create, renew in one request per 100, end,
complete, ended_machine, delete) and the machine's (lease_age, one GET).

Cloud Storage takes about one write a second per object, and answers 429 past it; the emulator has no
such limit, so an end that meets a renewal is throttled at the client's transport here, with Google's
answer (status and JSON error), and the real client raises and retries it as it would."""

from __future__ import annotations

import json
import time
import types

import pytest
import requests

from prefect_remote.errors import CapabilityError
from prefect_remote.providers.base import InstanceType, Launch, Machine
from prefect_remote.providers.gcp.records import MachineRecords
from prefect_remote.software.store import LocalStore
from prefect_remote.software.stores import open_store
from prefect_remote.spec import MachineSpec


@pytest.fixture
def records(gcs) -> MachineRecords:
    return MachineRecords(open_store(f"gs://{gcs.bucket()}/store"))


def launch(launch_id: str = "launch-0a1b2c3d4e5f", **spec) -> Launch:
    spec = MachineSpec(**{"cpu": 2, "memory": "8 GiB", "keepalive": "1 minute", **spec})
    return Launch(
        launch_id, "#!/bin/bash\n", spec, InstanceType("e2-standard-2", 2, 8 * 2**30, price=0.067), 2, {"team": "a"}, "client-1", False
    )


def machine(machine_id: str, state: str = "terminated", **fields) -> Machine:
    return Machine(machine_id, "gcp", state, "e2-standard-2", created=time.time(), **fields)


def test_a_machine_lifecycle_in_its_record(gcs, records):
    ids = ["vm-000000000001", "vm-000000000002"]
    records.create(ids, launch(), service="Compute Engine", region="us-central1", price=0.067)
    assert records.url.endswith("/store/machines")
    assert list(records.renew(ids)) == []
    assert records.lease_age(ids[0]) == 0  # the first read counts from then

    time.sleep(1.1)
    before = records.lease_age(ids[0])
    assert before >= 1  # unchanged since: as old as this process's clock says
    del gcs.requests[:]
    assert records.renew([*ids, "vm-00000000dead"]) == {"vm-00000000dead": None}  # unknown: no record
    assert gcs.requests == [("POST", "/batch/storage/v1")]  # all of them in one request
    assert records.lease_age(ids[0]) < before
    del gcs.requests[:]
    records.lease_age(ids[1])
    assert len(gcs.requests) == 1 and gcs.requests[0][0] == "GET"  # the machine's read: one GET

    records.end(ids[0], reason="idle for 5 minutes", exit_code=0)
    records.end(ids[0], reason="terminated on request", only_if_running=True)  # the first reason stays
    assert records.renew(ids) == {ids[0]: "launch-0a1b2c3d4e5f"}  # the owner learns of the end, and its launch, while renewing
    assert records.lease_age(ids[1]) < 5

    cloud = machine(ids[0], reason="Instance was deleted", details={"service": "Compute Engine"})
    completed = records.complete(cloud)
    assert (completed.reason, completed.exit_code, completed.details["service"]) == ("idle for 5 minutes", 0, "Compute Engine")
    assert abs(completed.details["ended"] - time.time()) < 5
    running = machine(ids[1], "running")
    del gcs.requests[:]
    assert records.complete(running) is running and gcs.requests == []  # a live machine costs nothing
    assert records.complete(machine(ids[1])).reason is None  # ended without a record of it: as the cloud says

    gone = records.ended_machine(ids[0])  # as describe shows a VM Google deleted
    assert (gone.state, gone.reason, gone.exit_code, gone.instance_type, gone.region, gone.owner) == (
        "terminated",
        "idle for 5 minutes",
        0,
        "e2-standard-2",
        "us-central1",
        "client-1",
    )
    assert gone.tags == {"team": "a"} and gone.details["price_per_hour"] == 0.067 and gone.details["launch"] == "launch-0a1b2c3d4e5f"
    assert "ended without a record" in records.ended_machine(ids[1]).reason
    assert records.ended_machine("vm-00000000dead") is None

    records.end(ids[1], reason="keepalive expired", exit_code=137)
    records.end(ids[1], reason="overridden by the machine itself")
    assert records.complete(machine(ids[1])).reason == "overridden by the machine itself"
    assert records.complete(machine(ids[1])).exit_code == 137

    del gcs.requests[:]
    records.delete([*ids, "vm-00000000dead"])
    assert gcs.requests == [("POST", "/batch/storage/v1")]
    assert records.ended_machine(ids[0]) is None and list(records.renew(ids)) == ids
    assert records.lease_age(ids[0]) == float("inf")  # forgotten: the machine ends itself
    records.end(ids[0], reason="no record: nothing to do")


def test_a_launchs_records_are_one_upload_then_copies_in_a_batch_request_per_hundred(gcs, records):
    ids = [f"vm-{i:012x}" for i in range(150)]
    del gcs.requests[:]
    records.create(ids, launch(), service="Compute Engine", region="us-central1", price=0.067)
    made = [(method, path.split("?")[0]) for method, path in gcs.requests if "/o" in path or "/batch/" in path]  # not the store's check
    assert made == [("POST", f"/upload/storage/v1/b/{records.store.bucket}/o"), *[("POST", "/batch/storage/v1")] * 4]
    for machine_id in (ids[0], ids[1], ids[149]):  # each a record of its own: lease, metadata, facts
        assert records.lease_age(machine_id) < 5
        assert records.live_launches({"launch-0a1b2c3d4e5f"}) == {"launch-0a1b2c3d4e5f"}
        records.end(machine_id, reason="idle", exit_code=0)
        ended = records.ended_machine(machine_id)
        assert (ended.id, ended.reason, ended.tags, ended.details["launch"]) == (machine_id, "idle", {"team": "a"}, "launch-0a1b2c3d4e5f")
    assert records.renew(ids) == dict.fromkeys([ids[0], ids[1], ids[149]], "launch-0a1b2c3d4e5f")  # one end is no other's


def test_renewal_is_one_request_per_hundred(gcs, records):
    ids = [f"run-{i:012x}" for i in range(150)]
    records.create(ids, launch(), service="Cloud Run")
    del gcs.requests[:]
    assert list(records.renew(ids)) == []
    assert gcs.requests == [("POST", "/batch/storage/v1")] * 2


def test_live_launches(records):
    records.create(["vm-00000000000a"], launch("launch-aaaaaaaaaaaa"), service="Compute Engine")
    records.create(["vm-00000000000b", "vm-00000000000c"], launch("launch-bbbbbbbbbbbb"), service="Compute Engine")
    records.create(["vm-00000000000d"], launch("launch-dddddddddddd"), service="Compute Engine")
    records.end("vm-00000000000a", reason="done")
    records.end("vm-00000000000b", reason="done")
    asked = {"launch-aaaaaaaaaaaa", "launch-bbbbbbbbbbbb", "launch-dddddddddddd", "launch-eeeeeeeeeeee"}
    assert records.live_launches(asked) == {"launch-bbbbbbbbbbbb", "launch-dddddddddddd"}
    time.sleep(1.1)
    records.renew(["vm-00000000000d"])
    assert records.live_launches(asked, stale_after=1.0) == {"launch-dddddddddddd"}  # c's owner stopped renewing


def test_ended_machines_of_some_tags(gcs, records):
    """What list(include_terminated=True) adds to the cloud's listing: the machines Google no longer
    shows, found by their tags in one listing (a download each only for those found)."""
    records.create(["vm-0000000000a1", "vm-0000000000a2"], launch(), service="Compute Engine", price=0.067)
    other = Launch("launch-0b0b0b0b0b0b", "", MachineSpec(), InstanceType("e2-micro", 2, 2**30, price=0.008), 1, {"team": "b"}, None, False)
    records.create(["vm-0000000000b1"], other, service="Compute Engine")
    records.end("vm-0000000000a1", reason="idle", exit_code=0)
    records.end("vm-0000000000b1", reason="idle")
    del gcs.requests[:]
    [ended] = records.ended_machines({"team": "a"}, shown={"vm-0000000000a2"})
    assert len(gcs.requests) == 2  # the listing, then the one machine's facts
    assert (ended.id, ended.state, ended.reason, ended.tags, ended.details["price_per_hour"]) == (
        "vm-0000000000a1",
        "terminated",
        "idle",
        {"team": "a"},
        0.067,
    )
    assert ended.estimated_cost() is not None
    # No end recorded and not shown: being started (not yet in the cloud's listing), unless made a while ago.
    assert records.ended_machines({"team": "a"}, shown=set()) == [ended]
    assert {m.id for m in records.ended_machines(None, shown=set(), settling=0)} == {
        "vm-0000000000a1",
        "vm-0000000000a2",
        "vm-0000000000b1",
    }


def test_machines_read_their_records_from_the_url_they_are_given(records):
    records.create(["run-0123456789ab"], launch(), service="Cloud Run")
    assert MachineRecords.from_url(records.url).lease_age("run-0123456789ab") < 5


def owner_clock_off_by(monkeypatch, seconds: float) -> None:
    """This process renews as an owner whose clock is ``seconds`` off (the records module's time only)."""
    from prefect_remote.providers.gcp import records as module

    real = time.time
    monkeypatch.setattr(module, "time", types.SimpleNamespace(time=lambda: real() + seconds, monotonic=time.monotonic))


@pytest.mark.parametrize("skew", [-600, 600])
def test_a_machine_reads_its_lease_without_the_owners_clock(records, monkeypatch, skew):
    """An owner 10 minutes off: the machine's age is how long customTime stayed unchanged on its own
    clock, neither 10 minutes old at once nor 10 minutes young."""
    now = [0.0]
    machine = MachineRecords.from_url(records.url)
    machine._lease_clock = lambda: now[0]
    owner_clock_off_by(monkeypatch, skew)
    [machine_id] = ids = ["vm-0000000005ce"]
    records.create(ids, launch(), service="Compute Engine")
    assert machine.lease_age(machine_id) == 0  # fresh at launch
    now[0] = 40
    assert machine.lease_age(machine_id) == 40  # unchanged for 40 s: 40 s old, whatever time it names
    records.renew(ids)
    assert machine.lease_age(machine_id) == 0
    now[0] = 45
    records.renew(ids)  # within the same second of the owner's clock: the renewal still moves it
    assert machine.lease_age(machine_id) == 0


def test_an_owner_whose_clock_is_behind_the_last_writers_still_renews(records, monkeypatch, gcs):
    """Cloud Storage refuses an earlier customTime: an owner 10 minutes behind the one before it (a
    restarted push service on another host, say) renews a second past the lease's time instead."""
    [machine_id] = ids = ["vm-0000000000a4"]
    owner_clock_off_by(monkeypatch, 600)
    records.create(ids, launch(), service="Compute Engine")
    ahead = records._blob(machine_id)
    ahead.reload()
    owner_clock_off_by(monkeypatch, 0)
    now = [0.0]
    machine = MachineRecords.from_url(records.url)
    machine._lease_clock = lambda: now[0]
    assert machine.lease_age(machine_id) == 0
    now[0] = 30
    behind = MachineRecords.from_url(records.url)  # the new owner, its clock 10 minutes behind the last writer's
    del gcs.requests[:]
    assert behind.renew(ids) == {}
    assert [method for method, _ in gcs.requests] == ["POST", "GET", "POST"]  # refused (400), read, renewed past it
    assert machine.lease_age(machine_id) == 0  # renewed
    blob = records._blob(machine_id)
    blob.reload()
    assert blob.custom_time > ahead.custom_time  # moved forward, never back (lifecycle rules count from it)
    del gcs.requests[:]
    now[0] = 60
    assert behind.renew(ids) == {} and machine.lease_age(machine_id) == 0
    assert gcs.requests.count(("POST", "/batch/storage/v1")) == 1  # it remembers the lease: one request, no refusal


def test_only_gs_stores(tmp_path):
    with pytest.raises(CapabilityError, match=r"gs:// store, not file://.*PREFECT_REMOTE_STORE=gs://BUCKET/PREFIX.*provision-infra"):
        MachineRecords(LocalStore(tmp_path))


def test_a_long_lived_machine_keeps_its_record_and_a_dead_ones_goes(gcp_env, gcs):
    """The records lifecycle rule provisioning makes deletes by the lease (daysSinceCustomTime), not
    by age: a machine renewed daily for 8 days keeps its record; one whose owner stopped renewing
    loses it after 7 (Cloud Storage's lifecycle on the sandbox's clock)."""
    from prefect_remote.providers.gcp import infra
    from prefect_remote.providers.gcp.provider import GCPProvider

    bucket = gcs.bucket()
    store = open_store(f"gs://{bucket}/store")
    infra._ensure_bucket(GCPProvider().clients, store, "us-central1", lambda _: None, conditioned=False)
    records = MachineRecords(store)
    live, dead = "vm-00000000a11e", "vm-00000000dead"
    records.create([live, dead], launch(), service="Compute Engine", region="us-central1", price=0.067)
    for _ in range(8):
        gcp_env.advance_lifecycle(1, bucket=bucket)
        assert live not in records.renew([live])  # the owner's daily renewals
    assert records.lease_age(live) < 60
    assert records.lease_age(dead) == float("inf") and records.ended_machine(dead) is None  # no record left
    assert records.renew([dead]) == {dead: None}


def test_an_end_throttled_by_a_renewal_of_the_same_object_is_retried(records, monkeypatch):
    [machine_id] = ids = ["vm-00000000a429"]
    records.create(ids, launch(), service="Compute Engine")
    http = records.store.client._http
    send, throttled = http.request, []

    def once_too_fast(method, url, **kwargs):
        if method == "PATCH" and not throttled:
            throttled.append(url)
            answer = requests.Response()
            answer.status_code, answer.url, answer.request = 429, url, requests.Request(method, url).prepare()
            answer.headers["Content-Type"] = "application/json"
            error = {
                "code": 429,
                "message": "The object exceeded the rate limit for object mutation operations (create, update, and delete).",
            }
            answer._content = json.dumps({"error": error}).encode()
            return answer
        return send(method=method, url=url, **kwargs)

    monkeypatch.setattr(http, "request", once_too_fast)
    assert records.end(machine_id, reason="idle for 5 minutes", exit_code=0) == "launch-0a1b2c3d4e5f"
    assert len(throttled) == 1 and records.renew(ids) == {machine_id: "launch-0a1b2c3d4e5f"}  # recorded after the retry


def test_an_owner_reads_and_ends_many_records_in_a_batch_request_per_hundred_each(gcs, records):
    ids = [f"vm-{i:012x}" for i in range(150)]
    records.create(ids, launch(), service="Compute Engine")
    records.end(ids[0], reason="idle for 5 minutes", exit_code=0)  # ended by itself already
    del gcs.requests[:]
    known = records.read([*ids, "vm-00000000dead"])
    assert sorted(known) == ids  # no record: left out
    assert gcs.requests == [("POST", "/batch/storage/v1")] * 2
    del gcs.requests[:]
    launches = records.end_all(known, reason="terminated on request", exit_code=143, only_if_running=True)
    assert gcs.requests == [("POST", "/batch/storage/v1")] * 2
    assert launches == dict.fromkeys(ids, "launch-0a1b2c3d4e5f")
    first, other = records.complete(machine(ids[0])), records.complete(machine(ids[149]))
    assert (first.reason, first.exit_code) == ("idle for 5 minutes", 0)  # the first reason stays
    assert (other.reason, other.exit_code) == ("terminated on request", 143)
    assert json.loads(records._loaded(ids[149]).metadata["tags"]) == {"team": "a"}  # the rest of its metadata kept
    assert records.renew(ids[:3]) == dict.fromkeys(ids[:3], "launch-0a1b2c3d4e5f")  # each end seen by the next renewal


def test_an_end_of_many_throttled_in_part_sends_that_part_again(gcs, records, monkeypatch):
    """Cloud Storage answers a batch's part 429 where its object was written in the last second; the
    emulator has no such limit, so its answer to the first batch of ends is rewritten so (a real
    multipart answer, one part's status changed)."""
    ids = ["vm-0000000a4291", "vm-0000000a4292"]
    records.create(ids, launch(), service="Compute Engine")
    http = records.store.client._http
    send, throttled = http.request, []

    def first_part_too_fast(method, url, **kwargs):
        answer = send(method=method, url=url, **kwargs)
        sent = kwargs.get("data") or b""
        if method == "POST" and "/batch/" in url and b"PATCH" in (sent if isinstance(sent, bytes) else sent.encode()) and not throttled:
            throttled.append(url)
            answer._content = answer.content.replace(b"HTTP/1.1 200 OK", b"HTTP/1.1 429 Too Many Requests", 1)
        return answer

    monkeypatch.setattr(http, "request", first_part_too_fast)
    del gcs.requests[:]
    assert records.end_all(records.read(ids), reason="idle") == dict.fromkeys(ids, "launch-0a1b2c3d4e5f")
    assert len(throttled) == 1 and gcs.requests.count(("POST", "/batch/storage/v1")) == 3  # read, end, the throttled end again
    assert records.renew(ids) == dict.fromkeys(ids, "launch-0a1b2c3d4e5f")


def test_a_provider_reads_the_records_of_the_store_set_after_it_was_made(gcs):
    """A pool's block sets the provider's store after making it (RemoteProviderBlock.get_provider),
    maybe after a first use: the records are the store's as set now, not as first asked for."""
    from prefect_remote.providers.gcp.provider import GCPProvider

    provider = GCPProvider(project="records-project", region="us-central1")
    provider.store_url = f"gs://{gcs.bucket()}/first"
    assert provider.records.url.endswith("/first/machines")
    provider.store_url = f"gs://{gcs.bucket()}/pools-own"
    assert provider.records.url.endswith("/pools-own/machines") and provider.records is provider.records


def test_a_listing_records_an_end_only_for_machines_of_its_region_it_no_longer_sees(gcp_env, monkeypatch):
    """A record with no end whose machine the cloud no longer shows (a failed boot deleted its VM) gets
    one from a listing of ended machines, so that its owner's renewal reports it ended; but only in
    the listing's own region: a machine of the same store in another region is not listed here, and
    may well run."""
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.providers.gcp.records import UNRECORDED_END

    real = MachineRecords.ended_machines
    monkeypatch.setattr(MachineRecords, "ended_machines", lambda self, tags, shown: real(self, tags, shown, settling=0))  # past settling
    provider = GCPProvider(service="cloud-run")
    here, elsewhere = "run-0000000000e1", "run-0000000000e2"
    provider.records.create([here], launch("launch-0e0e0e0e0e01"), service="Cloud Run", region=provider.options.region)
    provider.records.create([elsewhere], launch("launch-0e0e0e0e0e02"), service="Cloud Run", region="europe-west1")
    try:
        listed = {m.id: m for m in provider.list(include_terminated=True)}
        assert listed[here].reason == listed[elsewhere].reason == UNRECORDED_END  # shown so: neither runs in this region
        assert provider.renew_leases([here, elsewhere]) == [here]  # only this region's recorded ended
    finally:
        provider.records.delete([here, elsewhere])
