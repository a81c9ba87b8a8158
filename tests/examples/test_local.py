"""The examples' scripts on this host's machines (the local provider)."""

from tests.examples import run


def test_machines_demo():
    out = run("machines_demo.py")
    assert "result: 13333323333335000000" in out and "idle for" in out and "machines still running: 0" in out


def test_package_sync_example():
    out = run("package_sync.py")
    assert "prefect-remote 0.1.0 are installed" in out and "example_flow.py" in out and "payload finished" in out


def test_functions_example():
    out = run("functions.py")
    assert "one call:" in out and "trial 1 of group A" in out and "mean of 100 trials:" in out and "cluster: prefect-remote-" in out


def test_cluster_example():
    out = run("cluster.py")
    assert "sum of squares: 332833500" in out and "scheduler m-" in out and "cluster closed" in out
