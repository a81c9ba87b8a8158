"""Shared provider mechanisms: log chunks that never split a character, loopback URLs, type choice,
the boot script limit and declared capabilities."""

import pytest

from prefect_remote.errors import CapabilityError, CapacityError
from prefect_remote.providers import require
from prefect_remote.providers.base import BootPayload, Capabilities, InstanceType, Provider, pick_instance_type
from prefect_remote.providers.local import LocalProvider
from prefect_remote.providers.local.provider import complete_utf8
from prefect_remote.spec import MachineSpec


@pytest.mark.parametrize("cut", range(0, 5))
def test_complete_utf8_never_ends_inside_a_character(cut):
    text = "ok ✓ 🐍".encode()
    data = text[: len(text) - cut]
    kept = complete_utf8(data)
    kept.decode()  # whole characters only
    assert data.startswith(kept) and len(data) - len(kept) < 4


def test_base_providers_refuse_loopback_urls_with_what_to_do():
    provider = LocalProvider(isolation="process")
    with pytest.raises(CapacityError, match="loopback address, which local machines cannot reach; use an address"):
        Provider.reachable_url(provider, "http://127.0.0.1:4200/api")
    assert Provider.reachable_url(provider, "https://api.example.com/api") == "https://api.example.com/api"
    assert provider.reachable_url("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200/api"  # same host: reachable


def test_pick_instance_type_takes_the_cheapest_fit_and_says_why_none_fits():
    catalog = [
        InstanceType("big", cpu=8, memory=32 * 2**30, price=0.4),
        InstanceType("small", cpu=2, memory=8 * 2**30, price=0.1),
        InstanceType("gpu", cpu=8, memory=32 * 2**30, gpu=1, gpu_type="nvidia-t4", price=0.6),
        InstanceType("arm", cpu=2, memory=8 * 2**30, arch="arm64", price=0.08),
    ]
    assert pick_instance_type("x", catalog, MachineSpec(memory="4 GiB")).name == "small"
    assert pick_instance_type("x", catalog, MachineSpec(cpu=[4, 16])).name == "big"
    assert pick_instance_type("x", catalog, MachineSpec(gpu="t4")).name == "gpu"
    assert pick_instance_type("x", catalog, MachineSpec(arm=True)).name == "arm"
    assert pick_instance_type("x", catalog, MachineSpec(vm_type=["nope", "big"])).name == "big"
    with pytest.raises(CapacityError, match="vm_type=\\['nope'\\] is not offered here"):
        pick_instance_type("x", catalog, MachineSpec(vm_type="nope"))
    with pytest.raises(CapacityError, match="no instance type meets 64 cpu"):
        pick_instance_type("x", catalog, MachineSpec(cpu=64))


def test_boot_payload_keeps_what_it_was_given_as_lists_and_dicts():
    payload = BootPayload((arg for arg in ["python", "-V"]), env={"A": "1"})
    assert payload.command == ["python", "-V"]  # a generator is not used up by validation
    with pytest.raises(ValueError, match="not one string"):
        BootPayload("python -V")
    assert BootPayload(["true"], on_stop=(arg for arg in ["sh", "-c", "echo"])).on_stop == ["sh", "-c", "echo"]
    with pytest.raises(ValueError, match=r"BootPayload.on_stop='echo bye'.*not one string"):
        BootPayload(["true"], on_stop="echo bye")


class TinyBootScripts(LocalProvider):
    name = "tiny"
    max_boot_script = 2 * 1024


class ShortLived(LocalProvider):
    name = "short-lived"
    capabilities = Capabilities(max_lifetime=3600)
    lease_interval = 20.0


def test_the_boot_script_limit_is_the_providers_and_a_big_one_starts_nothing():
    from tests.conftest import machine_folders

    before = machine_folders()
    provider = TinyBootScripts(isolation="process")
    with pytest.raises(ValueError, match=r"KiB boot script, over the 2 KiB tiny machines accept; pass large data through files"):
        provider.launch(MachineSpec(), BootPayload(["true"], env={"BIG": "x" * 4096}, secrets={"TOKEN": "t"}))
    assert machine_folders() == before
    assert LocalProvider.max_boot_script == 96 * 1024  # the local provider keeps a large one


def test_capabilities_and_lease_timing_are_checked_before_anything_starts():
    with pytest.raises(CapabilityError, match="provider 'local' does not offer GPUs, which gpu=1 needs"):
        LocalProvider(isolation="process", overcommit=True).launch(MachineSpec(gpu=True), BootPayload(["true"]))
    with pytest.raises(CapabilityError, match="timeout=2h: short-lived machines run at most 1h"):
        ShortLived(isolation="process").check_spec(MachineSpec(timeout="2 hours"))
    with pytest.raises(ValueError, match="keepalive=10s: short-lived machines read their lease every 20s"):
        ShortLived(isolation="process").check_spec(MachineSpec(keepalive=10))
    ShortLived(isolation="process").check_spec(MachineSpec(timeout="1 hour", keepalive=20))
    no_images = type("NoImages", (LocalProvider,), {"name": "no-images", "capabilities": Capabilities(containers=False)})
    with pytest.raises(CapabilityError, match="provider 'no-images' does not run containers, which image='python:3.11-slim' needs"):
        no_images(isolation="process").check_spec(MachineSpec(container="python:3.11-slim"))

    class Closed(LocalProvider):
        name = "closed"
        capabilities = Capabilities(inbound_connections=False)

    with pytest.raises(
        CapabilityError, match="provider 'closed' does not accept inbound connections between machines, which inbound=True needs"
    ):
        Closed(isolation="process").check_spec(MachineSpec(inbound=True))


def test_require_names_what_needs_the_capability_and_who_has_it():
    class Closed(LocalProvider):
        name = "closed"
        capabilities = Capabilities(inbound_connections=False)

    require(LocalProvider(), "inbound_connections", "a Dask cluster needs")
    with pytest.raises(
        CapabilityError,
        match=(
            "provider 'closed' does not accept inbound connections between machines, which a Dask cluster needs; "
            "use a provider that does: aws, gcp, local"
        ),
    ):
        require(Closed(), "inbound_connections", "a Dask cluster needs")
    no_images = type("NoImages", (LocalProvider,), {"name": "no-images", "capabilities": Capabilities(containers=False)})
    with pytest.raises(
        CapabilityError, match="'no-images' does not run containers, which image='img' needs; use a provider that does: aws, gcp, local"
    ):
        require(no_images(), "containers", "image='img' needs")


def test_a_machine_launches_as_its_launcher_did_and_reaches_machines_inside_its_network(monkeypatch, tmp_path):
    """What every machine gets from its launcher (public settings, under its payload's env) makes the
    same provider there by default, with the launcher's store; inside that network a machine is
    reached at its private address, from elsewhere at its public one."""
    import os

    from prefect_remote.providers import get_provider
    from prefect_remote.providers.base import MACHINE_NETWORK_ENV, Machine
    from prefect_remote.software.stores import open_store

    monkeypatch.setenv("PREFECT_REMOTE_STORE", str(tmp_path / "store"))
    launcher = LocalProvider(tmp_path / "home", isolation="process", overcommit=True)
    environ = launcher.machine_environ()
    assert environ[MACHINE_NETWORK_ENV] == launcher.network() == "local"
    machine = Machine("m-1", "local", "running", "t", 0.0, private_address="10.0.0.5", public_address="34.1.2.3")
    assert launcher.client_address(machine) == "34.1.2.3"  # not on a machine: from outside

    for name in [name for name in os.environ if name.startswith("PREFECT_REMOTE_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():  # on the machine
        monkeypatch.setenv(name, value)
    there = get_provider()
    assert there.name == "local" and there.client_options() == launcher.client_options()
    assert open_store().url == open_store(tmp_path / "store").url
    assert get_provider("local", overcommit=False).client_options()["overcommit"] is False  # options given win
    assert there.runs_inside() and there.client_address(machine) == "10.0.0.5"
    monkeypatch.setenv(MACHINE_NETWORK_ENV, "elsewhere")
    assert not there.runs_inside() and there.client_address(machine) == "34.1.2.3"


def test_provider_options_are_a_json_object_or_say_so(monkeypatch):
    from prefect_remote.providers import get_provider
    from prefect_remote.settings import SettingsError

    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", "local")
    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER_OPTIONS", "isolation=process")
    with pytest.raises(SettingsError, match=r"PREFECT_REMOTE_PROVIDER_OPTIONS: expected a JSON object such as"):
        get_provider()
    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER_OPTIONS", '{"no_such_option": 1}')
    with pytest.raises(TypeError, match="no_such_option"):
        get_provider()


class KeptSecrets(LocalProvider):
    """The local provider with a secret channel whose secrets outlive a launch's machines (as a
    cloud's SSM parameter or Secret Manager secret do), to show what the base templates do with it."""

    name = "kept-secrets"

    def __init__(self, launches: dict[str, str], live: set[str]) -> None:
        super().__init__(isolation="process")
        self.launches, self.live = launches, live  # machine -> its launch; launches with a machine left
        self.ended: list[list[str]] = []
        self.renewed: list[list[str]] = []
        self.forgotten: list[str] = []

    def _terminate(self, machine_ids, reason, exit_code):
        self.ended.append(machine_ids)
        return {self.launches[machine_id] for machine_id in machine_ids}

    def _renew(self, machine_ids):
        self.renewed.append(machine_ids)
        return {machine_id: self.launches[machine_id] for machine_id in machine_ids if self.launches[machine_id] not in self.live}

    def _live_launches(self, launch_ids):
        return launch_ids & self.live

    def _forget_secrets(self, launch_id):
        self.forgotten.append(launch_id)


def test_terminate_and_renew_name_each_machine_once_and_forget_the_secrets_of_launches_with_none_left():
    provider = KeptSecrets({"m-1": "launch-a", "m-2": "launch-a", "m-3": "launch-b"}, live={"launch-b"})
    provider.terminate(["m-1", "m-2", "m-1", "m-3"])
    assert provider.ended == [["m-1", "m-2", "m-3"]]
    assert provider.forgotten == ["launch-a"]  # launch-b still has a machine: its secrets stay
    provider.terminate([])
    assert provider.ended == [["m-1", "m-2", "m-3"]]  # nothing to end, nothing asked
    provider.forgotten.clear()
    assert provider.renew_leases(["m-3", "m-1", "m-3"]) == ["m-1"]
    assert provider.renewed == [["m-3", "m-1"]] and provider.forgotten == ["launch-a"]


def test_only_the_only_machine_of_a_launch_with_secrets_is_told_to_remove_them(tmp_path):
    """The launcher's word to the agent (``forget_secrets``): a launch of one machine with secrets;
    not one of several (a sibling may not have read them yet), nor one with no secrets."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.local import LocalProvider
    from prefect_remote.spec import MachineSpec

    provider, spec = LocalProvider(home=tmp_path), MachineSpec()
    with_secrets, without = BootPayload(["app"], secrets={"TOKEN": "x"}), BootPayload(["app"])
    assert provider.agent_config(spec, with_secrets, "launch-0123")["forget_secrets"] is True
    assert provider.agent_config(spec, with_secrets, "launch-0123", count=2)["forget_secrets"] is False
    assert provider.agent_config(spec, without, "launch-0123")["forget_secrets"] is False
