"""The examples' scripts in a shell after `prefect-remote sandbox gcp`."""

from tests.examples import run_on_sandbox


def test_examples_run_on_the_sandbox_gcp(gcp_sandbox):
    """examples/functions.py and cluster.py, in a shell after `prefect-remote sandbox gcp`: on Compute
    Engine VMs of the sandbox (Dask machines accept connections, which Cloud Run's do not)."""
    out = run_on_sandbox(gcp_sandbox, PREFECT_REMOTE_GCP_LEASE_INTERVAL="5")
    assert "scheduler vm-" in out and "cluster closed" in out  # Compute Engine instance names
