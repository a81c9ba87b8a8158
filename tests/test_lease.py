import time

from prefect_remote.lease import LeaseKeeper, default_owner
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider
from prefect_remote.spec import MachineSpec


def test_keeper_renews_until_removed():
    provider = LocalProvider(isolation="process")
    [machine] = provider.launch(MachineSpec(keepalive=1), BootPayload(["sleep", "30"]))
    keeper = LeaseKeeper()
    try:
        keeper.add(provider, [machine.id], keepalive=1)
        time.sleep(2.5)
        assert provider.lease_age(machine.id) < 0.6 and provider.describe(machine.id).alive
        keeper.remove([machine.id])
        assert keeper.held() == []
        [ended] = provider.wait([machine.id], timeout=12)
        assert "owner gone" in ended.reason
    finally:
        keeper.stop()


def test_owner_names_host_and_process():
    host, pid = default_owner().rsplit(":", 1)
    assert host and int(pid) > 0
