"""Homes sharing one bridge: machines coming and going in one home never leave the host unable to
reach another home's machines (issue 11, item 3: a scheduler that no client could reach)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider, gateway, isolation, records
from prefect_remote.providers.local.isolation import Bridge, Network
from prefect_remote.spec import MachineSpec
from tests.conftest import needs_namespace, wait_for

ROUNDS = 8  # before the fix about half the rounds failed: 16 rounds miss it once in 65,000 runs

# One home: ROUNDS clusters, one after the other, each started cold and called once from this host.
# keepalive=5 s: a scheduler the host cannot reach closes itself and the round fails. No workers:
# the host-to-scheduler path is the one under test, and the rounds stay quick.
HOME = textwrap.dedent(
    """
    import json, sys, time
    from distributed import Client
    from prefect_remote.cluster.remote import RemoteCluster
    from prefect_remote.providers.local import LocalProvider

    provider = LocalProvider(isolation="namespace")
    for i in range(int(sys.argv[1])):
        started = time.monotonic()
        try:
            with RemoteCluster(name=f"{sys.argv[2]}-{i}", n_workers=0, keepalive="5 seconds", provider=provider) as cluster, \\
                    Client(cluster, timeout=5) as client:
                assert client.run_on_scheduler(lambda: 42) == 42
                result = {"scheduler": cluster.scheduler_address}
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps({"round": i, "seconds": round(time.monotonic() - started, 1), **result}), flush=True)
    provider.wait([m.id for m in provider.list()], timeout=30)
    """
)


def end_home(home: Path) -> None:
    provider = LocalProvider(home, isolation="namespace")
    alive = provider.list()
    provider.terminate([m.id for m in alive], reason="test cleanup")
    provider.wait([m.id for m in alive], timeout=30)


@needs_namespace
@pytest.mark.timeout(290)
def test_two_homes_start_and_end_clusters_on_one_bridge(tmp_path):
    # A third home's long-lived machine, whose port has the lowest MAC on the bridge: a bridge whose
    # MAC follows its ports keeps it through the rounds, so no MAC change flushes the host's cached
    # MACs. An address one home's machine had just left, given at once to the other home's next
    # scheduler, then kept the old machine's MAC on the host for up to a minute: the scheduler said
    # it listened and no connection from the host reached it (about half the rounds failed so).
    anchor_provider = LocalProvider(isolation="namespace")
    [anchor] = anchor_provider.launch(MachineSpec(), BootPayload(["sleep", "600"]))
    network = Network(**records.read_json(anchor_provider.machines_dir / anchor.id / records.MACHINE)["network"])
    wait_for(lambda: Path("/sys/class/net", network.veth).exists(), message="the anchor machine's interface")
    subprocess.run(["ip", "link", "set", network.veth, "address", "02:00:00:00:00:01"], check=True)
    homes = {name: tmp_path / name for name in ("a", "b")}
    processes = {}
    try:
        for name, home in homes.items():  # each home is a process of its own, as two users' scripts would be
            env = {**os.environ, "PREFECT_REMOTE_HOME": str(home)}  # the session's bridge and subnet (prtest0)
            processes[name] = subprocess.Popen(
                [sys.executable, "-c", HOME, str(ROUNDS), name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        outputs = {name: process.communicate(timeout=270) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for home in homes.values():
            end_home(home)
        anchor_provider.terminate([anchor.id])
        anchor_provider.wait([anchor.id])
    results = {name: [json.loads(line) for line in out.splitlines() if line.startswith("{")] for name, (out, _) in outputs.items()}
    for name, rounds in results.items():
        assert len(rounds) == ROUNDS, f"home {name} stopped early:\n{outputs[name][1][-3000:]}"
        failed = [r for r in rounds if "error" in r]
        assert not failed, f"home {name}: {len(failed)} of {ROUNDS} clusters unreachable, first: {failed[0]['error']}"
    # Addresses go round the subnet: none was given to a second scheduler while the test ran.
    addresses = [urlsplit(r["scheduler"]).hostname for rounds in results.values() for r in rounds]
    assert len(set(addresses)) == len(addresses)


@needs_namespace
def test_another_homes_cleanup_keeps_a_gateway_a_launch_just_asked_for(tmp_path, monkeypatch):
    # Home b forwards a loopback service onto the bridge, then launches; home a, with no machine
    # left, cleans the host up in between. That must neither stop b's forward nor break the bridge.
    # The forward serves the bridge's subnet only.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connection.sendall(b"hello from the host")
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    a, b = LocalProvider(tmp_path / "a", isolation="namespace"), LocalProvider(tmp_path / "b", isolation="namespace")
    try:
        url = b.reachable_url(f"http://127.0.0.1:{port}/")
        a.cleanup_host()
        code = f"import socket; print(socket.create_connection(('{b.bridge.address}', {port}), timeout=5).recv(100).decode())"
        [machine] = b.launch(MachineSpec(), BootPayload(["python", "-c", code]))
        b.wait([machine.id], timeout=30)
        assert "hello from the host" in b.logs(machine.id).text, b.logs(machine.id).text
        assert url == f"http://{b.bridge.address}:{port}/"
        # From an address outside the bridge's subnet (as a LAN neighbour routing it here): nothing.
        outsider = socket.create_connection((b.bridge.address, port), timeout=5, source_address=("127.0.0.1", 0))
        assert outsider.recv(100) == b""
        outsider.close()
    finally:
        server.close()
        monkeypatch.setattr(gateway, "IDLE_EXIT", -1.0)
        gateway.stop(b.bridge)  # (unless another session's machines are on the bridge: then it ends on its own)


def test_addresses_go_round_the_subnet_and_skip_those_in_use(tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "RUN_DIR", tmp_path)  # a registry of its own; no interface is touched
    bridge = Bridge("prunit0", "10.250.0.0/29")  # .1 is the host's; .2 to .6 for machines
    machines = tmp_path / "machines"

    def allocate(name: str) -> str:
        (machines / name).mkdir(parents=True)
        with bridge.lock():
            return bridge.allocate(machines / name)

    assert [allocate("m-1"), allocate("m-2")] == ["10.250.0.2", "10.250.0.3"]
    bridge.release("10.250.0.2")
    # Not the lowest free address, which a machine just left (peers may still have its MAC cached): the next one.
    assert [allocate("m-3"), allocate("m-4"), allocate("m-5")] == ["10.250.0.4", "10.250.0.5", "10.250.0.6"]
    assert allocate("m-6") == "10.250.0.2"  # round again, past the addresses in use
    with pytest.raises(isolation.IsolationError, match="no free address"):
        allocate("m-7")
    assert ipaddress.IPv4Address(bridge.cursor.read_text()) == ipaddress.IPv4Address("10.250.0.2")


def test_the_bridge_lock_can_be_taken_again_by_its_holder(tmp_path, monkeypatch):
    # A launch that fails tears down, while holding the lock, what it set up; teardown takes it too.
    monkeypatch.setattr(isolation, "RUN_DIR", tmp_path)
    bridge = Bridge("prunit0", "10.250.0.0/29")
    with bridge.lock(), bridge.lock():
        pass
    with Bridge("prunit0", "10.250.0.0/29").lock():  # and it was released
        pass


@needs_namespace
def test_a_gateway_that_cannot_start_is_an_error_not_a_silent_launch(tmp_path, monkeypatch):
    provider = LocalProvider(tmp_path / "home", isolation="namespace")
    monkeypatch.setattr(gateway.sys, "executable", "/bin/false")  # the service's process starts, then exits at once
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(isolation.IsolationError, match=r"forward service .* did not start \(exited with code 1"):
        provider.reachable_url(f"http://127.0.0.1:{port}/api")


def test_an_address_is_freed_only_by_the_machine_holding_it(tmp_path, monkeypatch):
    # A machine reclaimed late (its monitor died, its address was given again) must not free its successor's.
    monkeypatch.setattr(isolation, "RUN_DIR", tmp_path)
    bridge = Bridge("prunit0", "10.250.0.0/29")
    (tmp_path / "m-new").mkdir()
    with bridge.lock():
        address = bridge.allocate(tmp_path / "m-new")
    bridge.release(address, "m-old")
    assert (bridge.registry / address).read_text() == str(tmp_path / "m-new")
    bridge.release(address, "m-new")
    assert not (bridge.registry / address).exists()


@needs_namespace
@pytest.mark.timeout(120)
def test_a_machine_whose_monitor_was_killed_does_not_keep_the_gateways_running(tmp_path, throwaway_bridges):
    # A home's machine whose monitor is killed (OOM killer, a `kill -9`) and that nobody lists again
    # kept its address on the bridge for good, so the bridge's gateway services never exited
    # (they exit gateway.IDLE_EXIT seconds after the last machine leaves).
    provider = LocalProvider(
        tmp_path / "home", isolation="namespace", settings={"local_bridge": throwaway_bridges(), "local_subnet": free_subnet()}
    )
    server = socket.create_server(("127.0.0.1", 0))
    try:
        provider.reachable_url(f"http://127.0.0.1:{server.getsockname()[1]}/")
        [machine] = provider.launch(MachineSpec(), BootPayload(["sleep", "600"]))
        directory = provider.machines_dir / machine.id
        wait_for(lambda: (directory / records.STATE).exists(), message="the machine to boot")
        os.kill(isolation.live_pid(directory / records.HYPERVISOR_PID), signal.SIGKILL)
        pid_files = list(isolation.RUN_DIR.glob(f"{provider.bridge.name}-gateway-*.pid"))
        assert pid_files
        wait_for(lambda: not provider.bridge.gateways_running(), timeout=30, message="the gateway services to exit")
        assert not provider.bridge.in_use()
    finally:
        server.close()
    # Whoever looks at the machine next records its end and stops what it left.
    [ended] = provider.list(include_terminated=True)
    assert not ended.alive and "monitor died" in ended.reason


# -- one subnet per bridge (issue 15, item 7) ---------------------------------------------------

# A second home's script, as its user would run it: a function call on the local provider.
SECOND_HOME = textwrap.dedent(
    """
    import prefect_remote

    @prefect_remote.function()
    def double(x):
        return 2 * x

    print(double(21))
    """
)

# Home a's machine: answers every connection with a greeting.
GREETER = "import socket\nserver = socket.create_server(('0.0.0.0', 8123))\nwhile True:\n    server.accept()[0].sendall(b'hello')\n"


def free_subnet() -> str:
    """A /16 nothing on this host routes: concurrent sessions running this test take different ones."""
    _, taken = Bridge("prfree0", "10.240.0.0/16").conflicts()
    return str(isolation._free_subnet(ipaddress.IPv4Network("10.240.0.0/16"), taken))


@pytest.fixture
def throwaway_bridges(tmp_path):
    """Names for bridges of this test alone; every machine in the test's homes is ended, and every
    bridge named is deleted with its registry, afterwards."""
    names: list[str] = []

    def name() -> str:
        names.append(f"prt{os.urandom(4).hex()}")
        return names[-1]

    yield name
    for home in tmp_path.glob("*/machines"):
        end_home(home.parent)
    for bridge in names:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(isolation.RUN_DIR / bridge, ignore_errors=True)
        for leftover in isolation.RUN_DIR.glob(f"{bridge}*"):
            leftover.unlink(missing_ok=True)


@needs_namespace
@pytest.mark.timeout(120)
def test_a_second_home_on_a_subnet_another_bridge_routes_is_refused_and_the_first_keeps_working(tmp_path, throwaway_bridges):
    subnet = free_subnet()
    first = LocalProvider(tmp_path / "a", isolation="namespace", settings={"local_bridge": throwaway_bridges(), "local_subnet": subnet})
    [greeter] = first.launch(MachineSpec(), BootPayload(["python", "-c", GREETER]))

    def greeting() -> bytes:
        try:
            with socket.create_connection((greeter.private_address, 8123), timeout=2) as connection:
                return connection.recv(100)
        except OSError:
            return b""

    assert wait_for(greeting, message="home a's machine to answer") == b"hello"
    second_bridge = throwaway_bridges()
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "script.py").write_text(SECOND_HOME)
    env = {
        **os.environ,
        "COLUMNS": "80",
        "PREFECT_REMOTE_HOME": str(tmp_path / "b"),
        "PREFECT_REMOTE_LOCAL_ISOLATION": "namespace",
        "PREFECT_REMOTE_LOCAL_BRIDGE": second_bridge,
        "PREFECT_REMOTE_LOCAL_SUBNET": subnet,  # the very subnet home a's bridge has, as in the issue
    }
    result = subprocess.run([sys.executable, "script.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode != 0, result.stdout
    error = result.stderr.strip().splitlines()[-1]
    assert f"local subnet {subnet} for bridge {second_bridge} is refused: {subnet} is routed to interface {first.bridge.name}" in error
    assert "Set PREFECT_REMOTE_LOCAL_SUBNET to a free subnet (such as 10." in error
    assert not Path("/sys/class/net", second_bridge).exists()  # refused before it was made
    assert not LocalProvider(tmp_path / "b").list()  # and no machine was started
    assert greeting() == b"hello"  # home a's machine still answers the host


@needs_namespace
def test_a_subnet_inside_or_around_a_routed_one_is_refused_and_one_bridge_keeps_one_subnet(throwaway_bridges):
    subnet = ipaddress.IPv4Network(free_subnet())
    first = Bridge(throwaway_bridges(), str(subnet))
    first.ensure()
    inner, outer = next(subnet.subnets(new_prefix=24)), subnet.supernet(new_prefix=15)
    for overlapping in (inner, outer):
        with pytest.raises(isolation.SubnetConflict, match=rf"{overlapping} for bridge .* {subnet} is routed to interface {first.name}"):
            Bridge(throwaway_bridges(), str(overlapping)).ensure()
    # Another subnet on the same bridge would leave its gateway services listening on one of the two.
    other = isolation._free_subnet(subnet, [subnet, outer])
    with pytest.raises(
        isolation.SubnetConflict, match=rf"bridge {first.name} already has {first.address}/16 \(a home with subnet {subnet}"
    ):
        Bridge(first.name, str(other)).ensure()
    Bridge(first.name, str(subnet)).ensure()  # the same bridge and subnet, as another home shares it: fine
    assert first.remove_if_unused()


def test_the_suggested_subnet_is_the_next_free_one_of_the_same_size():
    taken = [ipaddress.IPv4Network(n) for n in ("10.231.0.0/16", "10.232.0.0/16", "10.233.128.0/24", "192.168.1.128/25")]
    assert str(isolation._free_subnet(ipaddress.IPv4Network("10.231.0.0/16"), taken)) == "10.234.0.0/16"
    assert str(isolation._free_subnet(ipaddress.IPv4Network("10.255.0.0/16"), taken)) == "10.0.0.0/16"  # round the block
    assert str(isolation._free_subnet(ipaddress.IPv4Network("192.168.1.0/24"), taken)) == "192.168.2.0/24"
    assert str(isolation._free_subnet(ipaddress.IPv4Network("100.64.0.0/24"), taken)) == "10.0.0.0/24"  # not private: from 10/8
    assert isolation._free_subnet(ipaddress.IPv4Network("10.0.0.0/8"), [ipaddress.IPv4Network("10.0.0.0/8")]) is None
