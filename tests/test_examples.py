"""The examples run as users run them."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(script: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_machines_demo():
    out = run("machines_demo.py")
    assert "result: 13333323333335000000" in out and "idle for" in out and "machines still running: 0" in out


def test_package_sync_example():
    out = run("package_sync.py")
    assert "prefect-remote 0.1.0 are installed" in out and "example_flow.py" in out and "payload finished" in out


def run_flow(script: str, prefect_home: Path) -> str:
    """Runs an example flow against Prefect's ephemeral server in its own PREFECT_HOME."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_example_flow_runs_locally(tmp_path):
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in run_flow("example_flow.py", tmp_path)


def test_make_demo_runs_the_main_job(tmp_path):
    """examples/demo.py: server, remote:push pool with --provision-infra, prefect deploy, run, result."""
    from tests.conftest import SESSION_HOME

    env = {**os.environ, "PREFECT_REMOTE_HOME": str(SESSION_HOME / "demo")}
    result = subprocess.run([sys.executable, str(EXAMPLES / "demo.py")], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Flow run: Completed on machine m-" in result.stdout.replace("\n", " ")
    assert "Hello from your Prefect flow!" in result.stdout and "booting" in result.stdout


def test_functions_example():
    out = run("functions.py")
    assert "one call:" in out and "trial 1 of group A" in out and "mean of 100 trials:" in out and "cluster: prefect-remote-" in out


def test_cluster_example():
    out = run("cluster.py")
    assert "sum of squares: 332833500" in out and "scheduler m-" in out and "cluster closed" in out


def test_task_runner_example(tmp_path):
    assert "result: 40425" in run_flow("task_runner.py", tmp_path)


def run_on_sandbox(sandbox, **settings: str) -> str:
    """examples/functions.py and cluster.py in a shell after `prefect-remote sandbox <cloud>`, with
    ``settings``; cluster.py's output."""
    env = {**os.environ, **sandbox.exports(), **settings}
    for script, expected in (("functions.py", "mean of 100 trials:"), ("cluster.py", "sum of squares: 332833500")):
        result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert expected in result.stdout
    return result.stdout


def test_examples_run_on_the_sandbox_aws(aws_sandbox):
    """The same scripts, in a shell after `prefect-remote sandbox aws`: on EC2 instances of the sandbox."""
    out = run_on_sandbox(aws_sandbox, PREFECT_REMOTE_AWS_LEASE_INTERVAL="5")
    assert "scheduler i-" in out and "cluster closed" in out  # EC2 instance ids


def test_examples_run_on_the_sandbox_gcp(gcp_sandbox):
    """The same scripts, in a shell after `prefect-remote sandbox gcp`: on Compute Engine VMs of the
    sandbox (Dask machines accept connections, which Cloud Run's do not)."""
    out = run_on_sandbox(gcp_sandbox, PREFECT_REMOTE_GCP_LEASE_INTERVAL="5")
    assert "scheduler vm-" in out and "cluster closed" in out  # Compute Engine instance names
