"""Machines booted with ``software=<name>`` rebuild it and run their payload in it."""

from __future__ import annotations

import pytest

from prefect_remote.providers.base import BootPayload
from prefect_remote.software.capture import capture_environment
from prefect_remote.software.store import StoreError
from prefect_remote.spec import MachineSpec
from tests.conftest import SESSION_HOME


def test_payload_runs_with_the_rebuilt_interpreter_and_the_code(local_provider, throwaway, monkeypatch):
    monkeypatch.setenv("UV_INDEX_URL", "https://user:t0ken-in-url@pypi.org/simple")
    env = capture_environment(python=str(throwaway.python), root=throwaway.project)
    code = "import sys, os, idna, localpkg, gitpkg, flow; print('prefix', sys.prefix); print('data', os.path.exists('data/input.csv'))"
    machines = local_provider.launch(MachineSpec(software=env.name), BootPayload(["python", "-c", code]), count=2)
    for ended in local_provider.wait([m.id for m in machines], timeout=120):
        text = local_provider.logs(ended.id).text
        assert ended.exit_code == 0, text
        assert f"prefix {SESSION_HOME}/envs/{env.name}/venv" in text.splitlines()
        assert "data True" in text.splitlines()
        assert "t0ken-in-url" not in text


def test_a_missing_environment_or_unreachable_store_starts_nothing(local_provider, monkeypatch, tmp_path):
    before = local_provider.list(include_terminated=True)
    with pytest.raises(StoreError, match="senv-0000000000000000' is not in the store"):
        local_provider.launch(MachineSpec(software="senv-0000000000000000"), BootPayload(["true"]))
    monkeypatch.setenv("PREFECT_REMOTE_STORE", str(tmp_path / "no-such-store"))
    with pytest.raises(StoreError, match="unreachable"):
        local_provider.launch(MachineSpec(software="senv-0000000000000000"), BootPayload(["true"]))
    assert local_provider.list(include_terminated=True) == before


def test_a_failed_rebuild_ends_the_machine_naming_the_package(local_provider, throwaway, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("idna==3.20\nno-such-package-prefect-remote-test==1.0\n")
    (tmp_path / "empty").mkdir()
    env = capture_environment(python=str(throwaway.python), root=tmp_path / "empty", requirements=requirements)
    [machine] = local_provider.launch(MachineSpec(software=env.name), BootPayload(["python", "-c", "print('never')"]))
    [ended] = local_provider.wait([machine.id], timeout=120)
    assert ended.reason.startswith(f"software environment {env.name} could not be rebuilt: installing packages failed")
    assert "no-such-package-prefect-remote-test" in ended.reason
    assert "\n" not in ended.reason and "cause:" not in ended.reason.lower()  # uv's chain, summed up in one line
    log = local_provider.logs(machine.id).text
    assert "never" not in log.splitlines()
    full = log.partition(f"software environment {env.name} could not be rebuilt; in full:\n")[2]  # uv's whole output
    assert "error:" in full and "no-such-package-prefect-remote-test" in full, log
