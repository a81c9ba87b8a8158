"""Host-side isolation for local machines: network namespaces on a host-only bridge, cgroup v1 limits.

Everything here is detected, never assumed: :func:`namespace_unavailable` says why namespace
isolation cannot be used on this host (not Linux, not root, no ``ip``, no cgroup v1 ``memory`` and
``cpu`` controllers), and the local provider falls back to process isolation.
Standard library only: the per-machine hypervisor imports it. One cohesive thing over 500 lines: a
machine's isolation (network, cgroups, processes), set up and torn down as one.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prefect_remote.filelock import file_lock
from prefect_remote.providers.local import records

CGROUP_CONTROLLERS = ("memory", "cpu")
CGROUP_GROUP = "prefect-remote"
CPU_PERIOD_US = 100_000
# Every machine on this host trusts the certificate authorities the host trusts. A local machine's
# "image" is this host, so it also runs image= with the host's container engine as the launcher has
# it configured; a sandbox cloud's instance gets an engine of its own (its image's), never the host's.
HOST_TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT")
HOST_ENGINE_VARIABLES = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF", "CONTAINER_HOST", "DOCKER_HOST")


def host_trust_env() -> dict[str, str]:
    """The host's certificate-authority settings, which every machine on this host gets."""
    return {name: os.environ[name] for name in HOST_TRUST_VARIABLES if name in os.environ}


def host_engine_env() -> dict[str, str]:
    """The launcher's container-engine settings, which a local machine (and its monitor) gets."""
    return {name: os.environ[name] for name in HOST_ENGINE_VARIABLES if name in os.environ}


class IsolationError(RuntimeError):
    """Setting up or tearing down a machine's isolation failed."""


class SubnetConflict(IsolationError):
    """A bridge's subnet is used by something else on this host (see :meth:`Bridge.conflicts`)."""


