"""`prefect-remote machines`, run as users run it: the installed console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import prefect_remote
from prefect_remote.providers.local import LocalProvider
from tests.conftest import wait_for

CLI = str(Path(sys.executable).parent / "prefect-remote")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})


def test_help_lists_the_commands():
    result = cli("--help")
    assert result.returncode == 0 and "machines" in result.stdout and "info" in result.stdout
    assert "ls" in cli("machines", "--help").stdout


def test_ls_logs_and_rm_all():
    provider = LocalProvider()
    machines = prefect_remote.launch(["python", "-c", "print('from-machine'); import time; time.sleep(60)"], count=2, cpu=1, tags={"team": "data"})
    wait_for(lambda: all("from-machine" in provider.logs(m.id).text.splitlines() for m in machines))
    listed = cli("machines", "ls", "--tag", "team=data")
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
    [by_tag] = prefect_remote.launch(["sleep", "60"], tags={"role": "drop"})
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
    assert "provider='nope' is not known" in cli("machines", "ls", "--provider", "nope").stderr.replace("\n", " ").replace("│", "").replace("  ", " ")


def test_info_shows_settings_and_isolation():
    result = cli("info")
    assert result.returncode == 0 and "PREFECT_REMOTE_HOME" in result.stdout and "local namespace isolation" in result.stdout
