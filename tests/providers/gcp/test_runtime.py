"""GCPRuntime's last resort on a VM, ``halt()``: the delete tried again, then the OS's own shutdown,
whatever metadata server it reads (it knows of no sandbox). Here the metadata server is out of reach
(a closed port on loopback), so each delete fails as on a VM whose metadata server does not answer;
the shutdown is a command of the test's own (this host is never powered off)."""

from __future__ import annotations

import socket

import pytest

from prefect_remote.providers.gcp import runtime as gcp_runtime
from prefect_remote.providers.gcp.runtime import GCPRuntime


@pytest.fixture
def unreachable_metadata(monkeypatch) -> None:
    """A metadata server nobody answers at (a port just closed), and a VM's environment (no Cloud Run job)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{port}")
    monkeypatch.delenv("CLOUD_RUN_JOB", raising=False)
    monkeypatch.setattr(gcp_runtime, "HALT_RETRIES", (0.0, 0.0))  # two quick tries instead of a minute's


def runtime(halt_command: list[str]) -> GCPRuntime:
    return GCPRuntime(store="gs://bucket/prefect-remote", launch_id="launch-0a1b2c3d4e5f", project="p", halt_command=halt_command)


def test_the_default_halt_is_the_oss_shutdown():
    assert GCPRuntime(store="gs://b/p", launch_id="launch-0a1b2c3d4e5f", project="p").halt_command == ["shutdown", "-h", "now"]


def test_a_vm_whose_delete_fails_shuts_itself_down(unreachable_metadata, tmp_path):
    """The delete fails on every try: the VM shuts itself down (stopped, which its owner's next
    listing deletes), though a metadata server other than Google's is set."""
    halted = tmp_path / "halted"
    runtime(["sh", "-c", f'echo "$0 $1 $2" >> {halted}', "shutdown", "-h", "now"]).halt()
    assert halted.read_text() == "shutdown -h now\n"


def test_halt_never_raises_and_does_nothing_on_cloud_run(unreachable_metadata, monkeypatch, tmp_path):
    runtime(["false"]).halt()
    runtime([str(tmp_path / "no-such-shutdown")]).halt()
    monkeypatch.setenv("CLOUD_RUN_JOB", "prefect-remote-job")  # a task ends with its container, when the agent exits
    halted = tmp_path / "halted"
    runtime(["sh", "-c", f"echo halted >> {halted}"]).halt()
    assert not halted.exists()
