"""The cluster's controller, a plugin on its scheduler: it owns the worker machines, scales them
(to a fixed count or adaptively between bounds), and closes the scheduler once nobody needs it.

It lives on the scheduler's machine, not in the process that created the cluster, so scaling and
clean-up go on after that process has gone and while others attach.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import Any

from distributed import SchedulerPlugin
from distributed.batched import BatchedSend
from distributed.comm import CommClosedError
from distributed.deploy.adaptive_core import AdaptiveCore

from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG, ClusterPlan, launch_workers, worker_lease
from prefect_remote.errors import AccessDenied, MachineNotFound
from prefect_remote.lease import LeaseKeeper
from prefect_remote.providers import provider_class
from prefect_remote.providers.base import Machine
from prefect_remote.units import format_duration

TICK = 0.5  # seconds between keepalive checks
# How long the cloud may refuse the controller a permission (listing or launching its workers) before
# it closes the cluster, naming the refusal: a missing permission does not heal, and a cluster that can
# neither see nor replace its workers would leave its clients waiting for ever. Long enough for a new
# grant to take effect (Google: typically 2 minutes; IAM on AWS: seconds).
REFUSED_LIMIT = 300.0
ADAPT_INTERVAL = 1.0  # seconds between scaling decisions (Dask's default)
BOOT_FAILURES_BEFORE_BACKOFF = 3
BACKOFF = 30.0  # seconds without launching after repeated boot failures; the longest wait after failed launches
# Warnings of these loggers on the scheduler's machine (spot fallback, lease renewal trouble) become
# cluster events, which reach the processes holding the cluster.
FORWARDED_LOGGERS = ("prefect_remote.providers", "prefect_remote.lease")


class MachinePool(AdaptiveCore):
    """Worker machines as Dask's adaptive core sees them: requested = alive machines of this cluster
    (the provider is the source of truth), observed = workers connected to the scheduler."""

    def __init__(self, controller: ClusterController) -> None:
        plan = controller.plan
        super().__init__(minimum=plan.minimum, maximum=plan.maximum, wait_count=3)
        self.controller = controller
        self.adaptive = plan.adaptive
        self.machines: dict[str, Any] = {}
        self.joined: set[str] = set()  # machines that ever connected as workers
        self.boot_failures = 0
        self.launch_failures = 0  # launches refused in a row (no capacity, a quota, a permission)
        self.paused_until = 0.0

    @property
    def plan(self) -> set[str]:  # type: ignore[override]
        return set(self.machines)

    @property
    def requested(self) -> set[str]:  # type: ignore[override]
        return set(self.machines)

    @property
    def observed(self) -> set[str]:  # type: ignore[override]
        names = {ws.name for ws in self.controller.scheduler.workers.values()}
        if names - self.joined:
            self.boot_failures = 0  # a worker booted: failures are no longer "in a row"
            self.joined |= names
        return names & set(self.machines)

    async def target(self) -> int:
        if not self.adaptive:
            return self.minimum
        return self.controller.scheduler.adaptive_target()

    async def workers_to_close(self, target: int) -> list[str]:
        return self.controller.scheduler.workers_to_close(target=target, attribute="name")

    async def refresh(self) -> None:
        """Re-reads this cluster's worker machines from the provider and holds their leases."""
        controller = self.controller
        try:
            found = await asyncio.to_thread(controller.provider.list, {CLUSTER_TAG: controller.plan.name, ROLE_TAG: "worker"})
        except Exception as error:
            controller.refused("listing workers", error)
            raise
        controller.refused("listing workers", None)
        alive = {m.id: m for m in found}
        for machine_id in set(self.machines) - set(alive):
            machine = await self._unlisted(machine_id)
            if machine is not None:
                alive[machine_id] = machine
            elif machine_id not in self.joined:
                await self._boot_failed(machine_id)
        self.machines = alive
        adopted = set(alive) - set(controller.leases.held())  # e.g. the first workers, launched by the cluster's creator
        if adopted:
            controller.leases.add(controller.provider, adopted, worker_lease(controller.provider))

    async def _unlisted(self, machine_id: str) -> Machine | None:
        """A machine of this pool that the provider's listing left out, if it has not ended: a cloud lists
        a new machine only a while after its launch (EC2's eventual consistency), and may not know its
        id at first either (then it counts as alive for the provider's ``visible_after``)."""
        provider = self.controller.provider
        try:
            machine = await asyncio.to_thread(provider.describe, machine_id)
        except MachineNotFound:
            launched = self.machines[machine_id]
            return launched if time.time() - launched.created < provider.visible_after else None
        return machine if machine.alive else None

    async def _boot_failed(self, machine_id: str) -> None:
        try:
            reason = (await asyncio.to_thread(self.controller.provider.describe, machine_id)).reason
        except Exception:
            reason = "unknown"
        self.boot_failures += 1
        message = f"worker machine {machine_id} ended before joining the cluster: {reason}"
        if self.boot_failures >= BOOT_FAILURES_BEFORE_BACKOFF:
            self.paused_until = time.monotonic() + BACKOFF
            message += f"; {self.boot_failures} in a row, so no new workers for {format_duration(BACKOFF)}"
        self.controller.event(message, level="warning")

    async def scale_up(self, n: int) -> None:  # type: ignore[override]
        count = n - len(self.machines)
        if count <= 0 or time.monotonic() < self.paused_until:
            return
        controller = self.controller
        try:
            launched = await asyncio.to_thread(
                controller.launch_workers,
                controller.worker_contact,
                count,
                owner=f"dask-scheduler:{controller.machine_id}",
            )
        except Exception as error:  # tried again later, backing off: not once per scaling decision
            controller.refused("launching workers", error)
            self.launch_failures += 1
            wait = min(BACKOFF, 2.0**self.launch_failures)
            self.paused_until = time.monotonic() + wait
            controller.event(
                f"could not launch {count} worker machine(s): {error}; trying again in {format_duration(wait)}", level="warning"
            )
            return
        self.launch_failures = 0
        controller.refused("launching workers", None)
        self.machines.update({m.id: m for m in launched})
        controller.leases.add(controller.provider, [m.id for m in launched], worker_lease(controller.provider))
        first = launched[0]
        controller.event(f"launched {count} worker machine(s) ({first.cost_summary()}; {first.spec}): {', '.join(m.id for m in launched)}")

    async def scale_down(self, workers: list[str]) -> None:  # type: ignore[override]
        connected = set(workers) & self.observed
        # Retiring moves the results a worker holds to the others first; Dask keeps a worker whose
        # data has nowhere to go, and such a worker is not ended.
        retired = (
            await self.controller.scheduler.retire_workers(names=list(connected), remove=True, close_workers=True) if connected else {}
        )
        ended = (set(workers) - connected) | {info["name"] for info in retired.values()}
        if ended:
            await self.controller.end_workers(ended, "retired by the cluster's scaling")
        for machine_id in ended:
            self.machines.pop(machine_id, None)


