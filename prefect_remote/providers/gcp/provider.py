"""``provider="gcp"``: one provider name, two Google Cloud services behind it.

Cloud Run job tasks accept no inbound connections, so a machine that must (a Dask scheduler or
worker: ``spec.inbound``) or that Cloud Run cannot shape (over 8 vCPU / 32 GiB, a GPU other than L4,
longer than Cloud Run runs) is a Compute Engine VM; any other machine (a flow run) is a Cloud Run job
execution. Each service declares what it can do (:class:`GCPService`); the choice reads those
declarations, never a name, and is logged with its reason.

What both services share lives here: the clients, the secret channel (Secret Manager), leases and
end records (objects in the gs:// store, renewed in one batch call), logs (Cloud Logging) and the
machine-side runtime. A machine id says its service: ``run-…`` (a Cloud Run job, run once) or
``vm-…`` (a Compute Engine instance).

>>> provider = GCPProvider(project="my-project", region="us-central1")              # doctest: +SKIP
>>> [machine] = provider.launch(MachineSpec(cpu=2, memory="8 GiB"), BootPayload(["python", "flow.py"]))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from prefect_remote.errors import MachineNotFound
from prefect_remote.providers.base import Capabilities, InstanceType, Launch, LogChunk, Machine, Plan, Provider
from prefect_remote.providers.gcp.options import GCPOptions
from prefect_remote.providers.gcp.service import GCPService
from prefect_remote.providers.network import DASK_PORTS

if TYPE_CHECKING:
    from prefect_remote.providers.gcp.clients import GoogleClients
    from prefect_remote.providers.gcp.records import MachineRecords
    from prefect_remote.spec import MachineSpec

# As launch makes them (a VM's name carries its pool's records label; one launched before, none):
# anything else is no gcp machine of prefect-remote's.
_MACHINE_ID = re.compile(r"run-[0-9a-f]{12}|vm-([0-9a-f]{16}-)?[0-9a-f]{12}")

logger = logging.getLogger(__name__)


class GCPProvider(Provider):
    """Machines on Google Cloud: Cloud Run job executions, or Compute Engine VMs where a spec needs one."""

    name = "gcp"
    # The union of its services': a request only one service meets goes to that one.
    capabilities = Capabilities(inbound_connections=True, terminate_one=True, containers=True, gpus=True, max_lifetime=None)
    runtime = "prefect_remote.providers.gcp.runtime:GCPRuntime"
    layers_software_on_image = True  # on Cloud Run; Compute Engine refuses the pair (ComputeService.unfit)
    block_fields = ("project", "region", "service_account")  # what --provision-infra records
    options_model = GCPOptions
    job_variables: ClassVar[Mapping[str, str]] = {"gcp_service": "service"}  # a flow run's choice of service
    infra = "prefect_remote.providers.gcp.infra"  # the APIs checked, the machines' service account, the bucket, the firewall rules
    doctor = "prefect_remote.providers.gcp.doctor"  # credentials, APIs, permissions, grants, quotas, network, bucket
    max_boot_script = 32 * 1024  # Cloud Run container args; Compute Engine metadata takes 256 KiB
    min_poll = 1.0  # wait() describes every machine each round: Cloud Run's and Compute Engine's read quotas
    agent_extras = ("gcp",)
    agent_requirements = ("google-cloud-storage", "google-cloud-secret-manager", "google-cloud-logging", "google-cloud-compute")
    dask_ports = DASK_PORTS  # what the firewall rule admits from allow_ingress_from
    # A failed boot ends the VM: deleted through the API with the VM's own token (a guest shutdown
    # only stops it, and its disk bills on), then shut down, whether or not the delete went through (a VM's
    # OS outlives its startup script), each call bounded (a metadata server that hangs must not keep the VM
    # up). A Cloud Run task ends when its script does.
    # A VM whose agent died ends on a scheduled guest shutdown that the agent pushes forward (a stopped VM,
    # which the owner's next listing deletes; a spec's timeout is also the VM's maxRunDuration). A Cloud
    # Run task has its job's task timeout.
    backstop_command = '[ -n "${CLOUD_RUN_JOB:-}" ] || shutdown -h +{minutes}'
    halt_command = (
        '[ -n "${CLOUD_RUN_JOB:-}" ] || ( set +e; m="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"; '
        'h="Metadata-Flavor: Google"; z="$(curl -sf -m 10 -H "$h" "$m/instance/zone")"; '
        't="$(curl -sf -m 10 -H "$h" "$m/instance/service-accounts/default/token" | sed -E \'s/.*"access_token" *: *"([^"]+)".*/\\1/\')"; '
        'curl -sf -m 30 -o /dev/null -X DELETE -H "Authorization: Bearer $t" '
        '"${PREFECT_REMOTE_GCP_API_ENDPOINT:-https://compute.googleapis.com}/compute/v1/projects/'
        '$(curl -sf -m 10 -H "$h" "$m/project/project-id")/zones/${z##*/}/instances/$(curl -sf -m 10 -H "$h" "$m/instance/name")"; '
        "shutdown -h now )"
    )

    def __init__(self, **options: Any) -> None:
        self.options = GCPOptions.load(**options)
        self.lease_interval = self.options.lease_interval
        self._services: dict[str, GCPService] = {}
        self._clients: GoogleClients | None = None
        self._records: MachineRecords | None = None
        self._records_of: str | None = None  # the store_url they were made for
        self._ended: set[str] = set()  # machines seen ended by a renewal (their launch's secret handled)
        self._shared_warned = False

    def in_region(self, region: str) -> GCPProvider:
        """This provider's options in another ``region`` (its zone and subnetwork: that region's defaults)."""
        other = GCPProvider(**{**self.options.model_dump(), "region": region, "zone": None, "subnetwork": None})
        other.store_url = self.store_url
        return other

    def __getstate__(self) -> dict[str, Any]:  # clients hold sockets and locks: rebuilt on use
        return {"options": self.options.model_dump(), "store_url": self.store_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["options"])  # type: ignore[misc]
        self.store_url = state.get("store_url")

    # -- the parts -----------------------------------------------------------------------------
    @property
    def clients(self) -> GoogleClients:
        if self._clients is None:
            from prefect_remote.providers.gcp.clients import GoogleClients

            self._clients = GoogleClients(self.options)
        return self._clients

    @property
    def records(self) -> MachineRecords:
        """Leases and end records of this provider's machines, in the store: :attr:`store_url`'s as it
        is now (a pool's block sets it after the provider is made, maybe after a first use)."""
        if self._records is None or self._records_of != self.store_url:
            from prefect_remote.providers.gcp.records import MachineRecords

            self._records, self._records_of = MachineRecords(self.machine_store()), self.store_url
        return self._records

    def service(self, key: str) -> GCPService:
        """The service ``key`` names (``"cloud-run"``, ``"compute"``), made once."""
        if key not in self._services:
            if key == "cloud-run":
                from prefect_remote.providers.gcp.cloudrun import CloudRunService

                self._services[key] = CloudRunService(self)
            elif key == "compute":
                from prefect_remote.providers.gcp.compute import ComputeService

                self._services[key] = ComputeService(self)
            else:
                raise ValueError(f"service={key!r}: expected 'cloud-run' or 'compute'")
        return self._services[key]

    def service_for(self, spec: MachineSpec) -> tuple[GCPService, str]:
        """The service that runs ``spec``, and why (logged at launch)."""
        if self.options.service != "auto":
            chosen = self.service(self.options.service)
            problem = chosen.unfit(spec)
            if problem is not None:
                from prefect_remote.errors import CapabilityError

                other = "compute" if self.options.service == "cloud-run" else "cloud-run"
                raise CapabilityError(
                    f"gcp_service={self.options.service!r}: {problem}; ask for less, or use gcp_service={other!r} or 'auto'"
                )
            return chosen, f"gcp_service={self.options.service!r}"
        cloud_run = self.service("cloud-run")
        problem = cloud_run.unfit(spec)
        if problem is None:
            return cloud_run, "the machine needs no inbound connections and fits Cloud Run's shapes"
        return self.service("compute"), problem

    def _service_of(self, machine_id: str) -> GCPService:
        for name in ("cloud-run", "compute"):
            service = self.service(name)
            if _MACHINE_ID.fullmatch(machine_id) and machine_id.startswith(service.id_prefix):
                return service
        raise MachineNotFound(
            f"no gcp machine {machine_id!r}: gcp machine ids are 'run-' and 12 hex digits, or 'vm-', the pool's 16 and 12; "
            "`prefect-remote machines ls` lists them"
        )

    # -- launching: the service is chosen once per launch (plan), and the Launch carries it ----------
    def plan(self, spec: MachineSpec) -> Plan:
        service, reason = self._checked(spec)
        instance_type = service.choose_instance_type(spec)
        return Plan(instance_type, f"gcp {service.placement(instance_type)}", service=service.key, service_reason=reason)

    def boots_in_image(self, plan: Plan) -> bool:
        return plan.service == "cloud-run"  # the task's container is the image; a VM runs it with its engine

    def check_spec(self, spec: MachineSpec) -> None:
        self._checked(spec)

    def _checked(self, spec: MachineSpec) -> tuple[GCPService, str]:
        """The service that runs ``spec`` and why (:meth:`service_for`), once ``spec`` has passed
        every provider's checks, the region's and the chosen service's."""
        super().check_spec(spec)
        if self.options.service_account is None:
            from prefect_remote.errors import CapabilityError

            # Google's default for a VM or job is the project's default compute account, often an Editor of the project:
            # any flow run's code could then do anything there.
            raise CapabilityError(
                "gcp: no service_account, so machines would run as the project's default compute service account (often "
                "an Editor of the whole project); give them prefect-remote's own: `prefect work-pool create --type remote:push "
                "--provision-infra POOL` makes the pool's own and records it in the pool, or set service_account= "
                "(PREFECT_REMOTE_GCP_SERVICE_ACCOUNT) to an account you made"
            )
        self._warn_if_shared()
        if spec.region and spec.region != self.options.region:
            from prefect_remote.errors import CapacityError

            raise CapacityError(
                f"region={spec.region!r}, but this gcp provider launches in {self.options.region}; "
                f"make it with region={spec.region!r} (PREFECT_REMOTE_GCP_REGION), or drop region"
            )
        service, reason = self.service_for(spec)
        problem = service.unfit(spec)
        if problem is not None:
            from prefect_remote.errors import CapabilityError

            raise CapabilityError(f"gcp: {problem}")
        return service, reason

    def _warn_if_shared(self) -> None:
        """Warns (once) when the machines run as the account every pool shared before each had its own:
        they keep working, and they can reach every pool's secrets and VMs."""
        from prefect_remote.providers.gcp.grants import service_account_email

        if self._shared_warned or self.options.service_account != service_account_email(self.clients.project):
            return
        self._shared_warned = True
        logger.warning(
            "gcp: machines run as %s, which every pool of project %s shared before each pool had a service account of its "
            "own: another pool's flow runs can read this pool's secrets and end its VMs. Provision the pool again "
            "(`prefect work-pool create --type remote:push --provision-infra --overwrite POOL`) to give it its own.",
            self.options.service_account,
            self.clients.project,
        )

    def instance_types(self) -> Sequence[InstanceType]:
        return [*self.service("cloud-run").instance_types(), *self.service("compute").instance_types()]

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        service, _ = self.service_for(spec)
        return service.choose_instance_type(spec)

    def placement(self, spec: MachineSpec, instance_type: InstanceType) -> str:
        service, _ = self.service_for(spec)
        return f"gcp {service.placement(instance_type)}"

    def _start(self, launch: Launch) -> list[Machine]:
        service, reason = self.service(launch.service), launch.service_reason  # as plan() chose them
        service.labels(launch)  # too many labels: refused before anything is made
        machine_ids = service.new_ids(launch.count)
        logger.info("gcp: %s on %s (%s)", ", ".join(machine_ids), service.name, reason)
        self.records.create(machine_ids, launch, service=service.name, region=self.options.region, price=launch.instance_type.price)
        try:
            machines = service.start(launch, machine_ids)
        except BaseException:
            self.records.delete(machine_ids)
            raise
        return [_with_details(m, placement=f"{service.name}, because {reason}") for m in machines]

    def _store_secrets(self, launch_id: str, secrets: Mapping[str, str]) -> None:
        from prefect_remote.providers.gcp.secrets import store_secrets

        store_secrets(self.clients, launch_id, secrets, self.records)

    def _forget_secrets(self, launch_id: str) -> None:
        from prefect_remote.providers.gcp.secrets import forget_secrets

        forget_secrets(self.clients, launch_id, self.records.label)

    def _live_launches(self, launch_ids: set[str]) -> set[str]:
        """Those with a machine running by its record (one listing of the records)."""
        return self.records.live_launches(launch_ids)

    def _stored_launches(self, older_than: float) -> set[str]:
        from prefect_remote.providers.gcp.secrets import stored_launches

        return stored_launches(self.clients, self.records, older_than=older_than)

    # -- reading back ---------------------------------------------------------------------------------
    def list(self, tags: Mapping[str, str] | None = None, *, include_terminated: bool = False) -> list[Machine]:
        """This pool's machines whose tags include ``tags``: another pool's in the project (another
        store's records label) are not listed, as they may not be ended from here."""
        pool = self.records.label
        machines = [
            m
            for name in ("cloud-run", "compute")
            for m in self.service(name).machines(labels=tags)
            if m.details.get("records") in (None, pool)  # None: launched before the label
        ]
        machines = [self.records.complete(m) for m in machines]
        if include_terminated:  # Google deletes ended VMs and the sweep ended jobs: their records remember them
            ended = self.records.ended_machines(tags, {m.id for m in machines})
            # Gone with no end recorded (a failed boot deleted its VM, Google preempted it, someone deleted
            # it): recorded now, or its owner's renewal would renew its record on and keep its launch's secret.
            # Only in this region, the one listed: a machine of the store in another may well run.
            unrecorded = [m.id for m in ended if "ended" not in m.details and m.region == self.options.region]
            if unrecorded:
                from prefect_remote.providers.gcp.records import UNRECORDED_END

                self.seen_ended(unrecorded, UNRECORDED_END)
            machines += ended
        else:
            machines = [m for m in machines if m.alive]
        return sorted(machines, key=lambda m: m.created, reverse=True)

    def describe(self, machine_id: str) -> Machine:
        service = self._service_of(machine_id)
        found = service.machines([machine_id])
        if found:
            return self.records.complete(found[0])
        ended = self.records.ended_machine(machine_id)  # deleted by the cloud, remembered by its record
        if ended is None:
            raise MachineNotFound(
                f"no gcp machine {machine_id!r} (never launched, or ended and forgotten); `prefect-remote machines ls` lists them"
            )
        return ended

    def seen_ended(self, machine_ids: Sequence[str], reason: str) -> None:
        """Records ``reason`` as the end of those of ``machine_ids`` (this pool's, seen ended by a
        listing: a VM that shut itself down) whose record has none, and deletes the secrets of their
        launches with no machine left. Without it their owner's renewal would renew their records on,
        never reporting them ended, and their secrets would stay (the sweep spares a renewed lease).
        A tidy-up: a failure is logged, never raised into the listing."""
        try:
            known = self.records.read(machine_ids)  # another pool's, or a VM of no launch: no record, nothing to do
            launches = self.records.end_all(known, reason=reason, only_if_running=True)
            self._forget_ended_launches(launch for launch in launches.values() if launch)
        except Exception as error:
            logger.warning("gcp: the ends of %s were not recorded (%s); their owner's renewals go on", ", ".join(machine_ids), error)

    def _terminate(self, machine_ids: list[str], reason: str, exit_code: int | None) -> set[str]:
        """Records each end, then has each service end its machines; returns their launches. A
        machine this pool's records do not know (another pool's, a VM prefect-remote never made, a
        mistyped id) is refused (:class:`MachineNotFound`) before anything ends; each service also
        checks the machine's labels. The records are read, then their ends written, in one batch
        request per 100 machines each."""
        for machine_id in machine_ids:
            self._service_of(machine_id)  # not one of ours: refused before any call
        known = self.records.read(machine_ids)
        for machine_id in machine_ids:
            if machine_id not in known:
                raise MachineNotFound(
                    f"no gcp machine {machine_id!r} in this pool's records ({self.records.url}): it is another pool's, not "
                    "prefect-remote's, or long gone; `prefect-remote machines ls` lists this pool's machines"
                )
        launches = set(self.records.end_all(known, reason=reason, exit_code=exit_code, only_if_running=True).values())
        for name in ("cloud-run", "compute"):
            service = self.service(name)
            mine = [machine_id for machine_id in machine_ids if machine_id.startswith(service.id_prefix)]
            if mine:
                service.terminate(mine, reason)
        return {launch for launch in launches if launch}

    def logs(self, machine_id: str, *, cursor: str | None = None) -> LogChunk:
        """Through this process's one Cloud Logging reader of the project, shared by every follower
        (:class:`~prefect_remote.providers.gcp.logs.LogReader`: within the read quota)."""
        from prefect_remote.providers.gcp.logs import read_logs

        self._service_of(machine_id)
        since = None if cursor else self._log_start(machine_id)
        return read_logs(self.clients, self.options.log_name, machine_id, cursor, since=since)

    def log_tail(self, machine_id: str, lines: int = 20) -> str:
        """The machine's last ``lines`` entries: one read, newest first, within the read quota."""
        from prefect_remote.providers.gcp.logs import log_reader

        self._service_of(machine_id)
        return log_reader(self.clients, self.options.log_name).tail(machine_id, lines, since=self._log_start(machine_id))

    def _log_start(self, machine_id: str) -> float:
        """When a machine's log starts: its creation, a minute early for its clock (described once).
        A read with no cursor names it: Google's client reads only the last 24 hours of a filter that
        names no time, and a machine may be older."""
        if machine_id not in self._log_starts:
            self._log_starts[machine_id] = self.describe(machine_id).created - 60.0
        return self._log_starts[machine_id]

    @functools.cached_property
    def _log_starts(self) -> dict[str, float]:
        return {}

    def _renew(self, machine_ids: list[str]) -> dict[str, str | None]:
        """One batch request (per 100) renews every lease; a machine's launch is handed back the
        first time its end is seen."""
        ended = self.records.renew(machine_ids)
        fresh = {machine_id: launch for machine_id, launch in ended.items() if machine_id not in self._ended}
        self._ended.update(fresh)
        return {machine_id: fresh.get(machine_id) for machine_id in ended}

    # -- elsewhere: a cluster's scheduler, the machine side ---------------------------------------------
    def client_options(self) -> dict[str, Any]:
        # Not the API endpoint: a machine reaches it at its own address (PREFECT_REMOTE_GCP_API_ENDPOINT there).
        # Nor the service, a choice for one launch (a flow run's gcp_service), not for what a machine launches.
        return self.options.model_dump(exclude_none=True, exclude={"api_endpoint", "service"})

    def machine_options(self) -> dict[str, Any]:
        """The project, region, zone, service account, network… (none is secret); not this launcher's
        public IP, which is not the machine's."""
        return {key: value for key, value in self.client_options().items() if key != "public_ip"}

    def network(self) -> str:
        """The VPC network, e.g. ``gcp:my-project:default``: Compute Engine VMs and (by Direct VPC
        egress) Cloud Run tasks in it reach VMs' internal addresses."""
        return f"gcp:{self.clients.project}:{self.options.network}"

    def runtime_options(self, launch_id: str) -> dict[str, Any]:
        from prefect_remote.providers.gcp.secrets import version_name

        return {
            "store": self.machine_store().url,
            "launch_id": launch_id,
            "project": self.clients.project,
            "log_name": self.options.log_name,
            "secret": version_name(self.clients.project, launch_id, self.records.label),  # the one it may read
        }


def _with_details(machine: Machine, **details: Any) -> Machine:
    import dataclasses

    return dataclasses.replace(machine, details={**machine.details, **details})
