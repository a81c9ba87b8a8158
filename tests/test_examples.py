"""The examples run as users run them."""

import os
import re
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


def test_deploy_from_python_example(prefect_server, tmp_path):
    """examples/deploy_from_python.py against a server, with its pool made as its docstring says and
    runs submitted by `prefect-remote push serve` (the session's server serves other pools itself)."""
    from tests.conftest import SESSION_HOME
    from tests.workers.conftest import push_serving, run_cli

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"), "COLUMNS": "80"}
    pool = "example-remote-pool"
    created = run_cli(env, "prefect", "work-pool", "create", "--type", "remote:push", "--provision-infra", pool, "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    with push_serving(env, pool, tmp_path):
        script = [sys.executable, str(EXAMPLES / "deploy_from_python.py")]
        result = subprocess.run(script, capture_output=True, text=True, timeout=400, env=env)
    said = result.stdout[-3000:] + result.stderr[-3000:] + (tmp_path / "serve.log").read_text()[-3000:]
    assert result.returncode == 0 and "Software environment senv-" in result.stdout, said
    assert re.search(r"Flow run [\w-]+: Completed on machine m-\w+", result.stdout), said


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
