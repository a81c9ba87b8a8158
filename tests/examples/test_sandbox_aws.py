"""The examples' scripts in a shell after `prefect-remote sandbox aws`."""

from tests.examples import run_on_sandbox


def test_examples_run_on_the_sandbox_aws(aws_sandbox):
    """examples/functions.py and cluster.py, in a shell after `prefect-remote sandbox aws`: on EC2 instances of the sandbox."""
    out = run_on_sandbox(aws_sandbox, PREFECT_REMOTE_AWS_LEASE_INTERVAL="5")
    assert "scheduler i-" in out and "cluster closed" in out  # EC2 instance ids
