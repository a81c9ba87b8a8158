"""Homes sharing one bridge: machines coming and going in one home never leave the host unable to
reach another home's machines (issue 11, item 3: a scheduler that no client could reach)."""

from __future__ import annotations

import ipaddress
import json
import os
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

ROUNDS = 20

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
