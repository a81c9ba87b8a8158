"""The examples that deploy flows to a remote:push pool and run them: the demo, and deploying from Python."""

import os
import re
import subprocess
import sys

from tests.examples import EXAMPLES


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