class ClusterController(SchedulerPlugin):
    """See the module docstring. ``machine_id`` is the scheduler's own machine."""

    name = "prefect-remote"

    def __init__(self, plan: ClusterPlan, machine_id: str, provider: Any = None) -> None:
        self.plan = plan
        self.machine_id = machine_id
        # ``provider``: one that launches workers itself (the relay of a scheduler in an image); by
        # default the plan's provider, here, launching them with launch_workers.
        if provider is None:
            self.provider = provider_class(plan.provider)(**plan.provider_options)
            self.launch_workers = functools.partial(launch_workers, self.provider, plan)
        else:
            self.provider, self.launch_workers = provider, provider.launch_workers
        # Its own lease and its workers', renewed in one provider call per interval from the loop below
        # (not a thread): a wedged scheduler stops renewing, and its machine's agent ends it.
        self.leases = LeaseKeeper(background=False)
        self.leases.add(self.provider, [machine_id], plan.keepalive)
        self.pool = MachinePool(self)
        self.events: deque[tuple[float, str]] = deque(maxlen=200)
        self.last_client = time.monotonic()
        self.watchers: set[BatchedSend] = set()  # cluster objects holding the cluster (see handle_watch)
        self.worker_contact = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._forwarding: logging.Handler | None = None
        self._failing = ""  # the loop's last error, said once per streak
        self._refused: dict[str, float] = {}  # what the cloud refuses the controller a permission for -> since when
        self._closing: asyncio.Future | None = None

    # -- scheduler plugin hooks ----------------------------------------------------------------
    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers.update(
            prefect_remote_scale=self.handle_scale,
            prefect_remote_adapt=self.handle_adapt,
            prefect_remote_status=self.handle_status,
            prefect_remote_watch=self.handle_watch,
        )
        self._forwarding = _ToEvents(self, asyncio.get_running_loop())
        for name in FORWARDED_LOGGERS:
            logging.getLogger(name).addHandler(self._forwarding)
        me = await asyncio.to_thread(self.provider.describe, self.machine_id)
        self.worker_contact = f"tls://{me.private_address}:{self.plan.scheduler_port}"  # workers dial the scheduler inside the network
        self._task = asyncio.create_task(self._run())

    def add_client(self, scheduler, client: str) -> None:
        self.last_client = time.monotonic()

    def remove_worker(self, scheduler, worker: str, **kwargs: Any) -> None:
        self._wake.set()  # a worker left (its machine ended, a spot interruption): look at the machines now

    def update_graph(self, scheduler, **kwargs: Any) -> None:
        if not scheduler.workers:
            self._wake.set()  # work arrived and nobody can run it: scale now, not at the next tick

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self._forwarding is not None:
            for name in FORWARDED_LOGGERS:
                logging.getLogger(name).removeHandler(self._forwarding)
        if self.pool.machines:
            await self.end_workers(set(self.pool.machines), "the cluster's scheduler closed")

    # -- client requests (rpc handlers) -----------------------------------------------------------
    def handle_scale(self, n: int) -> None:
        self.pool.adaptive, self.pool.minimum, self.pool.maximum = False, n, n
        self.event(f"scaling to {n} worker(s)")
        self._wake.set()

    def handle_adapt(self, minimum: int, maximum: int) -> None:
        self.pool.adaptive, self.pool.minimum, self.pool.maximum = True, minimum, maximum
        self.event(f"adapting between {minimum} and {maximum} worker(s)")
        self._wake.set()

    async def handle_watch(self, comm) -> None:
        """A cluster object (``RemoteCluster``) holds the cluster through this connection while it is
        open, as a client does (so keepalive runs from when its process closes it, or dies), and the
        cluster's events are sent to it."""
        stream = BatchedSend(interval="50ms")
        stream.start(comm)
        self.watchers.add(stream)
        try:
            await comm.read()  # nothing is sent this way: this returns or raises once the other side is gone
        except Exception:
            pass
        finally:
            self.watchers.discard(stream)
            self.last_client = time.monotonic()
            stream.abort()

    def handle_status(self) -> dict[str, Any]:
        return {
            "scheduler_machine": self.machine_id,
            "worker_machines": sorted(self.pool.machines),
            "adaptive": self.pool.adaptive,
            "minimum": self.pool.minimum,
            "maximum": self.pool.maximum,
            "events": list(self.events),
        }

    # -- the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        next_adapt = next_renewal = next_refresh = 0.0
        # Listing the workers is an API call on a cloud: as often as their leases are read, at most
        # once per ADAPT_INTERVAL; and whenever a request or a worker leaving wakes the loop.
        refresh_every = max(ADAPT_INTERVAL, self.provider.lease_interval / 2)
        # Keepalive counts from now, when the scheduler accepts connections: not from when this plugin
        # was made, which is the scheduler's whole start earlier (seconds on a busy machine).
        self.last_client = time.monotonic()
        while True:
            try:
                if self._keepalive_expired():
                    return
                now = time.monotonic()
                if now >= next_renewal:
                    next_renewal = now + await asyncio.to_thread(self.leases.renew_due)
                woken = self._wake.is_set()
                if now >= next_adapt or woken:
                    self._wake.clear()
                    if now >= next_refresh or woken:
                        await self.pool.refresh()
                        next_refresh = now + refresh_every
                    await self.pool.adapt()
                    next_adapt = now + ADAPT_INTERVAL
                self._failing = ""
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a provider hiccup must not stop scaling or clean-up
                if repr(error) != self._failing:  # said once while it lasts, not at every tick
                    self._failing = repr(error)
                    self.event(f"controller error: {error!r}", level="warning")
            try:
                await asyncio.wait_for(self._wake.wait(), TICK)
            except TimeoutError:
                pass

    def refused(self, doing: str, error: Exception | None) -> None:
        """Notes how ``doing`` went: refused a permission (``error`` an :class:`~prefect_remote.errors.AccessDenied`)
        or not. Refused for :data:`REFUSED_LIMIT` in a row, the cluster closes, saying why, instead of
        leaving its clients to wait for workers it can neither see nor launch."""
        if not isinstance(error, AccessDenied):
            self._refused.pop(doing, None)
            return
        since = self._refused.setdefault(doing, time.monotonic())
        if time.monotonic() - since >= REFUSED_LIMIT and self._closing is None:
            lasted = format_duration(time.monotonic() - since)
            self.event(f"closing: the cloud has refused {doing} for {lasted}: {error}", level="warning")
            # Closing runs the plugin's close(), which cancels the loop: so not awaited from it.
            self._closing = asyncio.ensure_future(self.scheduler.close(reason=f"the cloud refused {doing}: {error}"))

    def _keepalive_expired(self) -> bool:
        """Closes the scheduler once no client has been connected for ``keepalive``."""
        clients = [c for c in self.scheduler.clients if c != "fire-and-forget"]
        now = time.monotonic()
        if clients or self.watchers:
            self.last_client = now
        gone_for = now - self.last_client
        if gone_for > self.plan.keepalive:
            self.event(f"closing: no client for {format_duration(gone_for)} (keepalive {format_duration(self.plan.keepalive)})")
            # Closing runs the plugin's close(), which cancels this loop: so not awaited from it.
            self._closing = asyncio.ensure_future(self.scheduler.close(reason="keepalive expired"))
            return True
        return False

    async def end_workers(self, machine_ids: set[str], reason: str) -> None:
        self.leases.remove(machine_ids)
        await asyncio.to_thread(self.provider.terminate, sorted(machine_ids), reason=reason)

    def event(self, message: str, *, level: str = "info") -> None:
        """Written to the scheduler's machine log and sent to connected clients."""
        print(f"[prefect-remote cluster] {level}: {message}", flush=True)
        self.events.append((time.time(), message))
        for stream in list(self.watchers):
            try:
                stream.send({"level": level, "message": message})
            except CommClosedError:
                self.watchers.discard(stream)
        try:
            self.scheduler.log_event("prefect-remote", {"level": level, "message": message})
        except Exception:
            pass


class _ToEvents(logging.Handler):
    """Warnings logged on the scheduler's machine (from any thread: launches run in one) as the
    controller's events, on its loop."""

    def __init__(self, controller: ClusterController, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.controller, self.loop = controller, loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.loop.call_soon_threadsafe(functools.partial(self.controller.event, record.getMessage(), level="warning"))
        except RuntimeError:  # the loop has closed
            pass
