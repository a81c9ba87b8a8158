"""@prefect_remote.function on a real local-provider cluster (shared by the tests of this module)."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback

import pytest
from distributed import LocalCluster

import prefect_remote
from prefect_remote.cluster.batching import MAX_BATCH, MAX_IN_FLIGHT
from prefect_remote.cluster.local import LocalProcessCluster, LocalWorkerStartError
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.local import LocalProvider
from prefect_remote.providers.local.isolation import tagged_pids
from tests.conftest import end_all_machines, wait_for

PROCESS = LocalProvider(isolation="process")  # quicker to boot; namespace clusters are tested in tests/cluster


@pytest.fixture(autouse=True)
def no_machine_outlives_its_test():
    """Overrides the per-test clean-up: this module's functions share one cluster, ended at the end."""
    yield


@pytest.fixture(scope="module", autouse=True)
def end_machines_after_module():
    yield
    for cluster in list(prefect_remote.functions._clusters.values()):
        cluster.close()
    prefect_remote.functions._clusters.clear()
    prefect_remote.functions._clients.clear()
    end_all_machines()


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
def scale(x: int, factor: int = 1, offset: int = 0) -> int:
    """Multiplies, then adds."""
    print(f"scaling {x}")
    return x * factor + offset


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
def flaky(path: str) -> str:
    with open(path, "a") as counter:
        counter.write("x")
    with open(path) as counter:
        attempts = len(counter.read())
    if attempts < 3:
        raise RuntimeError(f"attempt {attempts} fails")
    return f"ok after {attempts}"


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
def fails_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd input {x}")
    return x


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
def nap(x: float, seconds: float = 0.0) -> float:
    time.sleep(seconds)
    return x


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
def unsendable(x: int):
    import threading

    return threading.Lock() if x == 2 else x  # a lock cannot be sent back to the caller


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
def check(x: int, seconds: float = 0.0) -> int:
    """Fails on negative inputs, after ``seconds``."""
    time.sleep(seconds)
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
def tick(path: str, seconds: float = 0.0) -> None:
    """Counts its calls in a file, then sleeps."""
    with open(path, "a") as counter:
        counter.write("x")
    time.sleep(seconds)


@prefect_remote.function(n_workers=2, keepalive="30 seconds", provider=PROCESS)
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


def test_call_submit_and_map_with_broadcast_keywords(capsys):
    assert scale.__name__ == "scale" and scale.__doc__ == "Multiplies, then adds."
    assert list(inspect.signature(scale).parameters) == ["x", "factor", "offset"]
    assert scale(3, factor=2) == 6
    assert "scaling 3" in capsys.readouterr().out  # printed remotely, shown here
    future = scale.submit(4, factor=3)
    assert type(future).__name__ == "Future" and future.result() == 12
    first, second = scale.submit(1), scale.submit(1)
    assert first.key != second.key  # identical calls are not deduplicated: each runs
    results = scale.map(range(10), factor=10, offset=1)
    assert iter(results) is results
    assert list(results) == [x * 10 + 1 for x in range(10)]
    assert list(scale.map([1, 2], [3, 4])) == [3, 8]  # several iterables zip, like map()
    assert scale.cluster is fails_on_odd.cluster  # the same spec shares one cluster
    assert scale.client.status == "running"


def test_retries_rerun_a_failing_call(tmp_path):
    assert flaky.submit(str(tmp_path / "a"), retries=3).result() == "ok after 3"
    assert list(flaky.map([str(tmp_path / "b")], retries=3)) == ["ok after 3"]
    with pytest.raises(RuntimeError, match="attempt 1 fails"):
        flaky(str(tmp_path / "c"))


def test_errors_raise_with_the_remote_traceback_or_skip():
    with pytest.raises(ValueError, match="odd input 3") as raised:
        fails_on_odd(3)
    text = "".join(traceback.format_exception(raised.value))
    assert "fails_on_odd" in text and 'raise ValueError(f"odd input {x}")' in text
    assert list(fails_on_odd.map(range(10), errors="skip")) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="odd input 1"):
        list(fails_on_odd.map(range(10)))
    with pytest.raises(ValueError, match="errors='ignore'"):
        fails_on_odd.map(range(3), errors="ignore")
    with pytest.raises(TypeError, match="iterable"):
        fails_on_odd.map(5)


