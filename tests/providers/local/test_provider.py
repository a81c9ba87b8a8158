"""The local provider's own promises: isolation, limits, and that nothing outlives its purpose."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

import prefect_remote
from prefect_remote.errors import CapabilityError, CapacityError
from prefect_remote.lease import default_user
from prefect_remote.machine.boot import decode_agent_config
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider, records, start
from prefect_remote.providers.local.isolation import process_identity, tagged_pids
from prefect_remote.spec import MachineSpec
from tests.conftest import machine_folders, needs_namespace, wait_for

PRINT_NETWORK = textwrap.dedent(
    """
    import socket, subprocess, errno
    print("addr", subprocess.run(["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True).stdout.split()[3])
    for target in ["192.0.2.1", "1.1.1.1"]:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((target, 80))
            print("reached", target)
        except OSError as error:
            print("unreachable", target, errno.errorcode.get(error.errno, error))
    """
)


@needs_namespace
def test_namespace_machines_have_their_own_ip_and_no_way_out():
    provider = LocalProvider(isolation="namespace")
    machines = provider.launch(MachineSpec(cpu=1, memory="512 MiB"), BootPayload(["python", "-c", PRINT_NETWORK]), count=2)
    provider.wait([m.id for m in machines])
    addresses = set()
    for machine in machines:
        text = provider.logs(machine.id).text
        address = next(line.split()[1] for line in text.splitlines() if line.startswith("addr "))
        assert address.split("/")[0] == machine.private_address == machine.public_address
        addresses.add(address)
        lines = text.splitlines()
        assert not [line for line in lines if line.startswith("reached ")]
        assert "unreachable 192.0.2.1 ENETUNREACH" in lines and "unreachable 1.1.1.1 ENETUNREACH" in lines
    assert len(addresses) == 2


@needs_namespace
def test_namespace_machines_reach_each_other_and_the_host():
    provider = LocalProvider(isolation="namespace")
    server_code = "import http.server as h; h.HTTPServer(('0.0.0.0', 8000), h.SimpleHTTPRequestHandler).serve_forever()"
    [server] = provider.launch(MachineSpec(), BootPayload(["python", "-c", server_code]))
    client_code = textwrap.dedent(
        f"""
        import urllib.request, time
        for _ in range(100):
            try:
                print("status", urllib.request.urlopen("http://{server.private_address}:8000/", timeout=2).status); break
            except OSError:
                time.sleep(0.1)
        """
    )
    [client] = provider.launch(MachineSpec(), BootPayload(["python", "-c", client_code]))
    [ended] = provider.wait([client.id])
    assert "status 200" in provider.logs(client.id).text, ended
    assert provider.host_address == "10.232.0.1"


@needs_namespace
def test_memory_limit_kills_a_payload_that_exceeds_it_and_says_so():
    provider = LocalProvider(isolation="namespace")
    hog = "x = bytearray(600 * 2**20); print('survived')"
    [machine] = provider.launch(MachineSpec(memory="200 MiB"), BootPayload(["python", "-c", hog]))
    [ended] = provider.wait([machine.id], timeout=30)
    assert ended.reason.startswith("out of memory: the machine used more than its 200 MiB limit")
    assert ended.exit_code == 137
    text = provider.logs(machine.id).text
    assert "survived" not in text.splitlines() and "machine terminated: out of memory" in text


@needs_namespace
def test_cgroup_limits_match_the_spec_and_are_removed():
    provider = LocalProvider(isolation="namespace")
    [machine] = provider.launch(MachineSpec(cpu=2, memory="1 GiB"), BootPayload(["sleep", "30"]))
    wait_for(lambda: provider.describe(machine.id).state == "running")
    record = records.read_json(Path(machine.details["directory"]) / records.MACHINE)
    memory_dir, cpu_dir = Path(record["cgroups"]["memory"]), Path(record["cgroups"]["cpu"])
    assert int((memory_dir / "memory.limit_in_bytes").read_text()) == 2**30
    assert int((cpu_dir / "cpu.cfs_quota_us").read_text()) == 2 * int((cpu_dir / "cpu.cfs_period_us").read_text())
    boot_pid = records.read_json(Path(machine.details["directory"]) / records.STATE)["boot_pid"]
    assert str(boot_pid) in (memory_dir / "cgroup.procs").read_text().split()
    provider.terminate([machine.id])
    provider.wait([machine.id])
    assert not memory_dir.exists() and not cpu_dir.exists()
    assert not Path("/run/netns", record["network"]["netns"]).exists()


def test_process_isolation_gives_its_own_environment_group_and_directory(monkeypatch):
    monkeypatch.setenv("LAUNCHER_ONLY_SECRET", "must-not-leak")
    provider = LocalProvider(isolation="process")
    code = (
        "import os, sys; print('env', 'LAUNCHER_ONLY_SECRET' in os.environ, os.environ['GREETING']); "
        "print('cwd', os.getcwd()); print('sid', os.getsid(0) != os.getsid(int(sys.argv[1]))); print('python', sys.executable)"
    )
    payload = BootPayload(["python", "-c", code, str(os.getpid())], env={"GREETING": "hi"})
    [machine] = provider.launch(MachineSpec(), payload)
    provider.wait([machine.id])
    text = provider.logs(machine.id).text
    assert "env False hi" in text
    assert f"cwd {machine.details['directory']}/work" in text
    assert "sid True" in text
    assert f"python {Path(sys.executable).parent}" in text  # no software: the launcher's interpreter


def test_vm_type_region_and_spot_are_recorded():
    provider = LocalProvider(isolation="process")
    spec = MachineSpec(vm_type="m6i.large", region="us-east-2", spot_policy="spot_with_fallback", cpu=1)
    [machine] = provider.launch(spec, BootPayload(["true"]))
    described = provider.describe(machine.id)
    assert described.region == "us-east-2" and described.spot and described.details["vm_type"] == ["m6i.large"]
    assert described.instance_type == "local-1cpu" and described.spec == "m6i.large, 1 cpu, spot_with_fallback, us-east-2"


def test_overcommit():
    with pytest.raises(CapacityError, match=r"memory=476.8 GiB \(this host has .*PREFECT_REMOTE_LOCAL_OVERCOMMIT"):
        LocalProvider().choose_instance_type(MachineSpec(memory="512 GB"))
    with pytest.raises(CapabilityError, match="does not offer GPUs"):  # declared, so overcommit cannot change it
        LocalProvider(overcommit=True).check_spec(MachineSpec(gpu=True))
    big = LocalProvider(overcommit=True).choose_instance_type(MachineSpec(memory="512 GB", cpu=64))
    assert big.memory == 512 * 10**9 and big.cpu == 64


def test_secrets_stay_off_disk_files_and_command_lines():
    provider = LocalProvider()
    token = f"secret-{secrets.token_hex(8)}"
    code = "import time; time.sleep(1.5)"
    spec = MachineSpec(environ={"PLAIN": "visible"}, timeout=30)
    [machine] = provider.launch(spec, BootPayload(["python", "-c", code], secrets={"TOKEN": token}))
    wait_for(lambda: provider.describe(machine.id).state == "running")
    time.sleep(0.5)
    for entry in Path("/proc").iterdir():
        try:
            assert token.encode() not in (entry / "cmdline").read_bytes()
        except OSError:
            pass
    directory = Path(machine.details["directory"])
    assert oct((directory / records.SECRETS).stat().st_mode & 0o777) == "0o600"
    for name in (records.BOOT_SCRIPT, records.MACHINE, records.LOG):
        assert token not in (directory / name).read_text()
    # The agent's configuration is encoded inside the boot script: the secret is not in it either.
    script = (directory / records.BOOT_SCRIPT).read_text()
    config = decode_agent_config(script.split("PREFECT_REMOTE_AGENT_CONFIG=")[1].split()[0])
    assert config["env"] == {**provider.machine_environ(), "PLAIN": "visible"} and config["secret_names"] == ["TOKEN"]
    assert token not in json.dumps(config)


LAUNCHER = """
import sys, time
import prefect_remote
machines = prefect_remote.launch(["sleep", "300"], count=2, keepalive=2, tags={"run": sys.argv[1]})
print(" ".join(m.id for m in machines), flush=True)
time.sleep(300)
"""


def test_killing_the_launcher_ends_every_machine_it_owned():
    run = secrets.token_hex(4)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, run], stdout=subprocess.PIPE, text=True)
    ids = launcher.stdout.readline().split()
    provider = LocalProvider()
    wait_for(lambda: all(provider.describe(i).state == "running" for i in ids))
    time.sleep(3)  # longer than keepalive: the live owner's renewals keep them
    assert all(provider.describe(i).alive for i in ids)
    assert {m.owner for m in provider.list({"run": run})} == {f"{default_user()}:{launcher.pid}"}
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    killed = time.monotonic()
    ended = provider.wait(ids, timeout=2 + 10)
    assert all("owner gone" in m.reason for m in ended)
    assert time.monotonic() - killed < 12
    assert not any(tagged_pids(f"PREFECT_REMOTE_MACHINE_ID={i}".encode()) for i in ids)


def test_a_machine_whose_monitor_dies_is_reclaimed():
    provider = LocalProvider()
    [machine] = provider.launch(MachineSpec(), BootPayload(["sleep", "300"]))
    wait_for(lambda: provider.describe(machine.id).state == "running")
    monitor = records.read_json(Path(machine.details["directory"]) / records.HYPERVISOR_PID)["pid"]
    os.kill(monitor, signal.SIGKILL)
    wait_for(lambda: process_identity(monitor) is None)
    ended = provider.describe(machine.id)
    assert ended.state == "terminated" and ended.reason == "machine monitor died; machine reclaimed"
    assert not tagged_pids(f"PREFECT_REMOTE_MACHINE_ID={machine.id}".encode())


def test_daemons_that_leave_the_process_group_end_with_the_machine(local_provider):
    daemon = "import subprocess; subprocess.Popen(['setsid', 'sleep', '300']); print('daemon started')"
    [machine] = local_provider.launch(MachineSpec(), BootPayload(["python", "-c", daemon]))
    local_provider.wait([machine.id])
    assert "daemon started" in local_provider.logs(machine.id).text
    assert not tagged_pids(f"PREFECT_REMOTE_MACHINE_ID={machine.id}".encode())


def test_a_payload_that_cannot_start_ends_the_machine_with_the_reason(local_provider):
    [machine] = local_provider.launch(MachineSpec(), BootPayload(["no-such-program-here"]))
    [ended] = local_provider.wait([machine.id])
    assert "payload could not start" in ended.reason and "no-such-program-here" in ended.reason
    assert ended.exit_code == 127


def test_bad_launches_leave_no_folder_behind():
    provider = LocalProvider()
    before = machine_folders()
    with pytest.raises(ValueError, match="reserved"):
        provider.launch(MachineSpec(), BootPayload(["true"]), tags={"prefect-remote:owner": "x"})
    with pytest.raises(ValueError, match="count=0"):
        provider.launch(MachineSpec(), BootPayload(["true"]), count=0)
    with pytest.raises(CapacityError, match="cpu=64"):
        provider.launch(MachineSpec(cpu=64), BootPayload(["true"]))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        prefect_remote.launch("python app.py")
    with pytest.raises(ValueError, match="plain strings"):
        BootPayload(["true"], secrets={"TOKEN": SecretStr("x")})  # type: ignore[dict-item]
    assert machine_folders() == before


def test_terminate_right_after_launch_is_honoured(local_provider):
    [machine] = local_provider.launch(MachineSpec(), BootPayload(["sleep", "60"]))
    local_provider.terminate([machine.id], reason="changed my mind")
    [ended] = local_provider.wait([machine.id], timeout=20)
    assert ended.reason == "changed my mind"


@needs_namespace
def test_two_homes_share_the_bridge_without_sharing_addresses(tmp_path):
    first, second = LocalProvider(tmp_path / "a", isolation="namespace"), LocalProvider(tmp_path / "b", isolation="namespace")
    machines = [*first.launch(MachineSpec(), BootPayload(["sleep", "30"])), *second.launch(MachineSpec(), BootPayload(["sleep", "30"]))]
    try:
        assert len({m.private_address for m in machines}) == 2
    finally:
        first.terminate([machines[0].id])
        second.terminate([machines[1].id])
        first.wait([machines[0].id])
        second.wait([machines[1].id])
    # Both addresses are given back (the bridge itself may carry other sessions' machines).
    assert not any((first.bridge.registry / m.private_address).exists() for m in machines)


def test_explicit_activity_ignores_output_and_cpu(local_provider):
    chatty = "import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.2)"
    [machine] = local_provider.launch(MachineSpec(idle_timeout=1.5), BootPayload(["python", "-c", chatty], activity="explicit"))
    [ended] = local_provider.wait([machine.id], timeout=20)
    assert ended.reason.startswith("idle for")
    toucher = "import os, time\nfor _ in range(10):\n    open(os.environ['PREFECT_REMOTE_ACTIVITY_FILE'], 'w').close(); time.sleep(0.3)"
    [busy] = local_provider.launch(MachineSpec(idle_timeout=1.5), BootPayload(["python", "-c", toucher], activity="explicit"))
    [ended] = local_provider.wait([busy.id], timeout=20)
    assert ended.reason == "payload finished"


def test_ended_machines_are_pruned_from_lease_renewal():
    from prefect_remote.lease import LeaseKeeper

    provider = LocalProvider()
    [machine] = provider.launch(MachineSpec(), BootPayload(["true"]))
    provider.wait([machine.id])
    keeper = LeaseKeeper()
    keeper.add(provider, [machine.id], keepalive=3)
    wait_for(lambda: keeper.held() == [], message="pruned lease")
    keeper.stop()


def test_namespace_isolation_refused_clearly_where_unavailable(monkeypatch):
    monkeypatch.setattr(start, "namespace_unavailable", lambda: "namespace isolation needs root")
    with pytest.raises(CapacityError, match="needs root; set PREFECT_REMOTE_LOCAL_ISOLATION=process"):
        _ = LocalProvider(isolation="namespace").isolation
    assert LocalProvider(isolation="auto").isolation == "process"


def test_log_chunks_never_split_a_character():
    provider = LocalProvider(isolation="process")
    [machine] = provider.launch(MachineSpec(), BootPayload(["true"]))
    provider.wait([machine.id])
    end = provider.logs(machine.id).cursor
    log = Path(machine.details["directory"]) / records.LOG
    with open(log, "ab") as handle:  # a write in progress: the first two of the snake's four bytes
        handle.write("x🐍".encode()[:3])
    chunk = provider.logs(machine.id, cursor=end)
    assert chunk.text == "x" and chunk.cursor == str(int(end) + 1)  # the local cursor is a byte offset
    with open(log, "ab") as handle:
        handle.write("x🐍".encode()[3:])
    assert provider.logs(machine.id, cursor=chunk.cursor).text == "🐍"
    with pytest.raises(ValueError, match="not a local log cursor"):
        provider.logs(machine.id, cursor="token-from-elsewhere")


def test_a_launchs_secrets_are_handed_to_each_machine_and_staged_nowhere_after(tmp_path, monkeypatch):
    provider = LocalProvider(tmp_path, isolation="process")
    machines = provider.launch(MachineSpec(), BootPayload(["true"], secrets={"TOKEN": "t0k"}), count=2)
    for machine in machines:
        assert records.read_json(Path(machine.details["directory"]) / records.SECRETS) == {"TOKEN": "t0k"}
    provider.wait([m.id for m in machines])

    def no_room(launch):
        raise CapacityError("no room")

    monkeypatch.setattr(provider, "_start", no_room)
    with pytest.raises(CapacityError, match="no room"):  # a launch that fails leaves its secrets nowhere either
        provider.launch(MachineSpec(), BootPayload(["true"], secrets={"TOKEN": "t0k"}))
    assert list((tmp_path / "secrets").iterdir()) == []


def test_a_launch_failing_midway_ends_the_machines_it_started_and_leaves_no_other(tmp_path, monkeypatch):
    provider = LocalProvider(tmp_path / "home", isolation="process")
    real = start._start_hypervisor
    calls = []

    def second_fails(directory):
        calls.append(directory)
        if len(calls) == 2:
            raise OSError("cannot fork: resource temporarily unavailable")
        real(directory)

    monkeypatch.setattr(start, "_start_hypervisor", second_fails)
    with pytest.raises(CapacityError, match="could not launch 3 machine.*cannot fork"):
        provider.launch(MachineSpec(), BootPayload(["sleep", "30"]), count=3)
    [first] = provider.list(include_terminated=True)
    assert first.id == calls[0].name
    [ended] = provider.wait([first.id], timeout=15)
    assert "its launch failed" in ended.reason
    assert sorted(p.name for p in (tmp_path / "home" / "machines").iterdir()) == [first.id]
