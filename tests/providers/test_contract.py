"""The provider contract: what every provider must do. Runs against each entry of PROVIDERS
(tests/providers/conftest.py); a new provider passes this suite before it ships. Waits come from
``timing``, which scales with the provider's boot time and lease interval."""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import subprocess
import sys
import time
import types
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from prefect_remote.errors import CapacityError, MachineNotFound
from prefect_remote.machine.boot import AGENT_CONFIG_ENV, decode_agent_config
from prefect_remote.machine.runtime import MachineRuntime
from prefect_remote.providers.base import BootPayload, Capabilities, InstanceType, Machine
from prefect_remote.spec import MachineSpec
from tests.conftest import wait_for


def launch(provider, command, *, count=1, tags=None, payload=None, **spec) -> list[Machine]:
    tags = {"test": "contract", **(tags or {})}
    return provider.launch(MachineSpec(**spec), payload or BootPayload(command), count=count, tags=tags)


def test_declares_what_it_can_do(provider):
    assert isinstance(provider.capabilities, Capabilities)
    assert provider.lease_interval > 0 and provider.max_boot_script >= 4096
    module, _, name = provider.runtime.partition(":")
    assert issubclass(getattr(__import__(module, fromlist=[name]), name), MachineRuntime)
    json.dumps(provider.client_options())  # travels to a cluster's scheduler as JSON


def test_runs_the_payload_and_records_its_exit(provider, timing):
    [machine] = launch(provider, ["python", "-c", "import sys; print('hello from the payload'); sys.exit(3)"])
    assert machine.provider == provider.name and machine.state in ("pending", "running")
    [ended] = provider.wait([machine.id], timeout=timing.wait(15))
    assert ended.state == "terminated"
    assert ended.exit_code == 3 and "exited with code 3" in ended.reason
    text = provider.logs(machine.id).text
    assert "hello from the payload" in text
    assert "payload started" in text and "machine ending" in text
    # The log's first line names where the machine runs, as the provider describes the launch.
    placement = provider.placement(MachineSpec(), provider.choose_instance_type(MachineSpec()))
    assert re.search(rf"booting machine (\S+ )?on {re.escape(placement)}", text), text
    assert provider.renew_leases([machine.id]) == [machine.id]  # an ended machine needs no renewing


def test_a_run_draws_no_iam_refusal(provider, case, timing, request):
    """A run as users make one (launch, payload, logs, end) makes no call that its identities (the
    launcher's, the machines') may not make. The sandbox clouds record every refusal, so this also
    catches the ones that code swallows: google-cloud-storage's background read of a bucket's
    metadata, which the machines' account may not do, went unseen for a long time."""
    sandboxes = [request.getfixturevalue(name) for name in case.fixtures]
    if not sandboxes:
        pytest.skip("machines on this computer: no cloud identities to refuse them")
    [sandbox] = sandboxes
    before = len(sandbox.refusals)
    [machine] = launch(provider, ["python", "-c", "print('payload done')"])
    [ended] = provider.wait([machine.id], timeout=timing.wait(15))
    assert ended.exit_code == 0 and "payload done" in provider.logs(machine.id).text
    assert sandbox.refusals[before:] == []


def test_logs_read_on_from_a_cursor(provider, timing):
    # The payload prints FIRST and SECOND, which its command line (logged at start) does not contain.
    code = "import time; print('FIR' + 'ST'); time.sleep(1); print('SEC' + 'OND')"
    [machine] = launch(provider, ["python", "-c", code])
    first = wait_for(
        lambda: (chunk := provider.logs(machine.id)).text.count("FIRST") and chunk, timeout=timing.wait(5), message="first line"
    )
    assert isinstance(first.cursor, str)
    provider.wait([machine.id], timeout=timing.wait(15))
    rest = provider.logs(machine.id, cursor=first.cursor)
    # What came after the cursor, and nothing before it (SECOND may have been shipped with FIRST).
    assert "FIRST" not in rest.text and (first.text + rest.text).count("SECOND") == 1
    assert "machine ending" in first.text + rest.text
    end = provider.logs(machine.id, cursor=rest.cursor)
    assert end.text == "" and provider.logs(machine.id, cursor=end.cursor).text == ""