def test_map_orders_results_by_input_or_by_completion():
    slow_first = [(0.0, 1.5), (1.0, 0.0), (2.0, 0.0)]
    ordered = list(nap.map([x for x, _ in slow_first], [s for _, s in slow_first]))
    assert ordered == [0.0, 1.0, 2.0]
    completed = list(nap.map([x for x, _ in slow_first], [s for _, s in slow_first], ordered=False, batch_size=1))
    assert sorted(completed) == [0.0, 1.0, 2.0] and completed[0] != 0.0  # the slow first input does not come first


def test_large_inputs_are_batched_and_stream():
    results = scale.map(iter(range(2500)), factor=2, progress=True)  # a generator: no length, consumed in batches
    assert sum(results) == 2 * sum(range(2500))


def test_async_functions_run_remotely():
    assert asyncio.run(async_double(21)) == 42
    assert list(async_double.map(range(3))) == [0, 2, 4]


def test_local_mode_has_the_same_semantics(capsys):
    @prefect_remote.function(local=True, n_workers=[0, 2])
    def shout(word: str, times: int = 1) -> str:
        print("shouting")
        return word.upper() * times

    assert shout("hi", times=2) == "HIHI" and "shouting" in capsys.readouterr().out
    assert list(shout.map(["a", "b"], times=3)) == ["AAA", "BBB"]
    cluster = shout.cluster
    assert isinstance(cluster, LocalCluster)
    shout.close()  # ended now, not after its keepalive
    assert cluster.status.name == "closed"
    assert shout("x") == "X" and shout.cluster is not cluster  # the next call starts another
    shout.close()


def test_every_result_arrives_when_a_worker_machine_is_killed_mid_map():
    provider = PROCESS
    nap(0)  # the cluster is up
    wait_for(lambda: len(nap.client.scheduler_info()["workers"]) == 2, timeout=60, message="two workers")
    results = nap.map(range(500), seconds=0.02)
    received = [next(results) for _ in range(50)]
    victim = next(iter(nap.client.scheduler_info()["workers"].values()))["name"]
    for pid in tagged_pids(f"{MACHINE_ID_ENV}={victim}".encode()):
        os.kill(pid, signal.SIGKILL)  # the whole machine, at once
    received += list(results)
    assert received == list(range(500))
    assert provider.describe(victim).state == "terminated"
    wait_for(lambda: len(nap.client.scheduler_info()["workers"]) == 2, timeout=60, message="the lost worker replaced")


# -- local=True: workers are fresh interpreters, and a failed start raises ------------------------
UNGUARDED_SCRIPT = """\
import prefect_remote
@prefect_remote.function(local=True)
def inc(x):
    return x + 1
print("result", inc(1))
"""


