"""What a hypervisor is to a cloud, for the sandbox clouds: each instance the emulated cloud says is
running boots its startup script (EC2 user data, a GCE startup-script) as a local machine, a stock
one: in a root of its own (:mod:`prefect_remote.providers.local.own_root`: its writes to ``/`` land
on its own disk, kept across its reboots), started in ``/`` with cloud-init's environment (no HOME, a
minimal PATH) and nothing cached unless the sandbox's image is warm (:meth:`SandboxCloud.warm`), with
no way out of its network where its cloud would give it none. The two stay in step both ways: an instance
terminated through the API ends its machine, and a machine that ends (it powered itself off, or its
container's command exited) terminates its instance. A VM's machine outlives its boot script, as its
OS does on its cloud (:attr:`InstanceRunner.outlives_boot`): it ends when it powers itself off (the
image's ``shutdown``) or is terminated, never merely because its boot script exited.

A cloud's sandbox supplies two callables: ``instances()`` (what the control plane holds, read
straight from the emulator's state, so the sandbox's own bookkeeping makes no API calls) and
``terminate(instance_id, reason, exit_code)`` (the machine's exit code: a Cloud Run task reports it;
None when unknown, as for an instance that never booted).

>>> runner = InstanceRunner(home, instances=list_instances, terminate=end_instance, image_env=env_for)  # doctest: +SKIP
>>> runner.start()                                                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import MachineNotFound
from prefect_remote.providers.base import Machine
from prefect_remote.providers.local import LocalProvider, records
from prefect_remote.providers.local.isolation import IsolationError, netns_name, private_veth
from prefect_remote.providers.local.start import start_machines
from prefect_remote.sandbox.images import INSTANCE_STORAGE
from prefect_remote.sandbox.vpc import VPC, Ingress

if TYPE_CHECKING:
    from prefect_remote.sandbox.images import SandboxImages

logger = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks at the control plane
KEEP_FORWARDS_EVERY = 3.0  # seconds between renewals of the host forwards instances use
FIREWALLS_EVERY = 0.5  # seconds between looks at the instances' ingress rules (a new group member, a changed rule)
INSTANCE_TAG = "sandbox-instance"  # a machine's tag naming the instance it runs
# EC2's states of an instance whose machine ended but which itself stays, its root volume with it (stopped by its
# own shutdown, as InstanceInitiatedShutdownBehavior=stop asks): its disk goes when it is terminated or gone.
STOPPED = frozenset({"stopped", "stopping"})
# Variables of an image that name its own baked folders (a warm uv cache, a root with uv and agents):
# they are mounted into the instances that have them, as folders of the image.
IMAGE_FOLDER_VARIABLES = ("UV_CACHE_DIR", "PREFECT_REMOTE_ROOT")


def own_root_unavailable() -> str | None:
    """None where each instance can have a root of its own here (a mount namespace), else why not."""
    if not sys.platform.startswith("linux"):
        return f"a sandbox instance's own root needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "a sandbox instance's own root needs root (a mount namespace and an overlay of /): run the sandbox as root"
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        return "a sandbox instance's own root needs unshare and chroot (util-linux, coreutils)"
    return None


@dataclass(frozen=True)
class Instance:
    """An instance as the emulated control plane holds it."""

    id: str
    state: str  # "pending", "running", "terminated"… (a cloud's own words)
    script: str | None  # what it boots; None: nothing to run (an image with no startup script)
    instance_type: str
    region: str
    tags: dict[str, str] = field(default_factory=dict)
    egress: bool = True  # whether its network has a way out to the internet (the package index)
    private_address: str | None = None  # its address in the cloud's VPC, with the VPC's prefix ("172.31.5.6/16")
    # A VM: its OS outlives its boot script (EC2 user data, a GCE startup script), running and billing until
    # something powers it off or terminates it. Not a container (a Cloud Run task), which ends with its command.
    vm: bool = True
    # Whether its image carries a container engine (Podman or Docker). One without (EC2's stock Amazon Linux
    # 2023, the Compute Engine images) has none until its boot installs one with its package manager (OwnRoot:
    # a dnf or apt-get that copies this host's Podman in).
    engine_installer: str | None = None  # that package manager (dnf, apt-get); None: the image carries an engine

    @property
    def ended(self) -> bool:
        return self.state in ("terminated", "shutting-down", "stopped", "stopping", "TERMINATED", "STOPPING")


class InstanceRunner:
    """Boots a sandbox cloud's instances as local machines under ``home`` (the local provider's
    isolation: a network namespace per instance where this host offers them).

    ``image_env(instance)`` is what the instance's image puts in its environment (the emulated
    cloud's endpoints, its metadata service); ``booted(instance, machine)`` lets the cloud record the
    machine's addresses as the instance's. With a ``vpc`` (namespace isolation only), each instance
    also has its private address on the VPC's bridge, which this host cannot reach, and admits what
    ``ingress(instance)`` (its cloud's rules) allows, kept up to date each round. With ``boots`` off,
    instances are followed but never booted (a control-plane benchmark's: the provider's traffic alone)."""

    def __init__(
        self,
        home: str | Path,
        *,
        instances: Callable[[], Iterable[Instance]],
        terminate: Callable[[str, str, int | None], None],
        image_env: Callable[[Instance], dict[str, str]],
        booted: Callable[[Instance, Machine], None] = lambda instance, machine: None,
        isolation: str | None = None,
        vpc: VPC | None = None,
        ingress: Callable[[Instance], list[Ingress]] = lambda instance: [],
        boots: bool = True,
    ) -> None:
        self.boots = boots
        self.machines = LocalProvider(home, isolation=isolation)
        self.vpc = vpc if self.machines.isolation == "namespace" else None
        self._ingress = ingress
        self._next_firewalls = 0.0
        self._instances, self._terminate, self._image_env, self._booted = instances, terminate, image_env, booted
        self._running: dict[str, str] = {}  # instance id -> local machine id
        self._seen: set[str] = set()  # every instance booted (or skipped), so none boots twice
        self._booting = threading.Lock()
        self._stopping: set[str] = set()  # machines asked to stop, whose instance is shutting down
        self._rebooting: set[str] = set()  # instances whose machine ends to boot again (a reset, a restart)
        self._stopped: set[str] = set()  # ended machines whose instance is stopped: their disk stays until it is terminated
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shared: list[str] = []  # host folders every instance mounts at the same path (a test's scratch folder)
        # The image's clock for a scheduled `shutdown +N`: seconds per minute (a test's knob, to stay quick).
        self.shutdown_minute = 60
        # Whether a VM stays up after its boot script exits, as on its cloud (its OS runs on until it powers
        # off or is terminated). On by default; off (a test's switch, SandboxCloud.vms) a VM ends with its boot
        # script, which is kinder than a cloud to a boot that ends nothing.
        self.outlives_boot = True

    @property
    def host_address(self) -> str:
        """This host's address as the instances reach it."""
        return self.machines.host_address

    def reachable_url(self, url: str) -> str:
        """``url`` (a service on this host's loopback) as instances reach it."""
        return self.machines.reachable_url(url)

    def network_env(self) -> dict[str, str]:
        """The way out the instances' network gives: isolated machines reach the package index
        through this host's egress proxy (as VMs through a NAT) and nothing else."""
        if self.machines.isolation != "namespace":
            return {}
        from prefect_remote.providers.local.gateway import EGRESS_PORT

        proxy = f"http://{self.host_address}:{EGRESS_PORT}"
        return {"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": self.host_address, "no_proxy": self.host_address}

    def disk_of(self, instance_id: str) -> Path:
        """The folder that holds what ``instance_id`` wrote to its own root (``upper/`` mirrors its ``/``),
        kept across its reboots and removed when it ends."""
        return self.machines.home / "instances" / instance_id / "disk"

    def machine_of(self, instance_id: str) -> str | None:
        """The local machine running ``instance_id``, while it runs."""
        return self._running.get(instance_id)

    def reboot(self, instance_id: str) -> None:
        """Reboots ``instance_id``: its machine ends, then boots again from the instance's script as
        it is then (the cloud decides whether a reboot re-runs it), under the same instance."""
        with self._booting:
            machine_id = self._running.get(instance_id)
            if machine_id is None:
                self._seen.discard(instance_id)  # not running: booted again by the next round
                return
            self._rebooting.add(instance_id)
        self.machines.terminate([machine_id], reason="instance rebooted")

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Waits until no machine runs for an instance that has ended (the next rounds end them)."""
        deadline = time.monotonic() + timeout
        while True:
            ended = {instance.id for instance in self._instances() if instance.ended}
            lingering = [machine.id for machine in self.machines.list() if machine.tags.get(INSTANCE_TAG) in ended]
            if not lingering:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox machines of terminated instances still running after {timeout}s: {', '.join(lingering)}")
            time.sleep(POLL)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sandbox-instance-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops following the control plane and ends every machine still running, waiting for them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        machine_ids = list(self._running.values())
        self.machines.terminate(machine_ids, reason="sandbox stopped")
        try:
            self.machines.wait(machine_ids, timeout=30)
        except TimeoutError as error:
            logger.warning("sandbox: %s", error)
        self.machines.cleanup_host()

    def _loop(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self.step()
            except Exception:  # the sandbox keeps serving; the next round tries again
                logger.exception("sandbox instance runner")

    def step(self) -> None:
        """One round: boot new instances, end machines of terminated ones, terminate instances whose
        machine ended; and, every FIREWALLS_EVERY seconds, bring running instances' ingress rules up to date."""
        firewalls = self.vpc is not None and time.monotonic() >= self._next_firewalls
        if firewalls:
            self._next_firewalls = time.monotonic() + FIREWALLS_EVERY
        instances = list(self._instances())
        self._drop_disks_of_ended(instances)
        for instance in instances:
            if instance.ended:  # (shutting-down: its machine stops, then the instance is terminated below)
                machine_id = self._running.get(instance.id)
                if machine_id is not None and machine_id not in self._stopping:
                    self._stopping.add(machine_id)
                    self.machines.terminate([machine_id], reason="instance terminated")
                self._seen.add(instance.id)
            else:
                self.boot(instance)
                if firewalls:
                    self._keep_firewall(instance)
        for instance_id, machine_id in list(self._running.items()):
            try:
                machine = self.machines.describe(machine_id)
            except MachineNotFound:
                machine = None
            if machine is None or not machine.alive:
                self._running.pop(instance_id, None)
                if self.vpc is not None:
                    self.vpc.forget(netns_name(machine_id))
                if instance_id in self._rebooting:  # booted again by the next round, the instance running on
                    with self._booting:
                        self._rebooting.discard(instance_id)
                        self._seen.discard(instance_id)
                    continue
                reason = (machine.reason if machine else None) or "instance shut down"
                if reason.startswith("isolation setup failed"):  # the sandbox's fault, not the instance's: say it here
                    logger.warning("sandbox: instance %s could not boot: %s", instance_id, reason)
                self._terminate(instance_id, reason, machine.exit_code if machine else None)
                if self._state_of(instance_id) in STOPPED:  # EC2's stop (its own shutdown, as asked): its volume stays
                    self._stopped.add(instance_id)
                else:
                    shutil.rmtree(self.disk_of(instance_id), ignore_errors=True)  # its disk goes with it

    def _state_of(self, instance_id: str) -> str | None:
        return next((instance.state for instance in self._instances() if instance.id == instance_id), None)

    def _drop_disks_of_ended(self, instances: list[Instance]) -> None:
        """A stopped instance's disk goes once the instance is terminated (or gone), as its EBS volume does."""
        states = {instance.id: instance.state for instance in instances}
        for instance_id in [i for i in self._stopped if states.get(i) in (None, "shutting-down", "terminated")]:
            self._stopped.discard(instance_id)
            shutil.rmtree(self.disk_of(instance_id), ignore_errors=True)

    def boot(self, instance: Instance) -> None:
        """Boots ``instance`` unless it was booted before. The cloud's sandbox may call this as the
        instance is created, so that the API's answer already carries the machine's addresses; the
        runner's rounds boot any instance it did not."""
        with self._booting:
            if instance.id in self._seen:
                return
            self._seen.add(instance.id)
            if instance.script is not None and self.boots:
                self._boot(instance)

    def _keep_firewall(self, instance: Instance) -> None:
        """Gives a running instance's namespace the ingress rules as they are now (a group's members
        come and go), once its private link is up: until then its machine applies the rules it booted with."""
        machine_id = self._running.get(instance.id)
        if self.vpc is None or machine_id is None or instance.private_address is None:
            return
        if Path("/sys/class/net", private_veth(machine_id)).exists():
            try:
                self.vpc.apply(netns_name(machine_id), self._ingress(instance))
            except IsolationError as error:  # (its machine ending meanwhile): the round goes on
                if Path("/sys/class/net", private_veth(machine_id)).exists():
                    logger.warning("sandbox: instance %s keeps its previous ingress rules: %s", instance.id, error)

    def _boot(self, instance: Instance) -> None:
        unavailable = own_root_unavailable()
        if unavailable:
            logger.warning("sandbox: instance %s could not boot: %s", instance.id, unavailable)
            self._terminate(instance.id, f"sandbox could not boot it: {unavailable}", None)
            return
        env = {**self.network_env(), **self._image_env(instance)}
        image_folders = [env[name] for name in IMAGE_FOLDER_VARIABLES if name in env]
        private = None
        if self.vpc is not None and instance.private_address is not None:
            private = self.vpc.link(instance.private_address, self._ingress(instance))
        record = {
            "tags": {INSTANCE_TAG: instance.id},
            "owner": None,
            "spec": f"sandbox instance {instance.id}",
            "instance_type": instance.instance_type,
            "region": instance.region,
            "spot_policy": "on-demand",
            "vm_type": None,
            "limits": {"cpu": None, "memory": None},  # a 2-core host runs a 64-core type's work as it can
            "boot_folder": records.ROOT,  # as cloud-init and Google's startup scripts, in the image's / (not a work folder)
            "stock_env": True,  # and with their environment: a minimal PATH, no HOME
            "own_root": {
                "disk": str(self.disk_of(instance.id)),
                "shared": [*self.shared, *image_folders],
                "volumes": [INSTANCE_STORAGE],  # the engine's layers, on the disk as a VM's are
                "minute": self.shutdown_minute,
                "outlives_boot": self.outlives_boot and instance.vm,
                "engine_installer": instance.engine_installer,
            },
            "private_link": private,
        }
        try:
            [machine_id] = start_machines(
                self.machines.host,
                launch_id=instance.id,
                boot_script=instance.script or "",
                record=record,
                count=1,
                has_secrets=False,
                software=True,  # the image reaches the package index (through the egress proxy)
                image_env=env,
            )
        except Exception as error:  # as a hypervisor that cannot place an instance: it ends
            logger.warning("sandbox: instance %s could not boot: %s", instance.id, error)
            self._terminate(instance.id, f"sandbox could not boot it: {error}", None)
            return
        self._running[instance.id] = machine_id
        self._booted(instance, self.machines.describe(machine_id))


class SandboxCloud:
    """What every sandbox cloud shares around its :class:`InstanceRunner` (``self._runner`` while
    started): this host's address as instances see it, ports of this host exposed to them, the
    forwards that keep this host's services (:meth:`_forwarded`) reachable, and use as a context
    manager of its ``start()`` and ``stop()``."""

    expose: list[int]
    warm_cache: bool = False  # instances boot with nothing cached unless a test asks (see warm())
    _root: Path  # the warm image's shared root: uv, agent environments (PREFECT_REMOTE_ROOT)
    _images: dict[str, bool]  # instance (or metadata key) -> whether it boots from the warm image
    _runner: InstanceRunner | None = None
    images: SandboxImages | None = None  # the registry and engine its instances use (use_images())
    _black_hole: _BlackHole | None = None
    _keeper: threading.Thread | None = None
    _stopping: threading.Event | None = None

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def exports(self) -> dict[str, str]:
        """Everything a shell needs to use the sandbox by default (``export NAME=VALUE``)."""
        raise NotImplementedError

    def end_all_instances(self, timeout: float = 30.0) -> list[str]:
        """Ends every instance still alive and waits until their machines have ended; returns their ids."""
        raise NotImplementedError

    def _iam_gate(self) -> Any:
        """What enforces IAM (with ``on`` and ``refusals``), or None when this sandbox enforces none."""
        raise NotImplementedError

    @property
    def refusals(self) -> list[str]:
        """What IAM refused, oldest first (who, which permission, on what): also the calls whose
        failure the code under test swallowed."""
        gate = self._iam_gate()
        return list(gate.refusals) if gate is not None else []

    @contextlib.contextmanager
    def enforcing(self, on: bool) -> Iterator[None]:
        """Within the block IAM is enforced (``on``) or not, whatever it was before; for a test that
        needs it off."""
        gate = self._iam_gate()
        if gate is None:
            if on:
                raise RuntimeError("this sandbox was started with enforce_iam=False")
            yield
            return
        before, gate.on = gate.on, on
        try:
            yield
        finally:
            gate.on = before

    @contextlib.contextmanager
    def warm(self, on: bool = True) -> Iterator[None]:
        """Within the block instances boot from a warm image (``on``) or a stock one, whatever
        :attr:`warm_cache` was before; for a test that measures or needs a cold boot."""
        before, self.warm_cache = self.warm_cache, on
        try:
            yield
        finally:
            self.warm_cache = before

    @contextlib.contextmanager
    def vms(self, *, outlive_boot: bool = True, minute: int = 60) -> Iterator[None]:
        """Within the block the VMs booted outlive their boot script (``outlive_boot``, the default
        everywhere: a VM's OS runs on after its user data or startup script, until it powers itself
        off or is terminated) or end with it (off: kinder than a cloud, for a test that needs it), and
        their image's scheduled ``shutdown +N`` counts ``minute`` seconds a minute (a test's clock, to
        stay quick)."""
        runner = self._runner
        if runner is None:
            raise RuntimeError("vms(): this sandbox runs no instances (its instance runner is not started)")
        before = runner.outlives_boot, runner.shutdown_minute
        runner.outlives_boot, runner.shutdown_minute = outlive_boot, minute
        try:
            yield
        finally:
            runner.outlives_boot, runner.shutdown_minute = before

    def use_images(self, images: SandboxImages) -> None:
        """From now on the instances' image has its container engine (Podman) set up for ``images``'
        registry, and :meth:`exports` carries the images' variables (``DOCKER_HOST``,
        ``PREFECT_REMOTE_SANDBOX_REGISTRY``, ``PREFECT_REMOTE_SANDBOX_IMAGE``). The ready image's
        layers, which a warm image reads, are mounted in every instance (read through the instance's
        own overlaid root, they would not mount as a container's layers)."""
        if self._runner is None:
            raise RuntimeError("use_images(): start the sandbox first")
        self.images = images
        if str(images.layers) not in self._runner.shared:
            self._runner.shared.append(str(images.layers))

    def _images_exports(self) -> dict[str, str]:
        return self.images.exports() if self.images is not None else {}

    def _engine_env(self, instance: str) -> dict[str, str]:
        """What the instances' image sets for its engine (its configuration files), once :meth:`use_images`
        gave a registry; a warm image's (:meth:`_image_cache_env`) has the ready Python image's layers."""
        if self.images is None:
            return {}
        return self.images.instance_env(warm=self._images.setdefault(instance, self.warm_cache))

    def _image_cache_env(self, instance: str) -> dict[str, str]:
        """What a warm image sets (:attr:`warm_cache` when ``instance`` first booted: its image is
        its own for life, reboots included): this host's uv cache and a root shared by every
        instance (uv, agent environments), as an image baked after one boot has them. A stock image
        (the default) has neither: each instance downloads uv and builds its agent."""
        if not self._images.setdefault(instance, self.warm_cache):
            return {}
        from prefect_remote.software.rebuild import uv_cache_dir

        self._root.mkdir(parents=True, exist_ok=True)
        return {"PREFECT_REMOTE_ROOT": str(self._root), **({"UV_CACHE_DIR": cache} if (cache := uv_cache_dir()) else {})}

    def no_egress_env(self) -> dict[str, str]:
        """What an instance with no way out of its network gets: its connections beyond the sandbox
        hang unanswered (a proxy that never answers), as packets to the internet from a private
        subnet with no NAT are dropped; the cloud's own endpoints stay reachable."""
        if self._black_hole is None:
            self._black_hole = _BlackHole()
        url = self.expose_port(self._black_hole.port)
        return {"HTTPS_PROXY": url, "https_proxy": url, "HTTP_PROXY": url, "http_proxy": url}

    def _close_black_hole(self) -> None:
        if self._black_hole is not None:
            if self._black_hole.port in self.expose:
                self.expose.remove(self._black_hole.port)
            self._black_hole.close()
            self._black_hole = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def sandbox_host(self) -> str:
        """This host's address as the sandbox's instances reach it (a VPC address, as it were)."""
        return self._runner.host_address if self._runner else "127.0.0.1"

    def expose_port(self, port: int) -> str:
        """Makes this host's ``127.0.0.1:port`` (a Prefect server) reachable from the instances;
        returns the address they and this host use for it, ``http://<sandbox_host>:port``."""
        if self._runner is None:
            raise RuntimeError("the sandbox runs no instances, or is not started")
        if port not in self.expose:
            self.expose.append(port)
        return self._runner.reachable_url(f"http://127.0.0.1:{port}")

    def _forwarded(self) -> list[str]:
        """The URLs on this host's loopback that instances use (the cloud's endpoints)."""
        return []

    def _start_forwards(self) -> None:
        self._stopping = threading.Event()
        self._keeper = threading.Thread(target=self._keep_forwards, args=(self._stopping,), name="sandbox-forwards", daemon=True)
        self._keeper.start()

    def _stop_forwards(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._keeper is not None:
            self._keeper.join()
        self._keeper = self._stopping = None

    def _keep_forwards(self, stopping: threading.Event) -> None:
        """Keeps the host forwards the instances use (the cloud's endpoints, exposed ports) alive."""
        while True:
            runner = self._runner
            if runner is not None:
                for url in [*self._forwarded(), *(f"http://127.0.0.1:{port}" for port in self.expose)]:
                    try:
                        runner.reachable_url(url)
                    except Exception as error:
                        logger.warning("sandbox: cannot forward %s to the instances: %s", url, error)
            if stopping.wait(KEEP_FORWARDS_EVERY):
                return


class _BlackHole:
    """A TCP port on this host's loopback that accepts connections and never answers: where the
    traffic of an instance with no egress goes (it hangs until the client's own timeout)."""

    def __init__(self) -> None:
        import socket

        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._held: list[Any] = []
        self._closed = threading.Event()
        threading.Thread(target=self._hold, name="sandbox-no-egress", daemon=True).start()

    def _hold(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._held = [*self._held[-63:], connection]  # held open, unanswered (the oldest let go)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        for connection in self._held:
            connection.close()
