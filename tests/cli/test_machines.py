"""`prefect-remote machines`, run as users run it: the installed console script."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len

import prefect_remote
from prefect_remote.lease import default_owner
from prefect_remote.providers import get_provider
from prefect_remote.providers.base import BootPayload, Machine
from prefect_remote.providers.local import LocalProvider
from prefect_remote.spec import MachineSpec
from tests.conftest import wait_for

CLI = str(Path(sys.executable).parent / "prefect-remote")


def cli(*args: str, columns: int = 250) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": str(columns)})


def assert_fits(output: str, columns: int) -> list[str]:
    """The output's lines, checked to be no wider than the terminal (in cells, as a terminal counts)."""
    lines = output.splitlines()
    too_wide = [line for line in lines if cell_len(line) > columns]
    assert not too_wide, f"lines wider than {columns} columns: {too_wide}"
    return lines


def assert_whole(output: str, *words: str) -> None:
    """Each word (an id, a state) shows unbroken on some line, not folded across lines."""
    lines = output.splitlines()
    broken = [word for word in words if not any(word in line for line in lines)]
    assert not broken, f"not shown whole on one line: {broken}\n{output}"


def test_help_lists_the_commands():
    result = cli("--help")
    assert result.returncode == 0 and "machines" in result.stdout and "info" in result.stdout
    assert "ls" in cli("machines", "--help").stdout


def test_ls_logs_and_rm_all():
    provider = LocalProvider()
    machines = prefect_remote.launch(
        ["python", "-c", "print('from-machine'); import time; time.sleep(60)"], count=2, cpu=1, tags={"team": "data"}
    )
    wait_for(lambda: all("from-machine" in provider.logs(m.id).text.splitlines() for m in machines))
    listed = cli("machines", "ls", "--wide", "--tag", "team=data")
    assert listed.returncode == 0, listed.stderr
    for machine in machines:
        assert machine.id in listed.stdout
    assert "running" in listed.stdout and "team=data" in listed.stdout and "1 cpu" in listed.stdout
    logs = cli("machines", "logs", machines[0].id)
    assert "from-machine" in logs.stdout.splitlines() and "booting machine" in logs.stdout
    removed = cli("machines", "rm", "--all")
    assert removed.returncode == 0 and "Ended 2 machine(s)" in removed.stdout
    assert provider.list() == []
    assert "No machines" in cli("machines", "ls").stdout
    everything = cli("machines", "ls", "--all")
    assert machines[0].id in everything.stdout and "terminated with `prefect-remote machines rm`" in everything.stdout


def test_rm_by_id_and_by_tag():
    provider = LocalProvider()
    [keep] = prefect_remote.launch(["sleep", "60"], tags={"role": "keep"})
    [_by_tag] = prefect_remote.launch(["sleep", "60"], tags={"role": "drop"})
    [by_id] = prefect_remote.launch(["sleep", "60"])
    assert cli("machines", "rm", "--tag", "role=drop").returncode == 0
    assert cli("machines", "rm", by_id.id).returncode == 0
    assert [m.id for m in provider.list()] == [keep.id]


def test_follow_stops_when_the_machine_ends():
    [machine] = prefect_remote.launch(["python", "-c", "import time; [print('line', i, flush=True) or time.sleep(0.2) for i in range(5)]"])
    followed = cli("machines", "logs", "--follow", machine.id)
    assert "line 4" in followed.stdout and "machine terminated" in followed.stdout


def test_bad_input_says_how_to_fix_it():
    assert "no local machine 'm-nope'" in cli("machines", "logs", "m-nope").stderr
    assert "expected key=value" in cli("machines", "ls", "--tag", "team").stderr
    assert "--all or --tag" in cli("machines", "rm").stderr
    assert "provider='nope' is not known" in cli("machines", "ls", "--provider", "nope").stderr.replace("\n", " ").replace("│", "").replace(
        "  ", " "
    )


def launch_a_mix(batch: str) -> list[Machine]:
    """Two running machines with long tags, and one ended (spot, a region, a reason): every column
    filled. All are tagged batch=``batch``, for `ls --tag` to leave out other tests' ended machines."""
    provider = LocalProvider()
    tags = {"batch": batch, "team": "data", "purpose": "nightly-reconciliation-of-the-ledger"}
    running = prefect_remote.launch(["sleep", "60"], count=2, cpu=1, memory="512 MiB", tags=tags)
    [ended] = prefect_remote.launch(
        ["python", "-c", "raise SystemExit(3)"], region="us-east-2", spot_policy="spot", vm_type="m6i.xlarge", tags={"batch": batch}
    )
    provider.wait([ended.id], timeout=30)
    return [*running, provider.describe(ended.id)]


def test_ls_fits_80_columns_with_whole_ids():
    machines = launch_a_mix("narrow")
    listed = cli("machines", "ls", "--all", "--tag", "batch=narrow", columns=80)
    assert listed.returncode == 0, listed.stderr
    header, *_ = assert_fits(listed.stdout, 80)
    assert header.split() == ["ID", "STATE", "TYPE", "AGE", "ENDED", "BECAUSE"]
    assert_whole(listed.stdout, *(m.id for m in machines), "running", "terminated", "local-1cpu-512mib", "(spot)", "payload", "exited")
    assert "OWNER" not in listed.stdout