def test_local_mode_runs_a_script_without_a_main_guard(tmp_path):
    (tmp_path / "script.py").write_text(UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["result 2"]  # the script ran once: its workers did not re-run it


def test_local_mode_keeps_workers_apart_and_imports_the_callers_modules(tmp_path):
    (tmp_path / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / "script.py").write_text(
        textwrap.dedent(
            """
        import os
        import prefect_remote
        from helpers import triple
        @prefect_remote.function(local=True, n_workers=2, environ={"GREETING": "hello"})
        def where(x):
            return triple(x), os.getpid(), os.environ["GREETING"]
        results = list(where.map(range(8), batch_size=1))
        print([r[0] for r in results], os.getpid() not in {r[1] for r in results}, {r[2] for r in results})
        """
        )
    )
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[0, 3, 6, 9, 12, 15, 18, 21] True {'hello'}"]


def test_a_local_cluster_that_cannot_start_raises_at_once_with_the_reason():
    @prefect_remote.function(local=True, environ={"PYTHONHOME": "/nonexistent"})  # no worker interpreter can start
    def never_runs(x: int) -> int:
        return x

    started = time.monotonic()
    with pytest.raises(LocalWorkerStartError, match="(?s)local worker 0 failed to start: its process exited.*No module named 'encodings'"):
        never_runs(1)
    assert time.monotonic() - started < 60  # not a hang (it takes about a second)


def test_tasks_waiting_for_a_local_worker_that_cannot_start_fail_with_the_reason():
    with LocalProcessCluster(n_workers=0, threads_per_worker=1, environ={"PYTHONHOME": "/nonexistent"}, dashboard_address=":0") as cluster:
        cluster.adapt(minimum=0, maximum=2)
        with cluster.get_client() as client:
            for _attempt in range(2):  # every scale-up that fails is reported, none leaves a call waiting
                future = client.submit(abs, -1, pure=False)
                with pytest.raises(LocalWorkerStartError, match="(?s)failed to start.*No module named 'encodings'"):
                    future.result(timeout=60)


# -- .map sends items in batches, with per-item semantics -----------------------------------------
def test_map_batches_small_items_and_keeps_input_order():
    results = scale.map(range(5000), factor=3)
    assert list(results) == [3 * x for x in range(5000)]
    assert results.sizer.measured < 100  # a few dozen tasks at most, not 5,000


def test_map_in_completion_order_goes_batch_by_batch():
    # Two batches of two: the first holds a slow item, so the second batch's items come first.
    completed = list(nap.map([0.0, 1.0, 2.0, 3.0], [1.5, 0.0, 0.0, 0.0], ordered=False, batch_size=2))
    assert completed == [2.0, 3.0, 0.0, 1.0]


def test_map_skips_failed_items_and_raises_the_first_failure_in_input_order():
    assert list(fails_on_odd.map(range(2000), errors="skip")) == list(range(0, 2000, 2))
    received = []
    with pytest.raises(ValueError, match="negative input -1") as raised:
        # -1 fails late, in the first batch; -2 fails at once, in the second: -1 comes first in the input.
        for value in check.map([5, -1, 6, -2], [0.0, 1.0, 0.0, 0.0], batch_size=2):
            received.append(value)
    assert received == [5]
    assert 'raise ValueError(f"negative input {x}")' in "".join(traceback.format_exception(raised.value))
    with pytest.raises(ValueError, match="negative input -3"):
        list(check.map([1, 2, -3, -4, 5], batch_size=5))  # within one batch, too


def test_a_batch_that_fails_as_a_whole_fails_only_the_item_that_broke_it():
    # The batch's value cannot be sent back (item 2's lock): its items run again one per task.
    assert list(unsendable.map(range(5), batch_size=5, errors="skip")) == [0, 1, 3, 4]
    received = []
    with pytest.raises(Exception, match="(?i)pickle|lock"):
        for value in unsendable.map(range(5), batch_size=5):
            received.append(value)
    assert received == [0, 1]


def test_map_retries_each_item_on_its_own(tmp_path):
    paths = [str(tmp_path / name) for name in "abc"]
    assert list(flaky.map(paths, retries=2, batch_size=3)) == ["ok after 3"] * 3  # 2 retries each, in one batch
    assert list(flaky.map([str(tmp_path / "d"), str(tmp_path / "e")], retries=1, errors="skip", batch_size=2)) == []
    assert (tmp_path / "d").read_text() == "xx" and (tmp_path / "e").read_text() == "xx"


@pytest.mark.parametrize("ordered", [True, False])
def test_leaving_a_map_early_cancels_the_rest(tmp_path, ordered):
    counter = tmp_path / "calls"
    results = tick.map([str(counter)] * 40, seconds=0.3, batch_size=1, ordered=ordered)
    next(results)
    results.close()

    def pending_ticks():
        return tick.client.run_on_scheduler(lambda dask_scheduler: [key for key in dask_scheduler.tasks if str(key).startswith("tick-")])

    wait_for(lambda: not pending_ticks(), timeout=30, message="the scheduler to forget the map's tasks")
    calls = len(counter.read_text())
    time.sleep(1)
    assert len(counter.read_text()) == calls < 40  # nothing runs any more, and most never ran


def test_map_reads_a_generator_only_as_batches_go_out():
    read: list[int] = []

    def numbers():
        for number in itertools.count():
            read.append(number)
            yield number

    results = scale.map(numbers(), offset=1)  # endless: only a window of it is ever read
    assert [next(results) for _ in range(3)] == [1, 2, 3]
    results.close()
    so_far = len(read)
    time.sleep(0.5)
    assert len(read) == so_far <= MAX_IN_FLIGHT + MAX_BATCH


def test_map_progress_counts_items(capsys):
    results = scale.map(range(1234), progress=True)
    assert len(list(results)) == 1234
    assert results.sizer.measured < 1234 and "1234/1234" in capsys.readouterr().err


def test_map_with_a_fixed_batch_size_and_bad_sizes():
    results = scale.map(range(10), batch_size=3)
    assert list(results) == list(range(10)) and results.sizer.measured == 4  # 3 + 3 + 3 + 1
    for bad in [0, -2, 1.5, "large", None, True]:
        with pytest.raises(ValueError, match=r"batch_size=.*expected 'auto'"):
            scale.map(range(10), batch_size=bad)
