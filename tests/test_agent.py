import subprocess
import sys


def test_agent_refuses_to_start_outside_a_machine():
    result = subprocess.run([sys.executable, "-m", "prefect_remote.agent"], capture_output=True, text=True, env={})
    assert result.returncode == 2 and "started by a machine's boot script" in result.stderr


def test_agent_and_hypervisor_import_nothing_heavy():
    """They sit on the launch-to-payload path: no pydantic, no prefect, no dask."""
    code = (
        "import sys, prefect_remote.agent, prefect_remote.providers.local.hypervisor, prefect_remote.providers.local;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'prefect', 'dask', 'distributed', 'psutil', 'typer')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout
