"""The examples run as users run them, a module per group so that pytest-xdist's workers (a module
each at a time) share them: the scripts and the flows on this host's machines, the demo and
deployments, and the scripts on each sandbox cloud. The helpers here run a script of ``examples/``."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str) -> str:
    """Runs ``examples/<script>`` in this environment; its output (it must succeed)."""
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_flow(script: str, prefect_home: Path) -> str:
    """Runs an example flow against Prefect's ephemeral server in its own PREFECT_HOME."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def run_on_sandbox(sandbox, **settings: str) -> str:
    """examples/functions.py and cluster.py in a shell after `prefect-remote sandbox <cloud>`, with
    ``settings``; cluster.py's output."""
    env = {**os.environ, **sandbox.exports(), **settings}
    for script, expected in (("functions.py", "mean of 100 trials:"), ("cluster.py", "sum of squares: 332833500")):
        result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert expected in result.stdout
    return result.stdout