def test_count_tags_list_describe_terminate(provider, timing, case):
    run = secrets.token_hex(4)
    workers = launch(provider, ["sleep", "600"], count=2, tags={"run": run, "role": "worker"}, cpu=1)
    [scheduler] = launch(provider, ["sleep", "600"], tags={"run": run, "role": "scheduler"})
    assert len({m.id for m in workers}) == 2
    # A cloud may list a machine only a moment after its launch (EC2's eventual consistency).
    wait_for(lambda: len(provider.list({"run": run})) == 3, timeout=timing.wait(5), interval=0.5, message="the machines, listed")
    listed = provider.list({"run": run, "role": "worker"})
    assert {m.id for m in listed} == {m.id for m in workers}
    assert {m.id for m in provider.list({"run": run})} == {m.id for m in [*workers, scheduler]}
    wait_for(lambda: all(provider.describe(m.id).state == "running" for m in workers), timeout=timing.wait(5), message="running workers")
    described = provider.describe(workers[0].id)
    assert described.tags == {"test": "contract", "run": run, "role": "worker"} and described.spec == "1 cpu"
    if case.reachable:
        assert described.private_address and described.public_address  # for other machines, for its owner
    provider.terminate([m.id for m in workers], reason="scaled down")
    for ended in provider.wait([m.id for m in workers], timeout=timing.wait(5)):
        assert ended.reason == "scaled down"
    provider.terminate([workers[0].id], reason="again")  # already ended: fine, reason kept
    assert provider.describe(workers[0].id).reason == "scaled down"
    assert [m.id for m in provider.list({"run": run})] == [scheduler.id]
    assert len(provider.list({"run": run}, include_terminated=True)) == 3


def test_a_machine_outlives_its_launcher_and_is_found_by_tags(provider, timing):
    run = secrets.token_hex(4)
    script = f"""
import json
from prefect_remote.providers import provider_class
from prefect_remote.providers.base import BootPayload
from prefect_remote.spec import MachineSpec
provider = provider_class({provider.name!r})(**{provider.client_options()!r})
[m] = provider.launch(MachineSpec(), BootPayload(["sleep", "600"]), tags={{"run": {run!r}}})
print(m.id)
"""
    launched = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timing.wait(45))
    assert launched.returncode == 0, launched.stderr
    machine_id = launched.stdout.split()[-1]
    found = wait_for(lambda: [m for m in provider.list({"run": run}) if m.state == "running"], timeout=timing.wait(5), message="machine")
    assert [m.id for m in found] == [machine_id]


def test_unknown_machine(provider):
    for call in (provider.describe, provider.logs, lambda i: provider.terminate([i])):
        with pytest.raises(MachineNotFound, match="machines ls"):
            call("m-000000000000")


def test_instance_type_choice(provider):
    chosen = provider.choose_instance_type(MachineSpec(cpu=1, memory="256 MiB"))
    assert isinstance(chosen, InstanceType) and chosen.cpu >= 1 and chosen.memory >= 256 * 2**20


def test_a_spec_it_cannot_meet_starts_nothing(provider, monkeypatch):
    # Asked of the provider itself: a cloud's listing may leave out a machine launched a moment ago.
    started: list[object] = []
    start = provider._start
    monkeypatch.setattr(provider, "_start", lambda launch: started.append(launch) or start(launch))
    with pytest.raises(CapacityError, match="cpu=100000"):
        launch(provider, ["sleep", "1"], cpu=100000)
    with pytest.raises(ValueError, match="memory='lots'"):
        launch(provider, ["sleep", "1"], memory="lots")
    assert started == []


def test_secrets_reach_the_payload_but_never_the_boot_script_or_the_logs(provider, timing, monkeypatch):
    token, spec_token = (f"secret-{secrets.token_hex(8)}" for _ in range(2))
    digest = hashlib.sha256((token + spec_token).encode()).hexdigest()
    code = "import os, hashlib; print('digest', hashlib.sha256((os.environ['TOKEN'] + os.environ['SPEC_TOKEN']).encode()).hexdigest())"
    payload = BootPayload(["python", "-c", code], secrets={"TOKEN": token})
    launches = []
    start = provider._start  # what the base hands the provider: the boot script is made by then
    monkeypatch.setattr(provider, "_start", lambda launch: launches.append(launch) or start(launch))
    [machine] = launch(provider, [], payload=payload, environ={"PLAIN": "visible", "SPEC_TOKEN": SecretStr(spec_token)})
    [made] = launches
    assert made.has_secrets and token not in made.boot_script and spec_token not in made.boot_script
    assert len(made.boot_script.encode()) <= provider.max_boot_script
    config = decode_agent_config(made.boot_script.split(f"{AGENT_CONFIG_ENV}=")[1].split()[0])
    assert config["env"] == {**provider.machine_environ(), "PLAIN": "visible"} and config["secret_names"] == ["SPEC_TOKEN", "TOKEN"]
    assert config["runtime"] == provider.runtime and token not in json.dumps(config["runtime_options"])
    provider.wait([machine.id], timeout=timing.wait(15))
    text = provider.logs(machine.id).text
    assert f"digest {digest}" in text and token not in text and spec_token not in text
    assert token not in json.dumps(provider.describe(machine.id).__dict__, default=str)


