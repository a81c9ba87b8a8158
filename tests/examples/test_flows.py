"""The example flows, run as scripts against Prefect's ephemeral server, their tasks on this host's machines."""

from tests.examples import run_flow


def test_example_flow_runs_locally(tmp_path):
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in run_flow("example_flow.py", tmp_path)


def test_task_runner_example(tmp_path):
    assert "result: 40425" in run_flow("task_runner.py", tmp_path)
