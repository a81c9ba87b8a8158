"""What the gcp provider remembers of its machines, in the gs:// store: one small object per machine,
``<store>/machines/<id>.json``.

* **Launch facts**, the object's JSON, written once when the machine is launched: its launch, owner,
  keepalive, shape, region, spot policy, spec summary, service, price, creation time and tags (the
  same for every machine of a launch: one upload, then copies in batches).
  They outlive the machine: Google deletes an ended VM, and a deleted machine is still described.
* **The lease**, the object's ``customTime``: the owner's last renewal. An owner renews all its
  machines in one HTTP request per 100 (a JSON API batch of PATCHes), and a machine reads its own
  with one GET (:meth:`MachineRecords.lease_age`). ``customTime`` rather than a custom metadata key:
  a patch of it leaves the end record alone (emulators replace custom metadata wholesale), it never
  goes backwards (Cloud Storage refuses an earlier one), and a bucket lifecycle rule can delete
  records by it (``daysSinceCustomTime``). A machine never compares the time it names with its own
  clock (the owner's may be minutes off): it measures how long the value stays unchanged
  (:class:`~prefect_remote.machine.runtime.LeaseWatch`), and every renewal moves it forward.
* **The end**, the object's custom metadata (``reason``, ``exit_code``, ``ended``; and ``launch`` and
  ``tags``, written at launch, for :meth:`MachineRecords.live_launches` and
  :meth:`MachineRecords.ended_machines`): patched in when the machine ends, by itself or by its
  owner (who reads and ends many in one batch request per 100 each: :meth:`MachineRecords.read`,
  :meth:`MachineRecords.end_all`), and seen by the owner's next renewal.

Standard library only at import (the machine side uses it); google-cloud-storage comes through the
store.

>>> records = MachineRecords(open_store("gs://my-bucket/prefect-remote"))           # doctest: +SKIP
>>> records.url                                                                       # doctest: +SKIP
'gs://my-bucket/prefect-remote/machines'
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import CapabilityError
from prefect_remote.machine.runtime import LeaseWatch
from prefect_remote.providers.base import Machine, batches
from prefect_remote.software.store import NotInStore, Store, StoreError
from prefect_remote.software.stores import open_store

if TYPE_CHECKING:
    from google.cloud.storage import Blob

    from prefect_remote.providers.base import Launch
    from prefect_remote.software.gcsstore import GCSStore

logger = logging.getLogger(__name__)

FOLDER = "machines"
BATCH = 100  # Cloud Storage's JSON API takes at most 100 calls in one batch request
# What a renewal may answer: 400 when our customTime is earlier than the object's (another owner's
# clock ran ahead of ours), which is renewed again past the object's; 412 is renewed anyway;
# throttling and server errors wait for the next round.
_LOWERED = 400
_RENEWED_ANYWAY = {412}
_RETRY_LATER = {408, 429, 500, 502, 503, 504}
END_RETRY_SECONDS = 60.0  # how long end() retries what a renewal leaves for the next round


def _retry_later(error: BaseException) -> bool:
    """Whether a call failed as a renewal waits out (:data:`_RETRY_LATER`): throttling, such as the
    429 of Cloud Storage's one write a second per object when an end meets a renewal, and server errors."""
    return getattr(error, "code", None) in _RETRY_LATER


def _end_retry() -> Any:
    """google-api-core's retry, with backoff, of an end's write while :func:`_retry_later` says so."""
    from google.api_core.retry import Retry

    return Retry(predicate=_retry_later, initial=1.0, maximum=10.0, multiplier=2.0, timeout=END_RETRY_SECONDS)


SETTLING = 60.0  # seconds a machine's record may exist before the cloud shows the machine (its launch is under way)
# Why a machine ended that the cloud no longer has, when nobody recorded why.
UNRECORDED_END = "ended without a record of why (its boot failed, or it was deleted outside prefect-remote, or preempted)"


def _timestamp(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC)


_STEP = datetime.timedelta(seconds=1)


