"""``RemoteCluster``: a Dask cluster whose scheduler and workers are machines from a provider.

The process that creates a cluster launches the scheduler's machine (and the first workers beside
it, so both boot at once); from then on the controller on the scheduler owns the workers. Another
process asking for the same cluster attaches to the running scheduler instead of starting one.

>>> with RemoteCluster(cpu=2, n_workers=2) as cluster, cluster.get_client() as client:  # doctest: +SKIP
...     client.submit(sum, [1, 2]).result()
3
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Unpack

from distributed.comm import connect
from distributed.deploy.cluster import Log, Logs
from distributed.deploy.spec import ProcessInterface, SpecCluster

from prefect_remote.cluster.credentials import ClusterCredentials
from prefect_remote.cluster.node import VERSION_MISMATCH
from prefect_remote.cluster.options import (
    ClusterArguments,
    ClusterOptionError,
    ClusterOptions,
    launcher_python_path,
    parse_n_workers,
    takes_cluster_arguments,
)
from prefect_remote.cluster.plan import (
    CLUSTER_TAG,
    DASHBOARD_TAG,
    PLAN_ENV,
    PORT_TAG,
    ROLE_TAG,
    ClusterPlan,
    WorkerPlan,
    launch_workers,
    worker_lease,
)
from prefect_remote.cluster.provider_relay import RELAY_ENV, SOCKET
from prefect_remote.cluster.versions import dask_versions, ignore_python_patch_mismatch
from prefect_remote.devserver import free_port
from prefect_remote.filelock import file_lock
from prefect_remote.lease import default_owner, leases
from prefect_remote.machine.container import agent_code_command
from prefect_remote.providers.base import BootPayload, Machine, Provider
from prefect_remote.settings import get_settings
from prefect_remote.spec import MachineSpec

if TYPE_CHECKING:
    from prefect_remote.cluster.dashboard import DashboardTunnel

logger = logging.getLogger("prefect_remote.cluster")

KEEPALIVE_BACKSTOP = 5.0  # seconds the scheduler machine's agent waits past keepalive before ending it
SHUTDOWN_WAIT = 30.0  # seconds to wait for a cluster of the same name that is shutting down
START_TIMEOUT = 600.0  # seconds for a scheduler machine to accept connections (covers a cold rebuild)
# Seconds a scheduler machine may run with no address this process may dial before the start fails:
# a cloud shows a public IP by the time the machine runs, and one that is shutting down ends meanwhile.
PRIVATE_GRACE = 10.0
# Seconds a scheduler may say it listens while this process cannot connect before the start fails: an
# address this process may dial admits it at once, unless the scheduler's security group or firewall
# rule does not admit this computer (allow_ingress_from).
UNREACHABLE_GRACE = 30.0
LOG_CHECK_EVERY = 5.0  # seconds between reads of the scheduler's log while it cannot be reached
NODE_MODULE = "prefect_remote.cluster.node"
RELAY_MODULE = "prefect_remote.cluster.provider_relay"
LOG_LINES = 1000  # lines of each machine's log a cluster's logs show: one page of Cloud Logging, of CloudWatch less
LISTENING = re.compile(r"^scheduler \S+ listening at ", re.MULTILINE)  # what the node prints once it serves


class ClusterStartError(RuntimeError):
    """The scheduler's machine ended or never accepted connections; the message has its log's end."""


class ClusterVersionError(ClusterStartError):
    """The cluster's image has another Dask than its client: the message names both versions. The
    scheduler refused to start, so no worker started, and its machine ended."""


class SchedulerMachine(ProcessInterface):
    """The scheduler as :class:`~distributed.deploy.spec.SpecCluster` sees it: ready once its machine
    accepts TLS connections, closed by ending the machine."""

    def __init__(
        self,
        provider: Provider,
        machine: Machine,
        port: int,
        credentials: ClusterCredentials,
        allow_ingress_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.provider, self.machine, self.port = provider, machine, port
        self.credentials = credentials
        self.allow_ingress_from = allow_ingress_from  # the spec's (None: the provider's default), for what to fix
        self._readdress()

    def _readdress(self) -> None:
        """Where this process (the client) reaches the scheduler: None until its machine has an
        address this process may dial (a cloud machine's public IP shows once it runs)."""
        host = self.provider.client_address(self.machine)
        self.address = f"tls://{host}:{self.port}" if host else None
        self.dialed = self.address or getattr(self, "dialed", None)  # (an ended machine shows no public IP)

    async def start(self) -> None:
        connection_args = self.credentials.security().get_connection_args("client")
        deadline = time.monotonic() + START_TIMEOUT
        next_check = 0.0
        private_since: float | None = None  # when it was first seen running with no address to dial
        listening_since: float | None = None  # when its log was first seen saying it listens, while unreachable
        next_log_check = 0.0
        last_error: OSError | None = None
        while True:
            if self.address is not None:
                try:
                    comm = await connect(self.address, timeout=2, **connection_args)
                    await comm.close()
                    break
                except OSError as error:
                    last_error = error
            if time.monotonic() > next_check:
                self.machine = await asyncio.to_thread(self.provider.describe, self.machine.id)
                self._readdress()
                if not self.machine.alive:
                    mismatch = await asyncio.to_thread(self._version_mismatch)
                    if mismatch:
                        raise ClusterVersionError(f"{mismatch} (scheduler machine {self.machine.id} ended; no worker started)")
                    raise ClusterStartError(await asyncio.to_thread(self._not_reached, last_error, ended=self.machine.reason))
                private = self.address is None and self.machine.state == "running"
                private_since = (private_since or time.monotonic()) if private else None
                if private_since is not None and time.monotonic() - private_since > PRIVATE_GRACE:
                    raise ClusterStartError(self._private())
                if last_error is not None and listening_since is None and time.monotonic() > next_log_check:
                    if LISTENING.search(await asyncio.to_thread(self._log_text) or ""):
                        listening_since = time.monotonic()
                    next_log_check = time.monotonic() + LOG_CHECK_EVERY
                if listening_since is not None and time.monotonic() - listening_since > UNREACHABLE_GRACE:
                    raise ClusterStartError(await asyncio.to_thread(self._not_reached, last_error, ended=None, waited=UNREACHABLE_GRACE))
                next_check = time.monotonic() + 1.0
            if time.monotonic() > deadline:
                raise ClusterStartError(await asyncio.to_thread(self._not_reached, last_error, ended=None))
            await asyncio.sleep(0.05 if self.address else 0.5)
        await super().start()

    def _version_mismatch(self) -> str | None:
        """What the scheduler said of its image's Dask when it refused it (:mod:`prefect_remote.cluster.node`), if it did."""
        for line in (self._log_text() or "").splitlines():
            if line.startswith(VERSION_MISMATCH):
                return line.removeprefix(VERSION_MISMATCH).strip()
        return None

    def _private(self) -> str:
        """Why a running scheduler cannot be dialed: it has only a private address, and this process
        runs outside its network (its machine ends with the cluster's clean-up)."""
        network = self.provider.network()
        return (
            f"scheduler machine {self.machine.id} has no public address, only the private {self.machine.private_address} in "
            f"{network}, and this process runs outside that network: launch it where it gets a public IP (a subnet that maps "
            "public IPs on launch, or allow_ingress_from other than 'none'), or create the cluster from a machine inside "
            f"{network}"
        )

    def _not_reached(self, error: OSError | None, *, ended: str | None, waited: float | None = None) -> str:
        """Why no connection was made (``ended``: the machine's end reason; ``None`` if it timed out,
        or, with ``waited``, this process gave up that long after the scheduler said it listens).
        A scheduler that said it listens, yet could not be reached, is a network fault between this
        host and its machine: say that, not only that the machine ended (which it does after keepalive
        without a client), and what admits this computer on a cloud."""
        # Its last lines from the log's end (a long log's first page says nothing of how it ended);
        # whether it said it listens, from its start, where it says so.
        try:
            tail = "last lines of its log:\n" + self.provider.log_tail(self.machine.id, 20).rstrip("\n")
        except Exception as unread:  # (a machine's identity may not read logs): the reason, without its log
            tail = f"(its log could not be read here: {unread})"
        listened = LISTENING.search(self._log_text() or "") is not None
        then = f"its machine then ended: {ended}" if ended is not None else f"gave up after {waited or START_TIMEOUT:.0f}s"
        if error is not None and listened:
            return (
                f"scheduler {self.machine.id} listening at {self.dialed}, unreachable from this host: {error}\n({then})\n"
                f"{self._ingress_hint()}{tail}"
            )
        if ended is not None:
            return f"scheduler machine {self.machine.id} ended before accepting connections: {ended}\n{tail}"
        return f"scheduler machine {self.machine.id} did not accept connections within {START_TIMEOUT:.0f}s\n{tail}"

    def _log_text(self) -> str | None:
        """The start of the scheduler machine's log, or None where this process may not read it (a
        machine's identity may not read logs on every cloud): then whether it listens is unknown."""
        try:
            return self.provider.logs(self.machine.id).text
        except Exception as error:
            logger.debug("scheduler %s: its log could not be read here: %s", self.machine.id, error)
            return None

    def _ingress_hint(self) -> str:
        """What admits this computer to the Dask ports where the provider's network has ingress rules
        (its ``dask_ports``): ``allow_ingress_from``."""
        if self.provider.dask_ports is None:
            return ""
        source = f"allow_ingress_from={self.allow_ingress_from!r}" if self.allow_ingress_from else "the provider's allow_ingress_from"
        return (
            f"Its security group or firewall rule admits the Dask ports from outside its network only from {source}: if this "
            "computer connects from elsewhere, pass allow_ingress_from='me' (this computer's public IP; set the provider's "
            "public_ip if checkip.amazonaws.com sees another address) or the CIDR you connect from, or create the cluster from "
            "a machine inside its network.\n"
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.provider.terminate, [self.machine.id], reason="cluster closed")
        await super().close()


class RemoteCluster(SpecCluster):
    """A Dask cluster on machines: a scheduler machine and worker machines sized by the spec.

    Workers get ``threads_per_worker`` threads (default: one per CPU of their machine) and their
    machine's memory as Dask's memory limit. ``n_workers`` is a fixed count or ``[min, max]`` bounds
    for adaptive scaling (default ``[0, 500]``). The cluster lives ``keepalive`` after its last client
    disconnects and closes after ``idle_timeout`` without work; both are enforced on the scheduler's
    machine. Connections use TLS with credentials made for this cluster.

    Its name derives from the spec and software environment (or ``name=``): while it runs, the same
    request from another process attaches to it. ``close()`` shuts the cluster down; on interpreter
    exit a cluster this process created is shut down when ``shutdown_on_close`` is true, and otherwise
    left to ``keepalive``.

    Workers run the ``software`` environment named. With none (and no ``image``), on a provider
    whose machines do not share this host's interpreter (every cloud), this environment is captured
    by automatic package sync when the cluster is made and they run that, without the packages
    ``package_sync_ignore`` names; on the local provider they run this interpreter with this
    process's import path, unless ``package_sync=True`` (``False`` never captures).

    Example::

        with RemoteCluster(cpu=4, memory="8 GiB", n_workers=[1, 10], keepalive="5 minutes") as cluster:
            client = cluster.get_client()
            print(cluster.dashboard_link)
    """

    @takes_cluster_arguments(bind=False)  # help() lists them; unknown names reach ClusterOptions.build, which says what to use
    def __init__(
        self,
        name: str | None = None,
        *,
        start_workers: int | None = None,
        shutdown_on_close: bool = True,
        asynchronous: bool = False,
        loop: Any = None,
        options: ClusterOptions | None = None,
        **arguments: Unpack[ClusterArguments],
    ) -> None:
        if options is None:
            options = ClusterOptions.build(name=name, start_workers=start_workers, **arguments)
        options = options.with_software()  # the environment the workers run, captured now if need be
        ignore_python_patch_mismatch()  # its machines may run another patch of this Python, where this one cannot be had
        self.options = options
        self.provider = options.provider
        self.cluster_name = options.cluster_name
        self._credentials_path = get_settings().home / "clusters" / f"{self.cluster_name}.json"
        self._booting: list[str] = []  # machines this process keeps alive until the scheduler is up
        self._watch_comm: Any = None  # this process's hold on the cluster (see _watch)
        self._watching: asyncio.Future | None = None
        scheduler_machine, port, credentials, self.attached = self._find_or_launch()
        self.scheduler_machine = scheduler_machine
        self._credentials = credentials
        self._tunnel: DashboardTunnel | None = None  # made when the dashboard link is first asked for
        super().__init__(
            workers={},
            scheduler={
                "cls": SchedulerMachine,
                "options": {
                    "provider": self.provider,
                    "machine": scheduler_machine,
                    "port": port,
                    "credentials": credentials,
                    "allow_ingress_from": options.spec.allow_ingress_from,
                },
            },
            security=credentials.security(),
            asynchronous=asynchronous,
            loop=loop,
            name=self.cluster_name,
            # Only a cluster this process created is shut down on exit; an attached one is left to its keepalive.
            shutdown_on_close=shutdown_on_close and not self.attached,
        )

    # -- finding or starting the scheduler ------------------------------------------------------
    @property
    def dashboard_link(self) -> str:
        """The scheduler's dashboard, through this process's tunnel: a loopback address of this
        computer, carried to the scheduler's dashboard port (where this process reaches it: a cloud
        machine's public address, which ``allow_ingress_from`` admits, or its private one from a
        machine in its network) over TLS with the cluster's certificate, which that port requires
        (:mod:`prefect_remote.cluster.dashboard`). It works while this cluster object is open. Empty,
        as Dask's own for a cluster without a dashboard, while this process has no address for the
        scheduler's machine."""
        machine = getattr(self.scheduler, "machine", self.scheduler_machine)  # as last described: with its public IP
        address = self.provider.client_address(machine)
        if not address:
            return ""
        target = (address, int(machine.tags[DASHBOARD_TAG]))
        if self._tunnel is not None and self._tunnel.closed:  # this cluster object is closed: the link no longer works
            return self._tunnel.link
        if self._tunnel is None or (self._tunnel.host, self._tunnel.remote_port) != target:
            from prefect_remote.cluster.dashboard import DashboardTunnel

            if self._tunnel is not None:
                self._tunnel.close()
            self._tunnel = DashboardTunnel(*target, self._credentials)
        return self._tunnel.link

    def _find_or_launch(self) -> tuple[Machine, int, ClusterCredentials, bool]:
        with file_lock(self._credentials_path.with_suffix(".lock")):
            running = self.provider.list({CLUSTER_TAG: self.cluster_name, ROLE_TAG: "scheduler"})
            credentials = ClusterCredentials.load(self._credentials_path)
            if running and credentials is None:
                # Credentials go when a cluster is shut down: this one is ending (or is not this user's).
                machine = running[0]
                try:
                    self.provider.wait([machine.id], timeout=SHUTDOWN_WAIT)
                except TimeoutError:
                    raise ClusterOptionError(
                        f"cluster {self.cluster_name!r} is running (scheduler machine {machine.id}) but its credentials are not in "
                        f"{self._credentials_path.parent}; give another name= or wait for it to end"
                    ) from None
                running = []
            if running:
                machine = running[0]
                logger.info("attaching to running cluster %s (scheduler machine %s)", self.cluster_name, machine.id)
                return machine, int(machine.tags[PORT_TAG]), credentials, True
            credentials = ClusterCredentials.temporary()
            credentials.save(self._credentials_path)
            try:
                machine, port = self._launch(credentials)
            except BaseException:
                self._credentials_path.unlink(missing_ok=True)  # no cluster of this name runs
                raise
            return machine, port, credentials, False

    def _plan(self, credentials: ClusterCredentials, scheduler_port: int, dashboard_port: int) -> ClusterPlan:
        options, spec = self.options, self.options.spec
        instance = self.provider.choose_instance_type(spec)
        if spec.image:  # the image's python, with the agent's prefect_remote mounted in (BootPayload.agent_code)
            command, env = agent_code_command(NODE_MODULE), {}
        elif spec.software or not self.provider.shares_host_software:  # the environment's python (or, with none, the agent's)
            command, env = ["python", "-m", NODE_MODULE], {}
        else:  # no environment named: the launcher's interpreter (the local provider's machines share its disk)
            command, env = [sys.executable, "-m", NODE_MODULE], {"PYTHONPATH": os.pathsep.join(launcher_python_path())}
        worker = WorkerPlan(
            spec=spec.model_copy(update={"keepalive": None, "idle_timeout": None}).to_wire(),
            secrets=spec.secret_environ,
            command=[*command, "worker"],
            env=env,
            nthreads=options.nthreads(instance.cpu),
            memory_limit=instance.memory,
        )
        # The scheduler's machine launches workers with the creator's store (where the environment
        # is) and agent (stock-image machines can neither build prefect-remote's wheel nor store it).
        store = agent = None
        if spec.software:
            store = self.provider.machine_store().url  # (a pool's provider block may name its own)
        if not self.provider.shares_host_software:
            agent = dataclasses.asdict(self.provider.agent_source(spec))
        return ClusterPlan(
            name=self.cluster_name,
            provider=self.provider.name,
            provider_options=self.provider.client_options(),
            credentials=credentials.to_json(),
            keepalive=spec.keepalive,
            idle_timeout=spec.idle_timeout,
            minimum=options.minimum,
            maximum=options.maximum,
            adaptive=options.adaptive,
            worker=worker,
            scheduler_port=scheduler_port,
            dashboard_port=dashboard_port,
            tags=dict(spec.tags),
            store=store,
            agent=agent,
            image=spec.image,
            client_versions=dask_versions() if spec.image else None,
        )

    def _launch(self, credentials: ClusterCredentials) -> tuple[Machine, int]:
        spec = self.options.spec
        port, dashboard_port = self.provider.dask_ports or (free_port(), free_port())
        plan = self._plan(credentials, port, dashboard_port)
        scheduler_spec = MachineSpec(
            software=spec.software,
            image=spec.image,
            region=spec.region,
            tags=spec.tags,
            allow_ingress_from=spec.allow_ingress_from,
            inbound=True,
            keepalive=plan.keepalive + KEEPALIVE_BACKSTOP,
        )
        command, env, secrets = [*plan.worker.command[:-1], "scheduler"], plan.worker.env, {PLAN_ENV: plan.to_json()}
        agent = plan.agent_source()
        if spec.image:
            # In the image, the scheduler's provider calls go to a relay beside it, in the agent's environment
            # (provider_relay), which then needs prefect-remote's dependencies: a full agent, on a stock machine.
            relay = [sys.executable if self.provider.shares_host_software else "python", "-m", RELAY_MODULE]
            payload = BootPayload(command=command, env={**env, RELAY_ENV: SOCKET}, secrets=secrets, agent_code=True, beside=relay)
            if not self.provider.shares_host_software:
                agent = self.provider.agent_source(scheduler_spec.model_copy(update={"image": None}))
        else:
            payload = BootPayload(command=command, env=env, secrets=secrets)
        tags = {CLUSTER_TAG: self.cluster_name, ROLE_TAG: "scheduler", PORT_TAG: str(port), DASHBOARD_TAG: str(dashboard_port)}
        [scheduler] = self.provider.launch(scheduler_spec, payload, tags={**spec.tags, **tags}, owner=default_owner(), agent=agent)
        # This process keeps the scheduler (and the first workers) alive while they boot; once up,
        # the scheduler renews its own lease and its workers'.
        self._booting.append(scheduler.id)
        leases.add(self.provider, [scheduler.id], plan.keepalive + KEEPALIVE_BACKSTOP)
        workers: list[Machine] = []
        # With an image, the scheduler launches every worker, once it has found the image's Dask to match.
        if self.options.start_workers and not spec.image:
            contact = f"tls://{scheduler.private_address}:{port}"  # where workers reach the scheduler
            try:
                workers = launch_workers(
                    self.provider, plan, contact, self.options.start_workers, owner=default_owner(), controller=scheduler.id
                )
            except BaseException:  # (no spot capacity, a quota): the scheduler launched just now must not stay
                self._abandon("its cluster's first workers could not be launched")
                raise
            leases.add(self.provider, [m.id for m in workers], worker_lease(self.provider))
            self._booting += [m.id for m in workers]
        logger.info(
            "starting cluster %s: scheduler machine %s (%s), %d worker machine(s) of %s (%s)",
            self.cluster_name,
            scheduler.id,
            scheduler.cost_summary(),
            len(workers),
            spec.summary(),
            workers[0].cost_summary() if workers else "launched as the cluster scales",
        )
        return scheduler, port

    def _abandon(self, reason: str) -> None:
        """Ends the machines this process launched for a cluster that failed to start (it keeps their
        leases, so they would otherwise run as long as it does)."""
        booting, self._booting = self._booting, []
        leases.remove(booting)
        try:
            self.provider.terminate(booting, reason=reason)
        except Exception as error:
            logger.warning(
                "could not end machines %s of cluster %s (%s); they end themselves after their keepalive",
                ", ".join(booting),
                self.cluster_name,
                error,
            )

    async def _start(self) -> None:
        try:
            await super()._start()
        except BaseException as failed:
            ended = await asyncio.to_thread(self._scheduler_end) if isinstance(failed, Exception) else None
            await asyncio.to_thread(self._abandon, "its cluster failed to start")
            if not self.attached:  # no cluster of this name runs: its credentials go too
                await asyncio.to_thread(self._forget_credentials)
            if ended is not None and not isinstance(failed.__cause__, ClusterStartError):
                raise ClusterStartError(ended) from failed
            raise
        leases.remove(self._booting)  # the scheduler's controller holds them now
        self._booting = []
        await self._watch()
        if self.attached:  # the cluster scales as its latest client asked
            if self.options.adaptive:
                await self._request("prefect_remote_adapt", minimum=self.options.minimum, maximum=self.options.maximum)
            else:
                await self._request("prefect_remote_scale", n=self.options.minimum)
        link = self.dashboard_link  # its tunnel starts here, once: the link logged is one that works
        logger.info("cluster %s is up; dashboard: %s", self.cluster_name, link or "none (no address of its scheduler here)")

    def _scheduler_end(self) -> str | None:
        """Why the start failed, when its cause is the scheduler's machine ending after it first
        accepted a connection (Dask then says only that a stream closed); None while it lives."""
        try:
            machine = self.provider.describe(self.scheduler_machine.id)
        except Exception:  # the original error says more than a failed look
            return None
        if machine.alive:
            return None
        return f"scheduler machine {machine.id} ended while the cluster was starting: {machine.reason or 'no reason recorded'}"

    async def _watch(self) -> None:
        """Holds the cluster from this process: the controller counts this connection as a client's
        (keepalive runs from when it closes, whether or not a Client is connected) and sends the
        cluster's events over it, logged here on the ``prefect_remote.cluster`` logger."""
        comm = self._watch_comm = await self.scheduler_comm.live_comm()
        await comm.write({"op": "prefect_remote_watch", "reply": False})

        async def log_events() -> None:
            try:
                while True:
                    for event in await comm.read():
                        logger.log(logging.WARNING if event.get("level") == "warning" else logging.INFO, "%s", event.get("message"))
            except OSError:  # closed: by close(), or the scheduler is gone
                pass

        self._watching = asyncio.ensure_future(log_events())

    async def _close(self) -> None:
        if self._watch_comm is not None:
            await self._watch_comm.close()
            await self._watching
            self._watch_comm = self._watching = None
        if self._tunnel is not None:
            self._tunnel.close()
        await super()._close()
        if self.shutdown_scheduler:
            await asyncio.to_thread(self._forget_credentials)
            await asyncio.to_thread(self._log_cost)

    def _log_cost(self) -> None:
        """Logs what the cluster's machines cost, as far as their prices are known."""
        try:
            machines = self.provider.list({CLUSTER_TAG: self.cluster_name}, include_terminated=True)
        except Exception:  # the cost is a courtesy: closing must not fail for it
            return
        costs = [cost for machine in machines if (cost := machine.estimated_cost()) is not None]
        if costs:
            logger.info("cluster %s closed: %d machine(s), estimated cost $%.4f", self.cluster_name, len(machines), sum(costs))

    def _forget_credentials(self) -> None:
        """Removes the credentials of a cluster that was shut down, unless one of that name runs again."""
        with file_lock(self._credentials_path.with_suffix(".lock")):
            running = self.provider.list({CLUSTER_TAG: self.cluster_name, ROLE_TAG: "scheduler"})
            if all(machine.id == self.scheduler_machine.id for machine in running):
                self._credentials_path.unlink(missing_ok=True)

    def __exit__(self, *exc_info: Any) -> None:
        self._leave()
        return super().__exit__(*exc_info)

    async def __aexit__(self, *exc_info: Any) -> None:
        self._leave()
        return await super().__aexit__(*exc_info)

    def _leave(self) -> None:
        """Leaving a ``with`` block shuts down a cluster this process created; an attached one is
        only disconnected from (its creator, or keepalive, ends it). ``close()`` always shuts down."""
        self.shutdown_scheduler = not self.attached

    # -- scaling, delegated to the controller on the scheduler --------------------------------------
    async def _request(self, op: str, **kwargs: Any) -> Any:
        return await getattr(self.scheduler_comm, op)(**kwargs)

    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> Any:
        """Keeps ``n`` worker machines (and stops adaptive scaling)."""
        if self.status.name in ("closing", "closed"):
            return None  # closing shuts the scheduler down, which ends every worker machine
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ClusterOptionError(f"scale(n={n!r}): expected 0 or more workers")
        return self.sync(self._request, "prefect_remote_scale", n=n)

    def adapt(self, minimum: int = 0, maximum: int | float = math.inf, **kwargs: Any) -> Any:  # type: ignore[override]
        """Scales between ``minimum`` and ``maximum`` worker machines with the work, from the scheduler."""
        high = 10**6 if maximum == math.inf else maximum
        parse_n_workers([minimum, high])
        return self.sync(self._request, "prefect_remote_adapt", minimum=minimum, maximum=high)

    def status_info(self) -> dict[str, Any]:
        """What the controller is doing: machines, bounds, recent scaling events."""
        return self.sync(self._request, "prefect_remote_status")

    def machines(self) -> list[Machine]:
        """This cluster's running machines (scheduler and workers), as the provider sees them."""
        return self.provider.list({CLUSTER_TAG: self.cluster_name})

    # -- logs -------------------------------------------------------------------------------------
    async def _get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> Logs:
        """The machine logs (boot, agent and Dask output) of the scheduler and worker machines: the last
        :data:`LOG_LINES` lines of each, its log's last page (a long log's first is old news)."""
        logs = Logs()
        if cluster:
            logs["Cluster"] = Log("\n".join(line for _, line in self._cluster_manager_logs))
        machines = await asyncio.to_thread(self.provider.list, {CLUSTER_TAG: self.cluster_name})
        for machine in machines:
            role = machine.tags.get(ROLE_TAG)
            if (role == "scheduler" and scheduler) or (role == "worker" and workers):
                logs[f"{role} {machine.id}"] = Log(await asyncio.to_thread(self.provider.log_tail, machine.id, LOG_LINES))
        return logs
