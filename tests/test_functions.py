"""@prefect_remote.function on a real local-provider cluster (shared by the tests of this module)."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
import traceback

import pytest

import prefect_remote
from prefect_remote.boot import MACHINE_ID_ENV
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
    assert type(shout.cluster).__name__ == "LocalCluster"
    shout.cluster.close()


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
