"""Every rule of the machine spec: what is accepted, and the error for what is not."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydantic import SecretStr, ValidationError

from prefect_remote.spec import GpuRequest, MachineSpec, as_spec

GiB = 2**30


def error_of(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        MachineSpec(**fields)
    return str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4, (4, 4)), ([2, 8], (2, 8)), ((1, 1), (1, 1)), (None, None)],
)
def test_cpu_accepts_counts_and_ranges(value, expected):
    assert MachineSpec(cpu=value).cpu == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0, "cpu=0: expected a whole number of CPUs (1 or more)"),
        (-1, "cpu=-1"),
        (2.5, "cpu=2.5"),
        ("four", "cpu='four'"),
        (True, "cpu=True"),
        ([8, 2], "cpu=[8, 2]: the range's minimum is larger than its maximum"),
        ([1, 2, 3], "cpu=[1, 2, 3]: expected"),
    ],
)
def test_cpu_errors_name_field_value_and_accepted(value, fragment):
    message = error_of(cpu=value)
    assert fragment in message
    assert "CPUs" in message or "[min, max]" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("64 GiB", (64 * GiB, 64 * GiB)),
        ("512 GB", (512 * 10**9, 512 * 10**9)),
        ("512MiB", (512 * 2**20, 512 * 2**20)),
        (1024, (1024, 1024)),
        (["4 GiB", "16 GiB"], (4 * GiB, 16 * GiB)),
        ("1.5 gib", (int(1.5 * GiB), int(1.5 * GiB))),
    ],
)
def test_memory_accepts_units_bytes_and_ranges(value, expected):
    assert MachineSpec(memory=value).memory == expected


@pytest.mark.parametrize("value", ["lots", "12 parsecs", "", -5, 0, True, ["16 GiB", "4 GiB"], ["1 GiB"]])
def test_memory_errors(value):
    message = error_of(memory=value)
    assert f"memory={value!r}" in message
    assert "16 GiB" in message or "minimum is larger" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, GpuRequest(count=1)),
        (2, GpuRequest(count=2)),
        ("A10G", GpuRequest(type="a10g")),
        ({"count": 4, "type": "a100"}, GpuRequest(count=4, type="a100")),
        (False, None),
        (None, None),
    ],
)
def test_gpu_accepts_bool_count_type(value, expected):
    assert MachineSpec(gpu=value).gpu == expected


@pytest.mark.parametrize("value", [-1, "", {"count": 0}, {"count": 2, "vendor": "x"}, 1.5])
def test_gpu_errors(value):
    assert f"gpu={value!r}" in error_of(gpu=value)


def test_vm_type_accepts_name_or_list():
    assert MachineSpec(vm_type="m6i.xlarge").vm_type == ("m6i.xlarge",)
    assert MachineSpec(vm_type=["t3.large", "m5.large"]).vm_type == ("t3.large", "m5.large")
    assert "vm_type=[]" in error_of(vm_type=[])
    assert "vm_type=['']" in error_of(vm_type=[""])
    assert "vm_type=3" in error_of(vm_type=3)


def test_arm_region_disk():
    spec = MachineSpec(arm=True, region="us-east-2", disk_size=100)
    assert spec.arm is True and spec.region == "us-east-2" and spec.disk_size == 100 * GiB
    assert MachineSpec(disk_size="200 GB").disk_size == 200 * 10**9
    assert "arm='yes'" in error_of(arm="yes")
    assert "region='US East'" in error_of(region="US East")
    assert "disk_size='huge'" in error_of(disk_size="huge")
    assert "disk_size=-1" in error_of(disk_size=-1)


@pytest.mark.parametrize("policy", ["on-demand", "spot", "spot_with_fallback"])
def test_spot_policies(policy):
    assert MachineSpec(spot_policy=policy).spot_policy == policy


def test_spot_policy_error_lists_choices():
    message = error_of(spot_policy="cheap")
    assert "spot_policy='cheap'" in message and "'spot_with_fallback'" in message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2 hours", 7200),
        ("30 seconds", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("1 day", 86400),
        ("90", 90),
        (45, 45),
        (0.5, 0.5),
        (timedelta(minutes=2), 120),
    ],
)
@pytest.mark.parametrize("field", ["idle_timeout", "keepalive", "timeout"])
def test_durations(field, value, seconds):
    assert getattr(MachineSpec(**{field: value}), field) == seconds


@pytest.mark.parametrize("value", ["soon", "never", "5 parsecs", "", "m5", -3, 0, True])
@pytest.mark.parametrize("field", ["idle_timeout", "keepalive", "timeout"])
def test_duration_errors(field, value):
    message = error_of(**{field: value})
    assert f"{field}={value!r}" in message and "'2 hours'" in message


def test_ingress():
    assert MachineSpec(allow_ingress_from="me").allow_ingress_from == "me"
    assert MachineSpec(allow_ingress_from="10.1.2.3/8").allow_ingress_from == "10.0.0.0/8"
    assert "allow_ingress_from='the office'" in error_of(allow_ingress_from="the office")


@pytest.mark.parametrize("cidr", ["203.0.113.7/0", "0.0.0.0/0", "10.0.0.0/7", "::/0"])
def test_a_cidr_wider_than_8_bits_is_refused_naming_everyone(cidr):
    """A typo such as '203.0.113.7/0' normalises to the whole internet: refused, with 'everyone' named."""
    message = error_of(allow_ingress_from=cidr)
    assert f"allow_ingress_from={cidr!r} admits" in message and "pass 'everyone' if you mean everyone" in message
    assert MachineSpec(allow_ingress_from="everyone").allow_ingress_from == "everyone"


def test_tags_and_environ():
    spec = MachineSpec(tags={"team": "data", "n": 3}, environ={"A": "1", "TOKEN": SecretStr("hidden")})
    assert spec.tags == {"team": "data", "n": "3"}
    assert spec.public_environ == {"A": "1"}
    assert spec.secret_environ == {"TOKEN": "hidden"}
    assert "hidden" not in repr(spec) and "hidden" not in spec.model_dump_json()
    assert "tags=" in error_of(tags={"": "x"})
    assert "environ key '1BAD'" in error_of(environ={"1BAD": "x"})
    assert "environ['A']" in error_of(environ={"A": 1})


def test_unknown_field_lists_accepted_ones():
    message = error_of(cpus=4)
    assert "unknown machine spec field(s) cpus" in message and "cpu, memory" in message


def test_every_error_is_reported_at_once():
    message = error_of(cpu=0, memory="lots", spot_policy="cheap")
    assert "3 validation errors" in message


def test_summary_has_the_cost_relevant_facts():
    spec = MachineSpec(cpu=[2, 8], memory="16 GiB", spot_policy="spot", region="us-east-2", gpu="t4", arm=True)
    assert spec.summary() == "2-8 cpu, 16 GiB, 1x t4, arm, spot, us-east-2"
    assert MachineSpec().summary() == "default"


def test_as_spec_merges_and_ignores_none():
    base = MachineSpec(cpu=2, keepalive="30s")
    merged = as_spec(base, memory="4 GiB", cpu=None)
    assert merged.cpu == (2, 2) and merged.memory == (4 * GiB, 4 * GiB) and merged.keepalive == 30
    assert as_spec(None) == MachineSpec()
    assert as_spec({"cpu": 1}).cpu == (1, 1)


def test_as_spec_keeps_converted_values():
    spec = MachineSpec(disk_size=100, memory="4 GiB")
    assert as_spec(spec) is spec
    assert as_spec(spec, cpu=2).disk_size == 100 * GiB and as_spec(spec, cpu=2).memory == (4 * GiB, 4 * GiB)
    assert as_spec(spec, disk_size=10).disk_size == 10 * GiB


@pytest.mark.parametrize("value", [[1], True, {"size": 1}])
def test_disk_size_rejects_other_types(value):
    assert f"disk_size={value!r}" in error_of(disk_size=value)


def test_spec_is_immutable():
    with pytest.raises(ValidationError):
        MachineSpec(cpu=1).cpu = (2, 2)  # type: ignore[misc]


def test_wire_form_round_trips_with_secrets_apart():
    spec = MachineSpec(cpu=[1, 2], memory="2 GiB", disk_size=100, environ={"A": "1", "TOKEN": SecretStr("s3cret")}, keepalive="1m")
    wire = spec.to_wire()
    assert "s3cret" not in json.dumps(wire) and wire["environ"] == {"A": "1"}
    again = MachineSpec.from_wire(json.loads(json.dumps(wire)), spec.secret_environ)
    assert again == spec and again.disk_size == 100 * GiB and again.secret_environ == {"TOKEN": "s3cret"}


def test_image_is_chosen_by_image_or_its_older_name_container():
    assert MachineSpec(image="python:3.12-slim").image == "python:3.12-slim"
    assert MachineSpec(container="registry.example.com:5000/team/app:1").image == "registry.example.com:5000/team/app:1"
    assert MachineSpec(image="app:1", container="app:1").image == "app:1"
    assert as_spec({"container": "app:1"}, cpu=2).image == "app:1"
    with pytest.raises(ValidationError, match="image='app:1' and container='app:2' disagree: container is the older name of image"):
        MachineSpec(image="app:1", container="app:2")
    for bad in ("--privileged", "app 1", ""):
        with pytest.raises(ValidationError, match="expected an image reference such as 'python:3.12-slim'"):
            MachineSpec(image=bad)


def test_registry_credentials_are_both_given_as_secrets_or_neither():
    user, password = "PREFECT_REMOTE_REGISTRY_USERNAME", "PREFECT_REMOTE_REGISTRY_PASSWORD"
    both = MachineSpec(image="app:1", environ={user: SecretStr("u"), password: SecretStr("p")})
    assert both.secret_environ == {user: "u", password: "p"} and MachineSpec(image="app:1").environ == {}
    for alone, missing in ((user, password), (password, user)):
        with pytest.raises(ValidationError, match=f"environ has {alone} but not {missing}: a private registry needs both"):
            MachineSpec(image="app:1", environ={alone: SecretStr("x")})
    with pytest.raises(ValidationError, match=f"environ\\['{password}'\\] must be a pydantic.SecretStr"):
        MachineSpec(image="app:1", environ={user: SecretStr("u"), password: "p"})