def _run_ip(*args: str, batch: str | None = None) -> str:
    result = subprocess.run(["ip", *args], input=batch, capture_output=True, text=True)
    if result.returncode != 0:
        raise IsolationError(f"ip {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _delete_link(name: str) -> None:
    """Deletes a host interface (a veth: both ends at once), unless it is already gone."""
    if Path("/sys/class/net", name).exists():
        try:
            _run_ip("link", "del", name)
        except IsolationError:
            if Path("/sys/class/net", name).exists():  # not a race with another deleter
                raise


def _delete_netns(name: str) -> None:
    if Path("/run/netns", name).exists():
        try:
            _run_ip("netns", "del", name)
        except IsolationError:
            if Path("/run/netns", name).exists():
                raise


def _cgroup_v1_roots() -> dict[str, Path]:
    """Mount points of the cgroup v1 hierarchies carrying each controller we use."""
    roots: dict[str, Path] = {}
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return roots
    for line in mounts:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup":
            options = set(fields[3].split(","))
            for controller in CGROUP_CONTROLLERS:
                if controller in options:
                    roots.setdefault(controller, Path(fields[1]))
    return roots


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in ``controller``'s hierarchy: machines nest under their launcher.
    A launcher that is itself on a machine (a cluster's scheduler) counts as the host, so machines
    never nest inside (or share limits with) another machine."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            parts = path.strip("/").split("/") if path.strip("/") else []
            if CGROUP_GROUP in parts:
                parts = parts[: parts.index(CGROUP_GROUP)]
            return "/".join(parts)
    return ""


def leave_machine_cgroups() -> None:
    """Moves this process out of the machine cgroups it runs in, to its host-level cgroups."""
    roots = _cgroup_v1_roots()
    for controller in CGROUP_CONTROLLERS:
        if controller in roots:
            (roots[controller] / _own_cgroup(controller) / "cgroup.procs").write_text(str(os.getpid()))


@lru_cache(maxsize=1)
def namespace_unavailable() -> str | None:
    """``None`` if namespace isolation works here, else the reason it does not (found once per process)."""
    if not sys.platform.startswith("linux"):
        return f"namespace isolation needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "namespace isolation needs root (network namespaces and cgroups)"
    if shutil.which("ip") is None:
        return "namespace isolation needs the 'ip' command (iproute2)"
    roots = _cgroup_v1_roots()
    missing = [c for c in CGROUP_CONTROLLERS if c not in roots]
    if missing:
        return f"namespace isolation needs cgroup v1 controllers {', '.join(missing)} (not mounted here)"
    for controller, root in roots.items():
        if not os.access(root / _own_cgroup(controller), os.W_OK):
            return f"namespace isolation needs a writable cgroup v1 {controller} hierarchy ({root})"
    probe = f"prprobe{os.getpid()}-{secrets.token_hex(3)}"  # unique: threads of one process may probe at once
    try:
        _run_ip("netns", "add", probe)
        _run_ip("netns", "del", probe)
    except (IsolationError, OSError) as error:
        return f"namespace isolation cannot create network namespaces: {error}"
    return None


# -- cgroups --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cgroups:
    """A machine's cgroups, one directory per controller."""

    paths: dict[str, str]

    @classmethod
    def plan(cls, machine_id: str) -> Cgroups:
        roots = _cgroup_v1_roots()
        return cls({c: str(roots[c] / _own_cgroup(c) / CGROUP_GROUP / machine_id) for c in CGROUP_CONTROLLERS})

    def create(self, *, cpu: float | None, memory: int | None) -> None:
        for path in self.paths.values():
            os.makedirs(path, exist_ok=True)
        memory_dir = Path(self.paths["memory"])
        if memory:
            (memory_dir / "memory.limit_in_bytes").write_text(str(memory))
            memsw = memory_dir / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no swapping past the limit: a VM has no swap either
                memsw.write_text(str(memory))
        if cpu:
            cpu_dir = Path(self.paths["cpu"])
            (cpu_dir / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (cpu_dir / "cpu.cfs_quota_us").write_text(str(int(cpu * CPU_PERIOD_US)))

    def join(self) -> None:
        """Moves the calling process into every controller's cgroup."""
        for path in self.paths.values():
            Path(path, "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths.values():
            try:
                found.update(int(p) for p in Path(path, "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        try:
            for line in Path(self.paths["memory"], "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def remove(self) -> None:
        for path in self.paths.values():
            for _ in range(200):  # rmdir fails with EBUSY until the last process has been reaped
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    if error.errno != errno.EBUSY:
                        raise
                    kill_pids(self.pids(), signal.SIGKILL)
                    time.sleep(0.05)
            else:
                raise IsolationError(f"cgroup {path} is still busy after its processes were killed")


# -- network --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateLink:
    """A second link of a machine's namespace (``eth1``), on a bridge that has no address on this host:
    the machine's address there (``address``, with its network's prefix) is reachable from the other
    machines on that bridge only, never from the host (a sandbox cloud's VPC). ``firewall`` is an
    nftables ruleset the namespace gets before its boot starts (its cloud's ingress rules), or None."""

    bridge: str
    address: str  # "172.31.5.6/16"
    firewall: str | None = None


@dataclass(frozen=True)
class Network:
    """A machine's network namespace, its veth pair and its address on the host-only bridge, and its
    :class:`PrivateLink` when its launcher gives it one."""

    netns: str
    veth: str
    ip: str
    subnet: str
    bridge: str
    private: dict[str, str] | None = None  # a PrivateLink's fields (the record is JSON)

    @classmethod
    def plan(cls, machine_id: str, ip: str, bridge: Bridge, private: PrivateLink | None = None) -> Network:
        return cls(
            netns=netns_name(machine_id),
            veth=_veth_name(machine_id),
            ip=ip,
            subnet=bridge.subnet,
            bridge=bridge.name,
            private=private.__dict__ if private else None,
        )

    @property
    def prefix(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def create(self) -> None:
        bridge = Bridge(self.bridge, self.subnet)
        peer = f"prp{self.veth[3:]}"
        # Under the bridge's lock: no other home's cleanup removes the bridge between its check and the attach.
        with bridge.lock():
            bridge.ensure()
            _run_ip(
                "-batch",
                "-",
                batch=f"netns add {self.netns}\n"
                f"link add {self.veth} type veth peer name {peer}\n"
                f"link set {peer} netns {self.netns}\n"
                f"link set {self.veth} master {self.bridge} up\n",
            )
            bridge.forget_neighbour(self.ip)  # the address's previous machine had another MAC
        # No default route: the machine reaches the bridge (host and other machines), nothing beyond.
        _run_ip(
            "-n",
            self.netns,
            "-batch",
            "-",
            batch=f"link set {peer} name eth0\naddr add {self.ip}/{self.prefix} dev eth0\nlink set eth0 up\nlink set lo up\n",
        )
        if self.private:
            self._attach_private(PrivateLink(**self.private))

    def _attach_private(self, link: PrivateLink) -> None:
        """Puts ``eth1`` on the private link's bridge (made by the link's owner), with its address and
        firewall. The firewall first: no connection reaches the machine before its rules hold."""
        if link.firewall is not None:
            apply_firewall(self.netns, link.firewall)
        veth, peer = self._private_veth, f"prx{self.veth[3:]}"
        _run_ip(
            "-batch",
            "-",
            batch=f"link add {veth} type veth peer name {peer}\nlink set {peer} netns {self.netns}\n"
            f"link set {veth} master {link.bridge} up\n",
        )
        _run_ip("-n", self.netns, "-batch", "-", batch=f"link set {peer} name eth1\naddr add {link.address} dev eth1\nlink set eth1 up\n")

    @property
    def _private_veth(self) -> str:
        return f"prw{self.veth[3:]}"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def pids(self) -> set[int]:
        """Every process in the namespace: the machine's, including those that left its cgroups and
        environment behind (a container its engine runs with the machine's network)."""
        result = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return {int(pid) for pid in result.stdout.split()} if result.returncode == 0 else set()

    def remove(self) -> None:
        # The host end first: deleting it deletes the pair at once, whereas deleting the namespace
        # frees its interface later (asynchronously), which would still answer for the address while
        # the address is given to the next machine.
        _delete_link(self.veth)
        if self.private:
            _delete_link(self._private_veth)
        _delete_netns(self.netns)


LAUNCH_GRACE = 30.0  # seconds a launch may take between giving a machine its address and starting its monitor


def _machine_gone(directory: Path, entry: Path) -> bool:
    """Whether the machine in ``directory`` has ended, or can no longer run: its folder is gone, it
    recorded its end, its monitor died, or its launch never started a monitor."""
    if not directory.exists() or (directory / records.ENDED).exists():
        return True
    pid_file = directory / records.HYPERVISOR_PID
    if pid_file.exists():
        return live_pid(pid_file) is None
    try:
        return time.time() - entry.stat().st_mtime > LAUNCH_GRACE
    except FileNotFoundError:
        return True


def private_veth(machine_id: str) -> str:
    """The host end of machine ``machine_id``'s :class:`PrivateLink`, there once the link is up."""
    return f"prw{_veth_name(machine_id)[3:]}"


def netns_name(machine_id: str) -> str:
    """The network namespace of machine ``machine_id`` (namespace isolation)."""
    return f"pr-{machine_id}"


def apply_firewall(netns: str, ruleset: str) -> None:
    """Loads the nftables ``ruleset`` (one transaction: it replaces what it names) in namespace ``netns``."""
    result = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset, capture_output=True, text=True)
    if result.returncode != 0:
        raise IsolationError(f"nft in {netns} failed: {result.stderr.strip() or result.stdout.strip()}")


def _veth_name(machine_id: str) -> str:
    return f"prv{machine_id[-10:]}"


def host_address(subnet: str) -> ipaddress.IPv4Address:
    """The host's address on the bridge: the subnet's first address."""
    return next(ipaddress.IPv4Network(subnet).hosts())


# The private address blocks (RFC 1918) a free subnet is suggested from.
PRIVATE_BLOCKS = tuple(ipaddress.IPv4Network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def _free_subnet(wanted: ipaddress.IPv4Network, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network | None:
    """A subnet of ``wanted``'s size that overlaps none of ``taken``: the first after ``wanted`` in
    its private block (10.0.0.0/8 if it is in none), going round the block."""
    block = next((block for block in PRIVATE_BLOCKS if wanted.subnet_of(block)), PRIVATE_BLOCKS[0])
    if wanted.prefixlen < block.prefixlen:
        return None
    count, first = 2 ** (wanted.prefixlen - block.prefixlen), int(block.network_address)
    index = (int(wanted.network_address) - first) // wanted.num_addresses if wanted.subnet_of(block) else -1
    for step in range(1, min(count, 4096) + 1):
        candidate = ipaddress.IPv4Network((first + (index + step) % count * wanted.num_addresses, wanted.prefixlen))
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    return None


RUN_DIR = Path("/run/prefect-remote")


class _HeldLocks(threading.local):
    """The bridge locks this thread holds: taking one again must not wait for itself."""

    def __init__(self) -> None:
        self.names: set[str] = set()


_held = _HeldLocks()


class Bridge:
    """A host-only bridge and the registry of the addresses on it, shared by every prefect-remote home
    on this host (in /run, which a reboot clears together with the namespaces).

    Its whole lifetime is under :meth:`lock`, across homes: creating it, attaching machines, giving
    out and taking back addresses, starting and stopping its gateway services, and removing it."""

    def __init__(self, name: str, subnet: str) -> None:
        self.name = name
        self.subnet = subnet
        self.network = ipaddress.IPv4Network(subnet)
        self.address = str(host_address(subnet))
        self.registry = RUN_DIR / name
        self.cursor = RUN_DIR / f"{name}.next"  # the address given out last
        # A fixed, locally administered MAC. A bridge otherwise takes its lowest port's MAC and changes
        # it when that port's machine ends; machines that cached the old one for the host's address
        # then cannot reach the host until their neighbour entry expires (up to a minute).
        self.mac = "02:" + ":".join(f"{b:02x}" for b in hashlib.sha256(name.encode()).digest()[:5])

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The bridge's lock, shared by every process on this host; re-entrant within a thread (a launch
        that fails tears down what it set up while holding it)."""
        if self.name in _held.names:
            yield
            return
        with file_lock(RUN_DIR / f"{self.name}.lock"):
            _held.names.add(self.name)
            try:
                yield
            finally:
                _held.names.discard(self.name)

    def ensure(self) -> None:
        """Creates the bridge, with its MAC and the host's address on it, unless it exists as such.
        Refuses (:class:`SubnetConflict`) to put the subnet on it while anything else on this host
        routes part of it."""
        with self.lock():
            if not Path("/sys/class/net", self.name).exists():
                with self._claiming_subnet():
                    _run_ip(
                        "-batch",
                        "-",
                        batch=f"link add {self.name} address {self.mac} type bridge\n"
                        f"addr add {self.address}/{self.network.prefixlen} dev {self.name}\nlink set {self.name} up\n",
                    )
                return
            # One made by an earlier version (its MAC follows its ports), or left half made. Its MAC
            # is only changed while no machine is attached: attached ones have the current one cached.
            fixes = []
            mac = Path("/sys/class/net", self.name, "address").read_text().strip()
            if mac != self.mac and not any(Path("/sys/class/net", self.name, "brif").iterdir()):
                fixes.append(f"link set {self.name} address {self.mac}")
            if f" {self.address}/{self.network.prefixlen} " not in _run_ip("-4", "-o", "addr", "show", "dev", self.name):
                with self._claiming_subnet():
                    _run_ip("addr", "add", f"{self.address}/{self.network.prefixlen}", "dev", self.name)
            if not int(Path("/sys/class/net", self.name, "flags").read_text(), 16) & 1:  # IFF_UP
                fixes.append(f"link set {self.name} up")
            if fixes:
                _run_ip("-batch", "-", batch="".join(f"{fix}\n" for fix in fixes))

    @contextmanager
    def _claiming_subnet(self) -> Iterator[None]:
        """Refuses the subnet if anything on this host uses it (:meth:`refuse_conflicts`), else holds
        the host-wide subnet lock while the caller puts it on the bridge: two homes making bridges
        with overlapping subnets at once cannot both pass the check."""
        with file_lock(RUN_DIR / "subnets.lock"):
            self.refuse_conflicts()
            yield

    def conflicts(self) -> tuple[list[str], list[ipaddress.IPv4Network]]:
        """What on this host already uses the bridge's subnet, described, and every network the host
        routes. A conflict is a route (any table) to part of the subnet through anything but this
        bridge, such as another home's bridge, a VPN or a LAN: the host would send some machines'
        replies there, or theirs here. Another subnet's address on this very bridge conflicts too:
        the bridge's gateway services listen on one address only."""
        found, taken, routed = [], [], []
        for route in json.loads(_run_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
            try:
                network = ipaddress.IPv4Network(route.get("dst", "default"), strict=False)
            except ValueError:
                continue  # "default": a route to everything that any more specific route overrides
            taken.append(network)
            if not network.overlaps(self.network) or (route.get("dev") == self.name and network.subnet_of(self.network)):
                continue
            where = f"interface {route['dev']}" if route.get("dev") else f"a {route.get('type', 'unicast')} route"
            table = f" (routing table {route['table']})" if route.get("table") not in (None, "main", "local") else ""
            routed.append((network, f"{where}{table}"))
        # Each interface named once, by its widest route (not again by its address's and broadcast's own routes).
        for network, where in routed:
            if not any(network != wider and network.subnet_of(wider) for wider, there in routed if there == where):
                found.append(f"{network} is routed to {where}")
        if Path("/sys/class/net", self.name).exists():
            for link in json.loads(_run_ip("-j", "-4", "addr", "show", "dev", self.name) or "[]"):
                for address in link.get("addr_info", []):
                    interface = ipaddress.IPv4Interface(f"{address['local']}/{address['prefixlen']}")
                    taken.append(interface.network)
                    if interface != ipaddress.IPv4Interface(f"{self.address}/{self.network.prefixlen}"):
                        found.append(f"bridge {self.name} already has {interface} (a home with subnet {interface.network} uses it)")
        return sorted(set(found)), taken

    def refuse_conflicts(self) -> None:
        """Raises :class:`SubnetConflict` if anything on this host already uses the bridge's subnet
        (see :meth:`conflicts`), naming it, the subnet asked for, and a free one to ask for instead."""
        found, taken = self.conflicts()
        if not found:
            return
        free = _free_subnet(self.network, taken)
        raise SubnetConflict(
            f"local subnet {self.subnet} for bridge {self.name} is refused: {'; '.join(found)}. A bridge needs a subnet "
            "nothing else on this host uses, or machines on both lose replies from the host. Set PREFECT_REMOTE_LOCAL_SUBNET "
            f"to a free subnet{f' (such as {free})' if free else ''}; or, to share a bridge with another home, set "
            "PREFECT_REMOTE_LOCAL_BRIDGE and PREFECT_REMOTE_LOCAL_SUBNET as that home does."
        )

    def forget_neighbour(self, address: str) -> None:
        """Drops the host's cached MAC for ``address`` (call as a machine gets the address): the MAC of
        the machine that had it before, which the host would otherwise keep sending to, for up to a
        minute, instead of asking again."""
        _run_ip("neigh", "flush", "dev", self.name, "to", address)

    def allocate(self, machine_dir: Path) -> str:
        """The next free address after the one given out last, registered to ``machine_dir`` (call with
        :meth:`lock` held). Going round the subnet rather than taking the lowest free address puts off
        reusing an address as long as possible: peers that talked to its previous machine, in this
        home or another, may still have that machine's MAC cached for it."""
        self.registry.mkdir(parents=True, exist_ok=True)
        first, count = int(self.network.network_address) + 1, self.network.num_addresses - 2
        try:
            last = int(ipaddress.IPv4Address(self.cursor.read_text().strip())) - first
        except (OSError, ValueError):
            last = 0  # the host's address
        for step in range(1, count + 1):
            address = str(ipaddress.IPv4Address(first + (last + step) % count))
            entry = self.registry / address
            if address == self.address or (entry.exists() and not self._stale(entry)):
                continue
            entry.write_text(str(machine_dir))
            self.cursor.write_text(address)
            return address
        raise IsolationError(f"no free address left in {self.subnet}; end some machines or widen PREFECT_REMOTE_LOCAL_SUBNET")

    def _stale(self, entry: Path) -> bool:
        """An address whose machine is gone without giving it back: its folder was deleted (its home
        was), or its monitor died and nobody has looked at it since (whoever does records its end).
        Its namespace is reclaimed, so the address and the bridge's gateways are free to go."""
        try:
            owner = entry.read_text()
        except FileNotFoundError:
            return True  # released meanwhile
        if not owner or not _machine_gone(Path(owner), entry):  # (empty: being written)
            return False
        _delete_link(_veth_name(Path(owner).name))
        _delete_link(private_veth(Path(owner).name))  # its private link's, if it had one
        _delete_netns(netns_name(Path(owner).name))
        return True

    def release(self, address: str, machine_id: str | None = None) -> None:
        """Takes an address back once its machine's interface is gone; with ``machine_id``, only while
        that machine still holds it (a machine reclaimed late must not free its successor's)."""
        with self.lock():
            entry = self.registry / address
            try:
                if machine_id is not None and Path(entry.read_text()).name != machine_id:
                    return
            except FileNotFoundError:
                return
            entry.unlink(missing_ok=True)

    def in_use(self) -> bool:
        """Whether any machine holds an address on this bridge."""
        try:
            entries = list(self.registry.iterdir())
        except FileNotFoundError:
            return False
        return any(not self._stale(entry) for entry in entries)

    def gateways_running(self) -> bool:
        """Whether a gateway service of this bridge runs (see :mod:`gateway`): it listens on the bridge's address."""
        return any(live_pid(pid_file) for pid_file in RUN_DIR.glob(f"{self.name}-gateway-*.pid"))

    def remove_if_unused(self) -> bool:
        """Deletes the bridge once no machine, no interface and no gateway service uses it."""
        with self.lock():
            ports = Path("/sys/class/net", self.name, "brif")
            if not Path("/sys/class/net", self.name).exists() or self.in_use() or (ports.exists() and any(ports.iterdir())):
                return False
            if self.gateways_running():
                return False
            _run_ip("link", "del", self.name)
            return True


def teardown(record: dict) -> None:
    """Removes a machine's namespace and cgroups, then frees its address: what a machine's end leaves."""
    network = Network(**record["network"]) if record.get("network") else None
    if network:
        network.remove()
    if record.get("cgroups"):
        Cgroups(record["cgroups"]).remove()
    if network:
        Bridge(network.bridge, network.subnet).release(network.ip, record.get("id"))


# -- processes ------------------------------------------------------------------------------


def process_identity(pid: int) -> dict[str, int] | None:
    """``{"pid", "start"}`` for a live (non-zombie) process; the start time, set at fork and kept
    across exec, tells it apart from a later process that reuses the pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else {"pid": pid, "start": int(fields[19])}


def kill_pids(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def tagged_pids(marker: bytes, *, prefix: bool = False) -> set[int]:
    """Processes whose environment holds ``marker`` (``PREFECT_REMOTE_MACHINE_ID=<id>``), wherever they
    went: this finds a machine's daemons even after they left its process group. With ``prefix``,
    any variable starting with ``marker`` counts (every machine's processes)."""
    found = set()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                entries = handle.read().split(b"\0")
            if any(e.startswith(marker) for e in entries) if prefix else marker in entries:
                found.add(int(entry))
        except OSError:
            pass
    return found


OOM_EXIT_CODE = 137


def record_end(directory: Path, record: dict, *, reason: str | None, exit_code: int | None, otherwise: str) -> dict:
    """Ends a machine's bookkeeping: tears its isolation down, drops its secrets and writes its end
    record (first writer wins: the hypervisor, or a reclaim of a machine whose hypervisor died).
    ``reason`` wins over the reason the machine was being stopped for, which wins over ``otherwise``;
    an exit code given at terminate() wins unless the kernel killed the payload for memory."""
    problem = ""
    try:
        teardown(record)
    except Exception as error:  # the machine is ended either way; say what was left
        problem = f" (isolation not fully removed: {error})"
    (directory / records.SECRETS).unlink(missing_ok=True)
    stop = records.read_json(directory / records.STOP, default={})
    if stop.get("exit_code") is not None and exit_code != OOM_EXIT_CODE:
        exit_code = stop["exit_code"]
    reason = (reason or stop.get("reason") or otherwise) + problem
    records.write_once(directory / records.ENDED, {"reason": reason, "exit_code": exit_code, "ended": time.time()})
    return records.read_json(directory / records.ENDED)


def spawn_detached(argv: list[str], pid_file: Path, **popen: object) -> subprocess.Popen:
    """Starts ``argv`` in a session of its own, so it outlives its launcher and its launcher's signals;
    records its identity (pid and start time) in ``pid_file`` and reaps it when it exits."""
    options = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen}
    process = subprocess.Popen(argv, start_new_session=True, **options)  # type: ignore[call-overload]
    records.write_json(pid_file, process_identity(process.pid) or {"pid": process.pid, "start": -1})
    threading.Thread(target=process.wait, daemon=True).start()  # no zombies in a long-lived launcher
    return process


def live_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` if that very process (same start time) still runs."""
    identity = records.read_json(pid_file, default=None)
    return identity["pid"] if identity and process_identity(identity["pid"]) == identity else None