def test_ls_wide_shows_the_other_fields():
    machines = launch_a_mix("wide")
    listed = cli("machines", "ls", "--all", "--wide", "--tag", "batch=wide", columns=160)
    assert listed.returncode == 0, listed.stderr
    assert_fits(listed.stdout, 160)
    assert_whole(listed.stdout, *(m.id for m in machines), machines[0].owner, machines[0].private_address, "us-east-2", "team=data")
    # Where the terminal is wide enough (addresses make it 160 to 170), one table with every column.
    listed = cli("machines", "ls", "--all", "--wide", "--tag", "batch=wide", columns=200)
    header, *_rows = assert_fits(listed.stdout, 200)
    assert header.split() == [
        "ID",
        "PROVIDER",
        "STATE",
        "TYPE",
        "SPEC",
        "REGION",
        "AGE",
        "TAGS",
        "OWNER",
        "ADDRESS",
        "PUBLIC",
        "ADDRESS",
        "ENDED",
        "BECAUSE",
    ]
    assert_whole(listed.stdout, *(f"{m.id}  local" for m in machines), "1 cpu, 512 MiB")


def test_ls_wide_in_80_columns_shows_one_block_per_machine():
    machines = launch_a_mix("blocks")
    listed = cli("machines", "ls", "--all", "--wide", "--tag", "batch=blocks", columns=80)
    lines = assert_fits(listed.stdout, 80)
    assert_whole(listed.stdout, *(m.id for m in machines), machines[0].owner, "1 cpu, 512 MiB")
    assert [line.split()[0] for line in lines if line.startswith("ID ")] == ["ID"] * 3
    assert sum(line.startswith("OWNER ") for line in lines) == 3


def test_ls_json_has_every_field_of_every_machine():
    machines = launch_a_mix("json")
    listed = cli("machines", "ls", "--all", "--json", "--tag", "batch=json", columns=80)
    assert listed.returncode == 0, listed.stderr
    parsed = json.loads(listed.stdout)
    assert {m["id"] for m in parsed} == {m.id for m in machines}
    assert all(set(m) == {f.name for f in dataclasses.fields(Machine)} for m in parsed)
    assert {m["id"]: m["tags"] for m in parsed}[machines[0].id] == dict(machines[0].tags)
    assert json.loads(cli("machines", "ls", "--json", "--tag", "team=nobody").stdout) == []


def test_info_shows_settings_and_isolation():
    result = cli("info")
    assert result.returncode == 0 and "PREFECT_REMOTE_HOME" in result.stdout and "local namespace isolation" in result.stdout


def test_info_fits_80_columns_and_cuts_no_value():
    store = "/tmp/" + "a-store-folder-with-a-rather-long-name/" * 3
    result = subprocess.run(
        [CLI, "info"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80", "PREFECT_REMOTE_STORE": store}
    )
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout, 80)
    assert_whole(result.stdout, "PREFECT_REMOTE_LOCAL_RECORD_RETENTION", "PREFECT_REMOTE_STORE")
    assert "…" not in result.stdout and "a-store-folder-with-a-rather-long-name" in result.stdout


@pytest.fixture(params=["local", "aws", "gcp"])
def cloud(request) -> str:
    """A provider the CLI runs against (``--provider``): local, or the session's sandbox AWS/GCP."""
    if request.param != "local":
        request.getfixturevalue(f"{request.param}_env")
    return request.param


def test_rm_all_ends_only_this_users_machines(cloud):
    """`rm --all` ends this user's machines; others' (another user's, a flow run's worker's, a launcher
    older than users, whose owner names none) need --everyone, which lists them first, or their ids."""
    provider = get_provider(cloud, service="compute") if cloud == "gcp" else get_provider(cloud)
    spec, payload, batch = MachineSpec(cpu=1), BootPayload(["sleep", "120"]), {"batch": secrets.token_hex(4)}
    [mine] = provider.launch(spec, payload, tags=batch, owner=default_owner())
    [theirs] = provider.launch(spec, payload, tags=batch, owner="bob@elsewhere:7")
    [worker] = provider.launch(spec, payload, tags=batch, owner="prefect-worker:pool-a")
    [old] = provider.launch(spec, payload, tags=batch, owner="oldhost:12")
    tag = ["--tag", f"batch={batch['batch']}"]
    try:
        # (EC2 lists a new instance a moment after launching it, as the strict sandbox does.)
        wait_for(lambda: len(provider.list(batch)) == 4, message="every machine listed")
        removed = cli("machines", "rm", "--provider", cloud, "--all", *tag, columns=80)
        assert removed.returncode == 0, removed.stderr
        assert "Ended 1 machine(s)" in removed.stdout and "Leaving 3 machine(s) of other owners" in removed.stdout
        assert {m.id for m in provider.list(batch)} == {theirs.id, worker.id, old.id}

        refused = cli("machines", "rm", "--provider", cloud, *tag, "--everyone", columns=80)  # stdin is no terminal
        assert refused.returncode == 2 and "pass --yes" in " ".join(refused.stderr.split())
        assert_whole(refused.stdout, theirs.id, worker.id, old.id)
        assert {m.id for m in provider.list(batch)} == {theirs.id, worker.id, old.id}

        assert cli("machines", "rm", "--provider", cloud, old.id).returncode == 0  # by id: whoever owns it
        everyone = cli("machines", "rm", "--provider", cloud, *tag, "--everyone", "--yes", columns=80)
        assert everyone.returncode == 0, everyone.stderr
        assert_fits(everyone.stdout, 80)
        assert_whole(everyone.stdout, theirs.id, worker.id, "bob@elsewhere:7")
        assert "Ended 2 machine(s)" in everyone.stdout
        assert provider.list(batch) == []
    finally:
        provider.terminate([mine.id, theirs.id, worker.id, old.id])


def test_everyone_needs_all_or_tag():
    assert "--everyone widens --all or --tag" in " ".join(cli("machines", "rm", "--everyone", "m-x").stderr.split())