def skew_owner_clock(provider, monkeypatch) -> Callable[[float], None] | None:
    """Makes this process, the machines' owner, stamp its leases by a clock off by the seconds last
    given to the function returned (the stamping module's only: the sandbox cloud in this process
    keeps the true time). None where the provider stamps no time: a local machine's lease is a file's
    mtime on its owner's own host, one clock."""
    skew = [0.0]
    real = time.time
    if provider.name == "aws":
        from prefect_remote.providers.aws import provider as module

        monkeypatch.setattr(module, "lease_stamp", lambda: str(math.ceil(real() + skew[0])))
    elif provider.name == "gcp":
        from prefect_remote.providers.gcp import records as module

        monkeypatch.setattr(module, "time", types.SimpleNamespace(time=lambda: real() + skew[0], monotonic=time.monotonic))
    else:
        return None
    return lambda seconds: skew.__setitem__(0, seconds)


# Owners' clocks, off by these seconds: 10 minutes behind would make a fresh lease look 10 minutes old,
# 10 minutes ahead keep a lapsed one 10 minutes too long, if a machine compared its lease's time with its own clock.
OWNER_CLOCKS = {"on time": 0, "10 minutes behind": -600, "10 minutes ahead": 600}


def test_owner_lease_keeps_a_machine_and_its_loss_ends_it_whatever_the_owners_clock(provider, timing, monkeypatch):
    """An owner's renewals keep its machine past keepalive; once they stop, the machine ends within
    a lease_interval of keepalive. Where owners stamp their leases with their clocks (the clouds),
    a machine each for an owner on time, 10 minutes behind and 10 minutes ahead, at once, every call
    about it made by its owner's clock."""
    owner_clock = skew_owner_clock(provider, monkeypatch)
    clocks = OWNER_CLOCKS if owner_clock else {"on time": 0}
    keepalive = timing.keepalive
    machines: dict[str, Machine] = {}

    def as_owner(owner: str) -> None:
        if owner_clock:
            owner_clock(clocks[owner])

    for owner in clocks:
        as_owner(owner)
        [machines[owner]] = launch(provider, ["sleep", "600"], keepalive=keepalive)
    last_renewal: dict[str, float] = {}

    def renew() -> None:
        for owner, machine in machines.items():
            as_owner(owner)
            provider.renew_leases([machine.id])
            last_renewal[owner] = time.monotonic()

    started: set[str] = set()

    def agents_started() -> bool:  # renewing meanwhile: an agent reads its lease from its start, while the others boot
        renew()
        for owner, machine in machines.items():
            as_owner(owner)
            if owner not in started and "payload started" in provider.logs(machine.id).text:
                started.add(owner)
        return len(started) == len(machines)

    wait_for(
        agents_started, timeout=len(machines) * timing.wait(), interval=keepalive / 5, message="every machine's agent in its main loop"
    )
    renew_until = time.monotonic() + 2 * keepalive  # the machines read their leases every lease_interval meanwhile
    while time.monotonic() < renew_until:
        renew()
        time.sleep(keepalive / 5)
    for owner, machine in machines.items():
        as_owner(owner)
        assert provider.describe(machine.id).alive, f"the machine of an owner {owner} ended while its lease was renewed"
    # Noticed at most one lease_interval past keepalive (a machine reads its lease that often).
    for owner, machine in machines.items():
        as_owner(owner)
        [ended] = provider.wait([machine.id], timeout=timing.wait(keepalive + provider.lease_interval))
        assert "owner gone" in ended.reason and time.monotonic() - last_renewal[owner] >= keepalive, (owner, ended.reason)


def test_idle_timeout_ends_an_idle_machine(provider, timing):
    [machine] = launch(provider, ["sleep", "600"], idle_timeout=1)
    [ended] = provider.wait([machine.id], timeout=timing.wait(1))
    assert "idle" in ended.reason


def test_a_busy_payload_is_not_idle(provider, timing):
    busy = "import time\nfor i in range(12):\n    print('tick', i, flush=True); time.sleep(0.25)"
    [machine] = launch(provider, ["python", "-c", busy], idle_timeout=1)
    [ended] = provider.wait([machine.id], timeout=timing.wait(3))
    assert ended.reason == "payload finished" and ended.exit_code == 0


def test_max_run_timeout_ends_a_machine(provider, timing):
    [machine] = launch(provider, ["python", "-c", "while True: pass"], timeout=1.5)
    [ended] = provider.wait([machine.id], timeout=timing.wait(1.5))
    assert ended.reason.startswith("timeout: ran longer than 1.5s")