def _renewal_time(now: datetime.datetime, current: datetime.datetime | None) -> datetime.datetime:
    """The customTime a renewal writes: now by this owner's clock, but a second past the lease's
    ``current`` one at least. A renewal must change the value (a machine watches it change) and must
    not lower it: Cloud Storage refuses an earlier customTime (so an owner whose clock is behind the
    last writer's could never renew), and the ``daysSinceCustomTime`` lifecycle rule needs it moving
    forward.

    >>> t = _timestamp(1_765_090_000)
    >>> _renewal_time(t, None) == t, _renewal_time(t, t + _STEP * 600) == t + _STEP * 601
    (True, True)
    """
    return now if current is None or now > current else current + _STEP


class MachineRecords:
    """The records of one provider's machines under ``<store>/machines/``; ``store`` must be a gs:// one."""

    def __init__(self, store: Store, *, lease_clock: Callable[[], float] = time.monotonic) -> None:
        from prefect_remote.software.gcsstore import GCSStore

        if not isinstance(store, GCSStore):
            raise CapabilityError(
                f"the gcp provider keeps its machines' leases and end records in a gs:// store, not {store.url}; "
                "set PREFECT_REMOTE_STORE=gs://BUCKET/PREFIX (`prefect work-pool create --type remote:push --provision-infra "
                "POOL` makes one)"
            )
        self.store: GCSStore = store
        self.url = f"{store.url}/{FOLDER}"
        self._leases: dict[str, datetime.datetime] = {}  # the owner's side: each lease's customTime as last written or seen
        self._lease_clock = lease_clock
        self._lease_watches: dict[str, LeaseWatch] = {}  # the machine's side: how long each lease has stayed unchanged

    @property
    def label(self) -> str:
        """A label value naming these records (a digest of their URL): what else a launch made, such
        as its secret, carries it, so that a tidy-up reads only the records that know the launch."""
        import hashlib

        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @classmethod
    def from_url(cls, url: str) -> MachineRecords:
        """The records at ``url`` (a :attr:`url`, as a machine gets it in its runtime options)."""
        return cls(open_store(url.rstrip("/").removesuffix(f"/{FOLDER}")))

    def _blob(self, machine_id: str) -> Blob:
        return self.store.blob(f"{FOLDER}/{machine_id}.json")

    def _translated(self, action: str, machine_id: str) -> Any:
        return self.store.translated(action, f"the record of {machine_id}")

    # -- the owner's side -----------------------------------------------------------------------
    def create(
        self, machine_ids: Sequence[str], launch: Launch, *, service: str, region: str | None = None, price: float | None = None
    ) -> None:
        """Writes the records of a launch's machines, their leases fresh. Their facts are the same
        (a record's name is its machine's id), and Cloud Storage batches no uploads: the first is
        uploaded, the others are copies of it, made and then stamped with their lease and metadata
        in one batch request per 100 each (whatever a copy keeps of its source's)."""
        now = time.time()
        spec = launch.spec
        tags = dict(launch.tags)
        facts = {
            "launch": launch.id,
            "owner": launch.owner,
            "keepalive": spec.keepalive,
            "instance_type": launch.instance_type.name,
            "region": spec.region or region,
            "spot_policy": spec.spot_policy,
            "spec": spec.summary(),
            "service": service,
            "price_per_hour": price,
            "created": now,
            "tags": tags,
        }
        # The tags again: a listing then finds the ended machines of a cluster without a download each.
        metadata = {"launch": launch.id, "tags": json.dumps(tags, sort_keys=True)}
        first, *others = machine_ids
        source = self._blob(first)
        source.custom_time, source.metadata = _timestamp(now), metadata
        with self._translated("storage.objects.create", first):
            source.upload_from_string(json.dumps(facts), content_type="application/json")

        def copy(machine_id: str) -> Blob:
            return source.bucket.copy_blob(source, source.bucket, self._blob(machine_id).name)  # deferred

        def stamp(machine_id: str) -> Blob:
            blob = self._blob(machine_id)
            blob.custom_time, blob.metadata = _timestamp(now), metadata
            blob.patch()  # deferred
            return blob

        for action, call in (("storage.objects.create", copy), ("storage.objects.update", stamp)):
            for _, _, status, response in self._batched(action, others, call):
                if status >= 300:
                    raise _http_error(response)
        self._leases.update(dict.fromkeys(machine_ids, _timestamp(now)))

    def renew(self, machine_ids: Sequence[str]) -> dict[str, str | None]:
        """Renews the leases of ``machine_ids`` in one request per 100; returns those that have
        ended (their end is recorded) or are unknown (no record), which need no more renewing, each
        with its launch id (None: unknown), which the renewal's response carries. A lease whose
        customTime is later than this owner's clock (another owner's clock ran ahead) is read, then
        renewed a second past it (one GET and one PATCH each, once: this owner remembers it)."""
        now = _timestamp(time.time())
        done: dict[str, str | None] = {}
        lowered = self._renew_round(list(dict.fromkeys(machine_ids)), now, done)
        for machine_id in lowered:
            blob = self._loaded(machine_id)
            if blob is None:
                done[machine_id] = None
            elif blob.custom_time is not None:
                self._leases[machine_id] = blob.custom_time
        self._renew_round([machine_id for machine_id in lowered if machine_id not in done], now, done, again=True)
        return done

    def _renew_round(
        self, machine_ids: list[str], now: datetime.datetime, done: dict[str, str | None], *, again: bool = False
    ) -> list[str]:
        """Renews ``machine_ids`` in one batch request per 100; fills ``done`` and returns the ids
        refused for lowering their customTime."""
        asked: dict[str, datetime.datetime] = {}  # the customTime each renewal writes

        def renewal(machine_id: str) -> Blob:
            blob = self._blob(machine_id)
            blob.custom_time = asked[machine_id] = _renewal_time(now, self._leases.get(machine_id))
            blob.patch()  # deferred: sent with the others when the batch closes
            return blob

        lowered: list[str] = []
        for machine_id, blob, status, response in self._batched("storage.objects.update", machine_ids, renewal):
            if status == 404:
                self._leases.pop(machine_id, None)
                done[machine_id] = None
            elif 200 <= status < 300:
                self._leases[machine_id] = blob.custom_time or asked[machine_id]
                if "ended" in (metadata := blob.metadata or {}):
                    done[machine_id] = metadata.get("launch")
                    self._leases.pop(machine_id)  # renewed no more
            elif status == _LOWERED and not again:
                lowered.append(machine_id)
            elif status in _RETRY_LATER:
                logger.debug("lease of %s not renewed this round (HTTP %s)", machine_id, status)
            elif status not in _RENEWED_ANYWAY:
                raise _http_error(response)
        return lowered

    def _batched(self, action: str, machine_ids: Sequence[str], call: Callable[[str], Blob]) -> list[tuple[str, Blob, int, Any]]:
        """Makes ``call(machine_id)`` (a blob call, deferred) for each of ``machine_ids`` (each once), in
        one JSON API batch request per 100: each id with its blob, the HTTP status its call was
        answered with and the answer. A failed call leaves its blob's properties as the error."""
        client = self.store.client
        answered: list[tuple[str, Blob, int, Any]] = []
        for batch_ids in batches(list(dict.fromkeys(machine_ids)), BATCH):
            with self._translated(action, batch_ids[0]):
                batch = client.batch(raise_exception=False)
                with batch:
                    blobs = [call(machine_id) for machine_id in batch_ids]
            # One response per deferred call, in order (what Batch.finish returned; the context
            # manager keeps it there).
            answered += [
                (machine_id, blob, response.status_code, response)
                for machine_id, blob, response in zip(batch_ids, blobs, batch._responses, strict=True)
            ]
        return answered

    def _loaded(self, machine_id: str) -> Any:
        """``machine_id``'s record with its metadata read (one GET), or None if these records hold none."""
        blob = self._blob(machine_id)
        try:
            with self._translated("storage.objects.get", machine_id):
                blob.reload()
        except NotInStore:
            return None
        return blob

    def end(self, machine_id: str, *, reason: str, exit_code: int | None = None, only_if_running: bool = False) -> str | None:
        """Records why ``machine_id`` ended (two calls; the write retried while throttled, as a renewal
        waits out the same answers) and returns its launch id. ``only_if_running``:
        keeps an end already recorded (the first reason is the true one). A machine without a record
        is left alone (None)."""
        blob = self._loaded(machine_id)
        if blob is None:
            return None
        metadata = dict(blob.metadata or {})
        if only_if_running and "ended" in metadata:
            return metadata.get("launch")
        blob.metadata = _with_end_recorded(metadata, reason, exit_code)  # all of it: an emulator's patch replaces custom metadata
        with self._translated("storage.objects.update", machine_id):
            blob.patch(retry=_end_retry())  # the same metadata again: safe to repeat
        return metadata.get("launch")

    def read(self, machine_ids: Sequence[str]) -> dict[str, Blob]:
        """The records of ``machine_ids`` that exist, their metadata read: one batch request per 100."""

        def read(machine_id: str) -> Blob:
            blob = self._blob(machine_id)
            blob.reload()  # deferred
            return blob

        found: dict[str, Blob] = {}
        for machine_id, blob, status, response in self._batched("storage.objects.get", machine_ids, read):
            if 200 <= status < 300:
                found[machine_id] = blob
            elif status != 404:
                raise _http_error(response)
        return found

    def end_all(
        self, records: Mapping[str, Blob], *, reason: str, exit_code: int | None = None, only_if_running: bool = False
    ) -> dict[str, str | None]:
        """Records why each machine of ``records`` (as :meth:`read` returned them) ended, as
        :meth:`end` does, in one batch request per 100 (each write that is throttled sent again in
        the next, for as long as :meth:`end` retries); returns each one's launch id."""
        launches = {machine_id: (blob.metadata or {}).get("launch") for machine_id, blob in records.items()}
        ends = {
            machine_id: _with_end_recorded(dict(blob.metadata or {}), reason, exit_code)
            for machine_id, blob in records.items()
            if not (only_if_running and "ended" in (blob.metadata or {}))
        }

        def write(machine_id: str) -> Blob:
            blob = self._blob(machine_id)
            blob.metadata = ends[machine_id]  # all of it, as end() writes it
            blob.patch()  # deferred
            return blob

        deadline, delay = time.monotonic() + END_RETRY_SECONDS, 1.0
        while ends:
            later = {}
            for machine_id, _, status, response in self._batched("storage.objects.update", list(ends), write):
                if status in _RETRY_LATER and time.monotonic() < deadline:
                    later[machine_id] = ends[machine_id]
                elif status >= 300 and status != 404:  # 404: forgotten meanwhile
                    raise _http_error(response)
            ends = later
            if ends:
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        return launches

    def complete(self, machine: Machine) -> Machine:
        """``machine`` as the cloud shows it, with what its record adds once it has ended: the reason
        and exit code the agent or owner recorded, and when (one GET, for ended machines only)."""
        if machine.alive:
            return machine
        blob = self._loaded(machine.id)
        return machine if blob is None else _with_end(machine, blob.metadata or {})

    def ended_machine(self, machine_id: str) -> Machine | None:
        """A machine the cloud no longer has (Google deletes an ended VM), from its record (two
        calls); None if it has no record."""
        blob = self._blob(machine_id)
        try:
            with self._translated("storage.objects.get", machine_id):
                blob.reload()
                facts = json.loads(blob.download_as_bytes())
        except NotInStore:
            return None
        return _ended(machine_id, facts, blob.metadata or {})

    def ended_machines(self, tags: Mapping[str, str] | None, shown: Collection[str], *, settling: float = SETTLING) -> list[Machine]:
        """The machines whose tags include ``tags`` that have a record but are not in ``shown`` (what
        the cloud still shows): ended ones Google has deleted, as :meth:`ended_machine` describes
        them. One listing per 1,000 records, then one download per machine found. A record made in
        the last ``settling`` seconds with no end is of a machine still being started, not yet shown."""
        folder = self.store.key(f"{FOLDER}/")
        with self.store.translated("storage.objects.list", f"{FOLDER}/"):
            blobs = list(self.store.client.list_blobs(self.store.bucket, prefix=folder))
        found = []
        for blob in blobs:
            machine_id = blob.name.removeprefix(folder).removesuffix(".json")
            metadata = blob.metadata or {}
            if machine_id in shown or (
                "ended" not in metadata and blob.time_created and time.time() - blob.time_created.timestamp() < settling
            ):
                continue
            try:
                recorded = dict(json.loads(metadata.get("tags") or "{}"))
            except (ValueError, TypeError):
                recorded = {}
            if any(recorded.get(key) != value for key, value in (tags or {}).items()):
                continue
            try:
                with self._translated("storage.objects.get", machine_id):
                    facts = json.loads(blob.download_as_bytes())
            except NotInStore:  # forgotten meanwhile
                continue
            found.append(_ended(machine_id, facts, metadata))
        return found

    def delete(self, machine_ids: Sequence[str]) -> None:
        """Forgets these machines' records (one request per 100; missing ones are fine)."""

        def forget(machine_id: str) -> Blob:
            blob = self._blob(machine_id)
            blob.delete()  # deferred
            return blob

        for _, _, status, response in self._batched("storage.objects.delete", machine_ids, forget):
            if status >= 300 and status != 404:
                raise _http_error(response)

    def forget_all(self) -> int:
        """Forgets every record here (a pool's teardown, once its machines have ended); how many there were."""
        with self.store.translated("storage.objects.list", f"{FOLDER}/"):
            prefix = self.store.key(f"{FOLDER}/")
            ids = [
                blob.name.removeprefix(prefix).removesuffix(".json")
                for blob in self.store.client.list_blobs(self.store.bucket, prefix=prefix)
            ]
        self.delete(ids)
        return len(ids)

    def live_launches(self, launch_ids: set[str], *, stale_after: float = 3600.0) -> set[str]:
        """Those of ``launch_ids`` with a machine still running by its record: no end recorded, and
        a lease renewed within ``stale_after`` seconds (a machine deleted behind prefect-remote's back
        records no end; its lease says it is gone). One listing per 1,000 machines."""
        cutoff = time.time() - stale_after
        live: set[str] = set()
        with self.store.translated("storage.objects.list", f"{FOLDER}/"):
            for blob in self.store.client.list_blobs(self.store.bucket, prefix=self.store.key(f"{FOLDER}/")):
                metadata = blob.metadata or {}
                lease = blob.custom_time.timestamp() if blob.custom_time else 0.0
                if metadata.get("launch") in launch_ids and "ended" not in metadata and lease >= cutoff:
                    live.add(metadata["launch"])
        return live

    # -- the machine's side ---------------------------------------------------------------------
    def lease_age(self, machine_id: str) -> float:
        """Seconds ``machine_id``'s lease (its customTime) has stayed unchanged, by this process's
        monotonic clock, from its first read here (one GET): never against the time it names, which
        is the owner's clock. Infinite when the record is gone: its launch failed, or its owner
        forgot it, and nobody will renew it."""
        blob = self._loaded(machine_id)
        if blob is None:
            return math.inf
        if blob.custom_time is None:
            raise StoreError(f"the record of {machine_id} in {self.url} has no lease (customTime); it was changed by hand")
        watch = self._lease_watches.setdefault(machine_id, LeaseWatch(self._lease_clock))
        return watch.age(blob.custom_time)


