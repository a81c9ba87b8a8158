import os
import threading
import time

from prefect_remote.lease import MAX_INTERVAL, MIN_INTERVAL, LeaseKeeper, default_owner, renewal_interval
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider
from prefect_remote.providers.local.runtime import LocalRuntime
from prefect_remote.spec import MachineSpec


def test_keeper_renews_until_removed():
    provider = LocalProvider(isolation="process")
    [machine] = provider.launch(MachineSpec(keepalive=1), BootPayload(["sleep", "30"]))
    keeper = LeaseKeeper()
    try:
        keeper.add(provider, [machine.id], keepalive=1)
        time.sleep(2.5)
        os.environ["PREFECT_REMOTE_MACHINE_ID"] = machine.id  # read the lease as the machine does
        try:
            assert LocalRuntime(str(provider.home)).lease_age() < 0.75 and provider.describe(machine.id).alive
        finally:
            del os.environ["PREFECT_REMOTE_MACHINE_ID"]
        keeper.remove([machine.id])
        assert keeper.held() == []
        [ended] = provider.wait([machine.id], timeout=12)
        assert "owner gone" in ended.reason
    finally:
        keeper.stop()


def test_owner_names_host_and_process():
    host, pid = default_owner().rsplit(":", 1)
    assert host and int(pid) > 0


class CountingProvider(LocalProvider):
    """Counts renew_leases calls and the machines in each."""

    lease_interval = 5.0

    def __init__(self) -> None:
        self.calls: list[int] = []

    def renew_leases(self, machine_ids):
        self.calls.append(len(list(machine_ids)))
        return []


def test_one_renewal_call_per_provider_per_interval_however_many_machines():
    now = [0.0]
    keeper = LeaseKeeper(background=False, clock=lambda: now[0])
    provider, other = CountingProvider(), CountingProvider()
    keeper.add(provider, [f"m-{i}" for i in range(500)], keepalive=30)
    keeper.add(other, ["m-other"], keepalive=30)
    interval = renewal_interval(30, provider.lease_interval)
    assert interval == MAX_INTERVAL  # a third of keepalive, capped
    for _ in range(480):  # one simulated minute, checked every 0.125 s as a busy loop would
        now[0] += 0.125
        keeper.renew_due()
    assert provider.calls == [500] * 6 and other.calls == [1] * 6
    keeper.add(provider, ["m-short"], keepalive=3)  # a shorter keepalive, but never more often than lease_interval / 2
    provider.calls.clear()
    for _ in range(80):
        now[0] += 0.125
        keeper.renew_due()
    assert provider.calls == [501] * 4  # every 2.5 s, not every 1 s
    keeper.remove([f"m-{i}" for i in range(500)] + ["m-short"])
    assert keeper.held() == ["m-other"]


class FailingProvider(CountingProvider):
    def renew_leases(self, machine_ids):
        super().renew_leases(machine_ids)
        if self.failing:
            raise PermissionError("not authorized to perform ec2:CreateTags")
        return []


def test_failed_renewals_are_said_once_per_streak_and_retried(caplog):
    now = [0.0]
    keeper = LeaseKeeper(background=False, clock=lambda: now[0])
    provider = FailingProvider()
    provider.failing = True
    keeper.add(provider, ["m-1", "m-2"], keepalive=30)
    for failing in (True, True, True, False, True):
        provider.failing = failing
        now[0] += MAX_INTERVAL
        keeper.renew_due()
    warnings = [r for r in caplog.records if r.name == "prefect_remote.lease"]
    assert len(warnings) == 2 and "ec2:CreateTags" in warnings[0].getMessage() and "2 local machine(s)" in warnings[0].getMessage()
    assert len(provider.calls) == 5 and keeper.held() == ["m-1", "m-2"]  # still held, still retried


def test_adding_no_machines_holds_nothing_and_renewals_go_on():
    from prefect_remote.lease import LeaseKeeper
    from prefect_remote.providers import get_provider

    keeper = LeaseKeeper(background=False)
    keeper.add(get_provider("local"), [], keepalive=30)
    assert keeper.held() == []
    assert keeper.renew_due() > 0  # a round with nothing held: no renewal, no error
    keeper.stop()


class HangingProvider(CountingProvider):
    """A provider whose API hangs until released."""

    lease_interval = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def renew_leases(self, machine_ids):
        super().renew_leases(machine_ids)
        self.release.wait(30)
        return []


def test_a_hanging_provider_delays_no_other_providers_renewals_and_is_never_renewed_twice_at_once():
    now = [0.0]
    keeper = LeaseKeeper(background=False, clock=lambda: now[0])
    hanging, other = HangingProvider(), CountingProvider()
    other.lease_interval = 1.0
    keeper.add(hanging, ["m-hung"], keepalive=1.5)
    keeper.add(other, ["m-other"], keepalive=1.5)
    interval = renewal_interval(1.5, 1.0)
    try:
        for _ in range(6):
            now[0] += interval
            started = time.monotonic()
            wait = keeper.renew_due()
            assert time.monotonic() - started < interval + 1  # waited for the hung call until the next round at most
            assert wait <= MIN_INTERVAL + 1e-9  # while a call runs, the caller's loop comes back soon
        assert other.calls == [1] * 6  # renewed every round, on time
        assert hanging.calls == [1]  # its call still runs: no second one
        hanging.release.set()
        deadline = time.monotonic() + 5
        while keeper._renewing and time.monotonic() < deadline:
            time.sleep(0.01)
        now[0] += interval
        keeper.renew_due()
        assert hanging.calls == [1, 1] and other.calls == [1] * 7  # back in the rounds once its call returned
    finally:
        hanging.release.set()
        keeper.stop()
