"""``make bench``'s runner (bench/run.py), run as a user runs it, on small benchmarks of the tests' own
(issue 15, items 7 and 8): the figures come alone, within 80 columns, and the logs go to a file;
a benchmark that fails, or a run that is interrupted, ends the machines it started."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.local.isolation import tagged_pids
from tests.conftest import wait_for

RUNNER = Path(__file__).resolve().parent.parent / "bench" / "run.py"

# Noise of every kind the real benchmarks make: Prefect's and Dask's loggers, a warning, a child
# process's output, a stray print.
NOISY = textwrap.dedent(
    '''
    """A benchmark as noisy as the real ones."""
    import logging, subprocess, sys, warnings
    from prefect.logging import get_logger  # (which sets up Prefect's console handler)

    def main():
        get_logger("task_runs").warning("NOISE task run log line")
        logging.getLogger("distributed.client").warning("NOISE version mismatch table")
        warnings.warn("NOISE Unable to find appropriate backend for pricing")
        subprocess.run([sys.executable, "-c", "import sys; print('NOISE child out'); print('NOISE child err', file=sys.stderr)"])
        print("NOISE stray print")
        return ["noisy figure: 1.00 s vs baseline 2.00 s = 0.50x [goal <= 1x: meets]; " + "more words " * 10]
    '''
)

# A benchmark whose machine is still running when it fails, or when the run is interrupted.
WITH_MACHINE = textwrap.dedent(
    '''
    """A benchmark that starts a machine, then {what}."""
    import time
    from common import bench_home
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.local import LocalProvider
    from prefect_remote.spec import MachineSpec

    def main():
        with bench_home("{name}") as scratch:
            [machine] = LocalProvider(isolation="process").launch(MachineSpec(), BootPayload(["sleep", "600"]))
            print("started machine", machine.id, "in", scratch, flush=True)
            {then}
    '''
)


@pytest.fixture
def folder():
    """A fresh folder with a short path: the log's path, printed whole, fits the 80 columns."""
    path = Path(tempfile.mkdtemp(prefix="bench-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_benchmarks(folder: Path) -> None:
    (folder / "bench_noisy.py").write_text(NOISY)
    (folder / "bench_failing.py").write_text(
        WITH_MACHINE.format(name="failing", what="fails", then='raise RuntimeError("benchmark run ended Crashed")')
    )
    (folder / "bench_hanging.py").write_text(WITH_MACHINE.format(name="hanging", what="hangs", then="time.sleep(600)"))


def runner(folder: Path, *names: str) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(folder), "TMPDIR": str(folder)}  # (the log, the scratch folders)
    return subprocess.Popen(
        [sys.executable, str(RUNNER), *names], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def started_machines(log: Path) -> list[tuple[str, Path]]:
    """The machines the benchmarks said they started (to the log), with their scratch folders."""
    return [(machine, Path(scratch)) for machine, scratch in re.findall(r"started machine (\S+) in (\S+)", log.read_text())]


def assert_ended(machines: list[tuple[str, Path]]) -> None:
    assert machines
    for machine, scratch in machines:
        assert not tagged_pids(f"{MACHINE_ID_ENV}={machine}".encode()), f"{machine} still runs"
        assert not scratch.exists()


def test_the_figures_come_alone_within_80_columns_and_a_failure_ends_its_machines(folder):
    write_benchmarks(folder)
    out, err = runner(folder, "bench_noisy", "bench_failing").communicate(timeout=120)
    lines = out.splitlines()
    assert err == ""
    assert all(len(line) <= 80 for line in lines), out
    log = Path(lines[0].removeprefix("logs: "))
    assert log.parent == folder
    assert str(log) in lines[-1], out
    assert "NOISE" not in out
    assert "== bench_noisy: A benchmark as noisy as the real ones." in lines
    assert re.search(r"noisy figure: 1\.00 s vs baseline 2\.00 s = 0\.50x \[goal <= 1x: meets\]; more words", " ".join(out.split()))
    assert re.search(r"FAILED after \d+ s: RuntimeError: benchmark run ended Crashed \(traceback in the log\)", " ".join(out.split()))
    assert "1 of 2 benchmarks ran in" in out
    written = log.read_text()
    for noise in (
        "task run log line",
        "version mismatch table",
        "Unable to find appropriate backend for pricing",
        "child out",
        "child err",
        "stray print",
    ):
        assert f"NOISE {noise}" in written
    assert "Traceback" in written and "benchmark run ended Crashed" in written
    assert_ended(started_machines(log))


def test_an_interrupted_run_ends_the_machines_of_the_benchmark_it_was_in(folder):
    write_benchmarks(folder)
    process = runner(folder, "bench_hanging", "bench_noisy")
    try:
        log = Path(process.stdout.readline().strip().removeprefix("logs: "))
        machines = wait_for(lambda: started_machines(log), timeout=60, message="the benchmark's machine")
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)  # as a kill would; Ctrl-C (SIGINT) takes the same path
        out, _err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "interrupted after" in out and "bench_noisy" not in out  # the run stops there
    assert_ended(machines)


@pytest.mark.parametrize("benchmark", ["bench_control_plane", "bench_gcp_control_plane"])
def test_the_control_plane_benchmarks_count_each_phase_calls_against_the_first_count(folder, monkeypatch, benchmark):
    monkeypatch.setenv("BENCH_CONTROL_PLANE_COUNTS", "2,4")  # small counts: what is checked is the figures' shape, not a time
    out, err = runner(folder, benchmark).communicate(timeout=600)
    text = " ".join(out.split())
    assert err == "" and "1 of 1 benchmarks ran" in text, out
    calls = {
        (int(count), phase): int(made)
        for count, phase, made in re.findall(r"(\d+) machines, (launch|renew|list|end): (\d+) calls? in \d+\.\d\d s", text)
    }
    assert set(calls) == {(count, phase) for count in (2, 4) for phase in ("launch", "renew", "list", "end")}, out
    assert 1 <= calls[4, "renew"] <= calls[2, "renew"]  # one request per batch of leases, however many machines
    assert re.search(
        r"4 machines, renew: \d+ calls? in \S+ s, \S+ per machine; \d\.\d\dx the calls per machine of 2, \S+ per machine-minute", text
    )
    assert calls[4, "launch"] >= calls[2, "launch"] >= 1
    if benchmark == "bench_gcp_control_plane":  # the leases live in GCS records: renewed by one JSON API batch per 100
        assert calls[2, "renew"] == calls[4, "renew"] == 1 and "(storage.POST.batch 1)" in text
        # one bulk insert, and the records in one upload and GCS batches of 100, however many machines
        assert calls[2, "launch"] == calls[4, "launch"] and "compute.instances.bulkInsert 1" in text
        assert calls[4, "end"] - calls[2, "end"] == 2  # one instances.delete more per machine; the records batched
        assert text.count("goal at most") == 8 and "MISSED" not in text, out