def _http_error(response: Any) -> Exception:
    """google-api-core's error for a batch part's failed ``response``."""
    from google.api_core.exceptions import from_http_response

    return from_http_response(response)


def _with_end_recorded(metadata: dict[str, Any], reason: str, exit_code: int | None) -> dict[str, Any]:
    """A record's custom ``metadata`` with an end: why, when, and the exit code if known."""
    metadata = {**metadata, "reason": reason[:1024], "ended": f"{time.time():.3f}"}
    if exit_code is not None:
        metadata["exit_code"] = str(exit_code)
    return metadata


def _ended(machine_id: str, facts: dict[str, Any], metadata: dict[str, Any]) -> Machine:
    """The ended machine a record describes: its launch ``facts`` (the object's JSON) and the end in its ``metadata``."""
    machine = Machine(
        id=machine_id,
        provider="gcp",
        state="terminated",
        instance_type=facts["instance_type"],
        created=facts["created"],
        tags=facts.get("tags") or {},
        spec=facts.get("spec") or "default",
        region=facts.get("region"),
        spot=facts.get("spot_policy") == "spot",
        owner=facts.get("owner"),
        reason=None if "ended" in metadata else UNRECORDED_END,
        details={"price_per_hour": facts.get("price_per_hour"), "service": facts.get("service"), "launch": facts.get("launch")},
    )
    return _with_end(machine, metadata)


def _with_end(machine: Machine, metadata: dict[str, Any]) -> Machine:
    """``machine`` with the end in a record's ``metadata``: its reason and exit code win (the agent's
    or owner's, who knew why), the cloud's fill in."""
    if "ended" not in metadata:
        return machine
    code = metadata.get("exit_code") or ""
    return dataclasses.replace(
        machine,
        reason=metadata.get("reason") or machine.reason,
        exit_code=int(code) if code.lstrip("-").isdigit() else machine.exit_code,
        details={**machine.details, "ended": float(metadata["ended"])},
    )
