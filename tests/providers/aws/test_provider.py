"""The EC2 provider against moto's EC2, SSM and CloudWatch Logs (server mode), through the real boto3
client. moto starts no instances: these check what the provider asks EC2 for and reads back.
Capacity errors, which moto never raises, are injected by the sandbox's strict EC2 (its server
answers them, as EC2 does)."""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time

import pytest
from pydantic import SecretStr

from prefect_remote.errors import CapacityError, MachineNotFound
from prefect_remote.machine.boot import AGENT_CONFIG_ENV, decode_agent_config
from prefect_remote.providers import get_provider, network
from prefect_remote.providers.aws import catalog
from prefect_remote.providers.aws.provider import LAUNCH_TAG, AWSError, AWSProvider
from prefect_remote.providers.base import BootPayload, Machine
from prefect_remote.spec import MachineSpec
from tests.conftest import wait_for
from tests.providers.aws.conftest import LAUNCHER_IP

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{}"


def launch(provider, *, count=1, tags=None, payload=None, owner=None, **spec) -> list[Machine]:
    tags = {"test": "aws", "run": secrets.token_hex(4), **(tags or {})}
    return provider.launch(MachineSpec(**spec), payload or BootPayload(["sleep", "600"]), count=count, tags=tags, owner=owner)


def instance(ec2, machine_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[machine_id])["Reservations"][0]["Instances"][0]


def tags_of(resource: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def user_data(ec2, machine_id: str) -> str:
    value = ec2.describe_instance_attribute(InstanceId=machine_id, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(value).decode()


def count_calls(client, operation: str) -> list[dict]:
    """Every later call of ``operation`` on ``client``, as its request body."""
    calls: list[dict] = []
    client.meta.events.register(f"before-call.ec2.{operation}", lambda params, **_: calls.append(params["body"]))
    return calls


@pytest.fixture
def runs(aws_sandbox):
    """How many RunInstances calls the server has answered, for the tests that start nothing: EC2's
    listings leave out what was launched a moment ago."""
    return lambda: aws_sandbox.calls["ec2:RunInstances"]


@pytest.fixture
def refuse_spot(aws_sandbox):
    """Makes the sandbox's EC2 refuse spot launches with a code, in every zone, for the test."""
    yield lambda code="InsufficientInstanceCapacity": aws_sandbox.ec2.refuse(code, spot=True)
    aws_sandbox.ec2.clear()


# -- launching -----------------------------------------------------------------------------------------


def test_launch_asks_ec2_for_the_chosen_machine(provider, ec2, ssm):
    before = time.time()
    runs = count_calls(provider.client("ec2"), "RunInstances")
    [machine] = launch(provider, cpu=2, memory="4 GiB", disk_size=40, keepalive="2 minutes", tags={"team": "data"}, owner="alice")
    assert machine.instance_type == "t3a.medium"  # the cheapest fit, from the catalog
    found = instance(ec2, machine.id)
    assert found["InstanceType"] == "t3a.medium"
    # A burstable type in standard credit mode: no surplus-credit charges beyond the price shown (moto keeps no credit mode).
    assert runs[0]["CreditSpecification.CpuCredits"] == "standard"
    assert found["ImageId"] == ssm.get_parameter(Name=AL2023.format("x86_64"))["Parameter"]["Value"]
    assert found["MetadataOptions"]["HttpTokens"] == "required" and found["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    assert found["MetadataOptions"]["HttpPutResponseHopLimit"] == 2  # a container on the machine reaches IMDS too
    shutdown = ec2.describe_instance_attribute(InstanceId=machine.id, Attribute="instanceInitiatedShutdownBehavior")
    assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    assert "InstanceLifecycle" not in found  # on-demand
    tags = tags_of(found)
    assert tags["team"] == "data" and tags["prefect-remote:owner"] == "alice"
    assert tags["prefect-remote:launch"].startswith("launch-") and tags["prefect-remote:keepalive"] == "120.0"
    assert (
        tags["prefect-remote:spec"] == "2 cpu, 4 GiB" and before <= int(tags["prefect-remote:lease"]) <= time.time() + 1
    )  # whole seconds, rounded up
    [volume] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [machine.id]}])["Volumes"]
    assert volume["Size"] == 40 and tags_of(volume) == tags and volume["Encrypted"]  # with the account's default EBS key
    assert machine.tags == {"test": "aws", "run": tags["run"], "team": "data"}  # the user's tags only
    assert (machine.owner, machine.spec, machine.region, machine.spot) == ("alice", "2 cpu, 4 GiB", "us-east-1", False)
    # As EC2 answers RunInstances: pending, with no public IP yet; it shows once the instance runs.
    assert machine.state == "pending" and machine.private_address and machine.public_address is None
    running = wait_for(lambda: (m := provider.describe(machine.id)).state == "running" and m, timeout=10, message="running")
    assert running.public_address
    assert machine.details["market"] == "on-demand" and machine.details["price_per_hour"] == 0.0376
    assert user_data(ec2, machine.id).startswith("#!")  # the boot script, as the instance runs it


def test_spot_and_arm(provider, ec2, ssm):
    [machine] = launch(provider, cpu=2, memory="4 GiB", arm=True, spot_policy="spot")
    found = instance(ec2, machine.id)
    assert found["InstanceLifecycle"] == "spot" and machine.spot and machine.details["market"] == "spot"
    assert machine.instance_type == "t4g.medium"
    assert found["ImageId"] == ssm.get_parameter(Name=AL2023.format("arm64"))["Parameter"]["Value"]


def test_an_ami_of_the_other_architecture_is_refused(aws_env, ssm, runs):
    arm_image = ssm.get_parameter(Name=AL2023.format("arm64"))["Parameter"]["Value"]
    provider = AWSProvider(ami=arm_image)
    before = runs()
    with pytest.raises(CapacityError, match=f"ami='{arm_image}' is arm64, but t3a.medium is x86_64"):
        launch(provider, cpu=2, memory="4 GiB")
    with pytest.raises(CapacityError, match="no such SSM parameter"):
        launch(AWSProvider(ami="/my/amis/none"), cpu=2)
    assert runs() == before


def test_instance_profile_and_count(aws_env, ec2):
    iam = aws_env.client("iam")
    name = f"prefect-remote-test-{secrets.token_hex(3)}"
    iam.create_instance_profile(InstanceProfileName=name)
    machines = launch(AWSProvider(instance_profile=name), count=3, cpu=1)
    assert len({m.id for m in machines}) == 3
    assert name in instance(ec2, machines[0].id)["IamInstanceProfile"]["Arn"]  # moto attaches it to the first only


# -- secrets ------------------------------------------------------------------------------------------


def test_secrets_go_to_ssm_only_and_leave_with_the_last_machine(provider, ec2, ssm, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="prefect_remote")  # ours; botocore logs request bodies at DEBUG
    token, spec_token = (f"secret-{secrets.token_hex(8)}" for _ in range(2))
    launches = []
    start = provider._start
    monkeypatch.setattr(provider, "_start", lambda launch: launches.append(launch) or start(launch))
    payload = BootPayload(["python", "app.py"], secrets={"TOKEN": token})
    machines = launch(provider, count=2, payload=payload, environ={"PLAIN": "visible", "SPEC_TOKEN": SecretStr(spec_token)})
    [made] = launches
    parameter = provider.secrets_parameter(made.id)
    assert parameter == f"/prefect-remote/{made.id}"
    stored = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]
    assert stored["Type"] == "SecureString" and json.loads(stored["Value"]) == {"TOKEN": token, "SPEC_TOKEN": spec_token}
    runtime_options = provider.runtime_options(made.id)
    assert runtime_options["secrets_parameter"] == parameter
    for machine in machines:
        found = instance(ec2, machine.id)
        script = user_data(ec2, machine.id)
        config = decode_agent_config(script.split(f"{AGENT_CONFIG_ENV}=")[1].split()[0])  # base64 in the script
        assert config["env"] == {**provider.machine_environ(), "PLAIN": "visible"} and config["secret_names"] == ["SPEC_TOKEN", "TOKEN"]
        exposed = [
            script,
            json.dumps(config),
            json.dumps(found["Tags"]),
            json.dumps(runtime_options),
            json.dumps(provider.client_options()),
        ]
        exposed.append(json.dumps(provider.describe(machine.id).__dict__, default=str))
        for text in [*exposed, caplog.text]:
            assert token not in text and spec_token not in text
    provider.terminate([machines[0].id])
    assert ssm.get_parameter(Name=parameter, WithDecryption=True)  # its other machine still reads it
    provider.terminate([machines[1].id])
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=parameter)


def test_secrets_over_what_an_ssm_parameter_holds_are_refused_before_anything_starts(provider, ssm):
    before = {p["Name"] for p in ssm.get_parameters_by_path(Path="/prefect-remote")["Parameters"]}
    with pytest.raises(ValueError, match=r"over the 8,192 bytes an SSM parameter holds on aws; keep large secrets"):
        launch(provider, cpu=1, payload=BootPayload(["app"], secrets={"CERT": "x" * 8200}))
    assert {p["Name"] for p in ssm.get_parameters_by_path(Path="/prefect-remote")["Parameters"]} == before
    # An Advanced parameter, read while its machine runs (the only machine of a launch removes it as it ends)
    [machine] = launch(provider, cpu=1, payload=BootPayload(["sleep", "600"], secrets={"CERT": "x" * 6000}))
    stored = ssm.get_parameter(Name=provider.secrets_parameter(provider.describe(machine.id).details["launch"]))["Parameter"]
    assert stored["Type"] == "SecureString"
    provider.terminate([machine.id])


def test_a_launch_keeps_its_secrets_while_ec2_does_not_list_all_its_instances(provider, aws_sandbox, ssm):
    # EC2's listings (DescribeInstances by filters) are eventually consistent: a sibling launched a moment
    # ago may be missing from the one that decides whether the launch's secrets may go.
    with aws_sandbox.ec2.as_it_was() as strict:
        strict.unlisted_seconds = 60
        machines = launch(provider, count=2, payload=BootPayload(["sleep", "600"], secrets={"TOKEN": "x"}))
        parameter = provider.secrets_parameter(provider.describe(machines[0].id).details["launch"])
        provider.terminate([machines[0].id])
        assert ssm.get_parameter(Name=parameter, WithDecryption=True)  # its sibling, not listed yet, still reads it
        provider.terminate([machines[1].id])  # neither listed yet, but this provider ended both: the secrets go
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=parameter)


def test_secrets_leave_with_machines_that_ended_themselves(provider, ec2, ssm):
    [machine] = launch(provider, payload=BootPayload(["sleep", "600"], secrets={"TOKEN": "x"}))
    parameter = provider.secrets_parameter(tags_of(instance(ec2, machine.id))[LAUNCH_TAG])
    assert ssm.get_parameter(Name=parameter, WithDecryption=True)
    ec2.terminate_instances(InstanceIds=[machine.id])  # as the machine's own agent does at its end
    provider.wait([machine.id], timeout=30)  # shutting-down, then terminated once its processes are gone
    assert provider.renew_leases([machine.id]) == [machine.id]  # the owner's next renewal notices
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=parameter)


def test_a_failed_launch_leaves_no_secrets(provider, ssm, refuse_spot):
    def parameters() -> set[str]:
        pages = ssm.get_paginator("get_parameters_by_path").paginate(Path="/prefect-remote/", Recursive=True)
        return {p["Name"] for page in pages for p in page["Parameters"]}

    before = parameters()
    refuse_spot()
    with pytest.raises(CapacityError):
        launch(provider, cpu=1, spot_policy="spot", payload=BootPayload(["app"], secrets={"TOKEN": "x"}))
    assert parameters() == before


# -- security groups --------------------------------------------------------------------------------


def ingress(ec2, machine_id: str) -> tuple[list[dict], set[str]]:
    """The ingress rules of a machine's groups, and the CIDRs they admit."""
    group_ids = [g["GroupId"] for g in instance(ec2, machine_id)["SecurityGroups"]]
    groups = ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"]
    rules = [rule for group in groups for rule in group["IpPermissions"]]
    return rules, {r["CidrIp"] for rule in rules for r in rule.get("IpRanges", [])}


def test_security_groups_admit_dask_from_the_launcher_only_by_default(provider, ec2):
    [machine] = launch(provider, cpu=1)
    rules, cidrs = ingress(ec2, machine.id)
    assert cidrs == {f"{LAUNCHER_IP}/32"}  # never 0.0.0.0/0 unless asked
    [dask] = [rule for rule in rules if rule.get("IpRanges")]
    assert (dask["IpProtocol"], dask["FromPort"], dask["ToPort"]) == ("tcp", 8786, 8787)
    groups = instance(ec2, machine.id)["SecurityGroups"]
    internal = next(g for g in groups if not g["GroupName"].endswith("/32"))
    assert any(pair["GroupId"] == internal["GroupId"] for rule in rules for pair in rule.get("UserIdGroupPairs", []))
    authorized = count_calls(provider.client("ec2"), "AuthorizeSecurityGroupIngress")
    [again] = launch(provider, cpu=1)
    assert instance(ec2, again.id)["SecurityGroups"] == groups  # reused, not made again
    assert authorized == []  # nor changed: a machine's role launching more may not change groups


def test_a_machine_in_the_vpc_admits_nobody_outside_for_what_it_launches(provider, ec2, monkeypatch):
    """A launcher inside the VPC (a flow run's instance) reaches instances on their private
    addresses: "me" opens no Dask port to anyone outside; the internal group is all they get."""
    from prefect_remote.providers.base import MACHINE_NETWORK_ENV

    assert provider.network() == f"aws:{provider.region}:{provider.vpc_id}"
    monkeypatch.setenv(MACHINE_NETWORK_ENV, provider.network())
    [machine] = launch(provider, cpu=1)
    assert ingress(ec2, machine.id)[1] == set() and len(instance(ec2, machine.id)["SecurityGroups"]) == 1
    monkeypatch.setenv(MACHINE_NETWORK_ENV, f"aws:{provider.region}:vpc-0another0000000")  # another VPC: from outside
    [outside] = launch(provider, cpu=1)
    assert ingress(ec2, outside.id)[1] == {f"{LAUNCHER_IP}/32"}


def test_a_security_group_left_without_rules_is_repaired(provider, ec2):
    [machine] = launch(provider, cpu=1)
    groups = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in instance(ec2, machine.id)["SecurityGroups"]])["SecurityGroups"]
    for group in groups:  # as a launcher that died between making the groups and adding their rules leaves them
        ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=group["IpPermissions"])
    assert ingress(ec2, machine.id)[0] == []
    [again] = launch(provider, cpu=1)
    assert ingress(ec2, again.id)[1] == {f"{LAUNCHER_IP}/32"}


def test_security_groups_everyone_or_a_cidr_when_asked(provider, ec2):
    [everyone] = launch(provider, cpu=1, allow_ingress_from="everyone")
    assert ingress(ec2, everyone.id)[1] == {"0.0.0.0/0"}
    [cidr] = launch(AWSProvider(allow_ingress_from="10.20.0.0/16"), cpu=1)
    assert ingress(ec2, cidr.id)[1] == {"10.20.0.0/16"}
    [default] = launch(provider, cpu=1)  # "everyone" once opened nothing else
    assert "0.0.0.0/0" not in ingress(ec2, default.id)[1]


def test_no_public_ingress_when_the_launcher_ip_is_unknown(aws_env, ec2, monkeypatch, caplog):
    monkeypatch.delenv("PREFECT_REMOTE_AWS_PUBLIC_IP")  # an option: read when the provider is made
    monkeypatch.setattr(network, "CHECKIP_URL", "http://127.0.0.1:9/")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="prefect_remote.providers.aws"):
        [machine] = launch(AWSProvider(), cpu=1)
    assert ingress(ec2, machine.id)[1] == set()
    assert "could not find this computer's public IP" in caplog.text and "PREFECT_REMOTE_AWS_PUBLIC_IP" in caplog.text


def test_given_security_groups_are_used_as_they_are(aws_env, ec2):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName=f"mine-{secrets.token_hex(3)}", Description="mine", VpcId=vpc)["GroupId"]
    ec2.get_waiter("security_group_exists").wait(GroupIds=[group], WaiterConfig={"Delay": 1})  # as a user's own set-up would
    [machine] = launch(AWSProvider(security_group_ids=[group]), cpu=1)
    assert [g["GroupId"] for g in instance(ec2, machine.id)["SecurityGroups"]] == [group]


# -- finding, ending, leases ------------------------------------------------------------------------


def test_list_describe_terminate(provider, ec2):
    run = secrets.token_hex(4)
    workers = launch(provider, count=2, tags={"run": run, "role": "worker"}, cpu=1)
    [scheduler] = launch(provider, tags={"run": run, "role": "scheduler"})
    # EC2 lists an instance a moment after its launch (eventual consistency).
    wait_for(lambda: len(provider.list({"run": run})) == 3, timeout=10, interval=0.5, message="the instances, listed")
    assert {m.id for m in provider.list({"run": run, "role": "worker"})} == {m.id for m in workers}
    assert {m.id for m in provider.list({"run": run})} == {m.id for m in [*workers, scheduler]}
    described = provider.describe(workers[0].id)
    assert described.tags == {"test": "aws", "run": run, "role": "worker"} and described.spec == "1 cpu"
    provider.terminate([m.id for m in workers], reason="scaled down", exit_code=0)
    for ended in provider.wait([m.id for m in workers], timeout=10):
        assert (ended.state, ended.reason, ended.exit_code) == ("terminated", "scaled down", 0)
    provider.terminate([workers[0].id], reason="again")  # already ended: fine, reason kept
    assert provider.describe(workers[0].id).reason == "scaled down"
    assert [m.id for m in provider.list({"run": run})] == [scheduler.id]
    assert len(provider.list({"run": run}, include_terminated=True)) == 3


def test_unknown_machines(provider, ec2):
    outsider = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[outsider], WaiterConfig={"Delay": 1})  # EC2 shows it after a moment
    for machine_id in ("m-000000000000", "i-0123456789abcdef0", outsider):  # malformed, unknown, not launched by us
        for call in (provider.describe, provider.logs, lambda i: provider.terminate([i])):
            with pytest.raises(MachineNotFound, match="machines ls"):
                call(machine_id)
    assert instance(ec2, outsider)["State"]["Name"] == "running"


def test_renew_leases_is_one_call_for_many_machines(provider, ec2):
    machines = launch(provider, count=50, cpu=1)
    ids = [m.id for m in machines]
    [ended] = launch(provider, cpu=1)
    provider.terminate([ended.id])
    provider.wait([ended.id], timeout=30)  # shutting-down (still running, as on EC2) until its machine has ended
    # A lease renewed a minute ago (not long ago enough for their agents, which read it, to end them)
    stale = str(int(time.time()) - 60)
    ec2.create_tags(Resources=ids, Tags=[{"Key": "prefect-remote:lease", "Value": stale}])
    client = provider.client("ec2")
    creates, describes = count_calls(client, "CreateTags"), count_calls(client, "DescribeInstances")
    gone = provider.renew_leases([*ids, ended.id, "i-0123456789abcdef0", "not-an-id"])
    assert gone == [ended.id, "i-0123456789abcdef0", "not-an-id"]
    # One listing; the ids it leaves out (the unknown one, and the new ones while EC2 does not list them yet)
    # by id, once more without those EC2 does not know.
    assert len(creates) == 1 and len(describes) <= 3
    for machine_id in (ids[0], ids[-1]):
        assert time.time() - int(tags_of(instance(ec2, machine_id))["prefect-remote:lease"]) < 5


def test_renewal_does_not_end_machines_ec2_does_not_list_yet(provider, aws_sandbox, ec2):
    # EC2 lists a new instance (DescribeInstances by filters) only a while after its launch, and may not know
    # its id at first either; it lists an ended one for about an hour. An id missing from the listing is young.
    with aws_sandbox.ec2.as_it_was() as strict:
        strict.unlisted_seconds = 60
        [machine] = launch(provider, cpu=1)  # known by id once launch returns; not listed
        stale = str(int(time.time()) - 60)  # (a lease old enough to end it would have its agent end it first)
        ec2.create_tags(Resources=[machine.id], Tags=[{"Key": "prefect-remote:lease", "Value": stale}])
        other = AWSProvider()  # e.g. a cluster's scheduler, holding machines its creator launched
        assert other.renew_leases([machine.id, "i-0123456789abcdef0"]) == ["i-0123456789abcdef0"]
        assert time.time() - int(tags_of(instance(ec2, machine.id))["prefect-remote:lease"]) < 5  # renewed
        strict.unknown_seconds = 60  # and unknown by id again for a moment (another of EC2's servers answers)
        assert provider.renew_leases([machine.id]) == []  # its launcher launched it a moment ago
        assert other.renew_leases([machine.id]) == [machine.id]  # unknown to EC2, and not launched by it
        strict.unknown_seconds = 0
        provider.terminate([machine.id])
        provider.wait([machine.id], timeout=30)
        assert other.renew_leases([machine.id]) == [machine.id]  # ended, as EC2 says by id


def test_logs_from_cloudwatch_with_a_cursor(provider, aws_env):
    [machine] = launch(provider, cpu=1)
    provider.terminate([machine.id])
    provider.wait([machine.id], timeout=30)
    logs = aws_env.client("logs")  # a machine's writes, by the account's owner
    try:  # what it shipped while it booted
        logs.delete_log_stream(logGroupName="/prefect-remote/machines", logStreamName=machine.id)
    except logs.exceptions.ResourceNotFoundException:
        pass
    empty = provider.logs(machine.id)
    assert empty.text == "" and provider.logs(machine.id, cursor="abc").cursor == "abc"  # no stream
    try:
        logs.create_log_group(logGroupName="/prefect-remote/machines")
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName="/prefect-remote/machines", logStreamName=machine.id)

    def put(*lines):
        events = [{"timestamp": int(time.time() * 1000), "message": line} for line in lines]
        logs.put_log_events(logGroupName="/prefect-remote/machines", logStreamName=machine.id, logEvents=events)

    put("booting machine", "payload started\n")
    first = provider.logs(machine.id)
    assert first.text == "booting machine\npayload started\n"
    assert provider.logs(machine.id, cursor=first.cursor).text == ""
    put("machine ending")
    rest = provider.logs(machine.id, cursor=first.cursor)
    assert rest.text == "machine ending\n" and rest.cursor != first.cursor

    # A long log: its first page (10,000 events at most) ends long before the log does; the tail is its last page.
    stamp = int(time.time() * 1000)
    for start in (0, 6000):
        events = [{"timestamp": stamp + n, "message": f"line {n}"} for n in range(start, start + 6000)]
        logs.put_log_events(logGroupName="/prefect-remote/machines", logStreamName=machine.id, logEvents=events)
    assert "line 11999" not in provider.logs(machine.id).text
    assert provider.log_tail(machine.id, 20) == "".join(f"line {n}\n" for n in range(11980, 12000))


# -- spot capacity ----------------------------------------------------------------------------------


def test_spot_with_fallback_launches_on_demand_when_spot_is_short(provider, ec2, caplog, refuse_spot):
    refuse_spot()
    with caplog.at_level(logging.WARNING, logger="prefect_remote.providers.aws"):
        [machine] = launch(provider, cpu=2, memory="4 GiB", spot_policy="spot_with_fallback")
    assert not machine.spot and "InstanceLifecycle" not in instance(ec2, machine.id)
    assert "spot capacity unavailable for t3a.medium in us-east-1 (InsufficientInstanceCapacity); launching on-demand" in caplog.text


def test_spot_alone_fails_clearly_and_starts_nothing(provider, refuse_spot):
    refuse_spot("MaxSpotInstanceCountExceeded")
    run = secrets.token_hex(4)
    with pytest.raises(
        CapacityError,
        match=(
            r"spot capacity unavailable for t3a.medium in us-east-1 \(MaxSpotInstanceCountExceeded\); try "
            r"spot_policy='spot_with_fallback'"
        ),
    ):
        launch(provider, cpu=2, memory="4 GiB", spot_policy="spot", tags={"run": run})
    assert provider.list({"run": run}, include_terminated=True) == []


# -- bad input: a clear error naming the fix, nothing started ------------------------------------------


def test_requests_no_instance_type_meets(provider, runs):
    before = runs()
    cases = [
        ({"vm_type": "m9z.huge"}, "vm_type=\\['m9z.huge'\\]: not an instance type offered in us-east-1"),
        ({"vm_type": "m6i.larg"}, "did you mean m6i.large"),
        ({"cpu": 100000}, "cpu=100000: the largest x86_64 instance type in us-east-1 has"),
        ({"cpu": 1, "memory": "512 GiB"}, "no instance type meets 1 cpu, 512 GiB"),
        ({"vm_type": "m6i.large", "arm": True}, "arm=True, but vm_type=\\['m6i.large'\\] is x86_64; name a Graviton"),
        ({"gpu": "nosuchgpu"}, "gpu='nosuchgpu': no such GPU in region us-east-1"),
        ({"region": "eu-west-1"}, "region='eu-west-1', but this aws provider launches in us-east-1; make it with region='eu-west-1'"),
    ]
    for spec, message in cases:
        with pytest.raises(CapacityError, match=message):
            launch(provider, **spec)
    with pytest.raises(ValueError, match="tag names use letters"):
        launch(provider, cpu=1, tags={"team#1": "x"})
    assert runs() == before


def test_a_gpu_where_the_region_has_none(provider, monkeypatch):
    without_gpus = [item for item in provider.instance_types() if not item.gpu]
    with pytest.raises(CapacityError, match="no GPU instance type in region us-east-1; GPU regions include .*us-east-1"):
        catalog.check_request(without_gpus, MachineSpec(gpu=1), "us-east-1")
    monkeypatch.setattr(provider, "instance_types", lambda: without_gpus)
    with pytest.raises(CapacityError, match="no GPU instance type"):
        launch(provider, gpu=1)
    [machine] = launch(AWSProvider(), gpu="t4")  # a region with GPUs serves them
    assert machine.instance_type.startswith("g4dn.")


DLAMI = "/aws/service/deeplearning/ami/{}/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"


def test_a_gpu_machine_boots_the_deep_learning_base_ami_with_nvidia_drivers(provider, ec2, ssm):
    [machine] = launch(provider, gpu="t4")
    found = instance(ec2, machine.id)
    dlami = ssm.get_parameter(Name=DLAMI.format("x86_64"))["Parameter"]["Value"]  # AWS's public parameter
    assert found["ImageId"] == dlami and found["ImageId"] != ssm.get_parameter(Name=AL2023.format("x86_64"))["Parameter"]["Value"]
    [image] = ec2.describe_images(ImageIds=[dlami])["Images"]
    assert "Nvidia Driver GPU" in image["Name"]
    [volume] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [machine.id]}])["Volumes"]
    assert volume["Size"] == 75  # the image's snapshot, larger than the 40 GiB default
    [cpu] = launch(provider, cpu=1)
    assert instance(ec2, cpu.id)["ImageId"] == ssm.get_parameter(Name=AL2023.format("x86_64"))["Parameter"]["Value"]
    provider.terminate([machine.id, cpu.id])


ECS_AL2023 = "/aws/service/ecs/optimized-ami/amazon-linux-2023/{}recommended/image_id"


def test_the_default_ami_of_a_machine_for_an_image_carries_an_engine():
    """image=: the ECS-optimized Amazon Linux 2023 AMI of the architecture (its GPU variant for a GPU);
    AWS has no arm64 GPU variant, so that keeps the Deep Learning AMI. Without an image: as before."""
    from prefect_remote.providers.aws.provider import default_ami

    assert default_ami("x86_64", gpu=False, container=True) == ECS_AL2023.format("")
    assert default_ami("arm64", gpu=False, container=True) == ECS_AL2023.format("arm64/")
    assert default_ami("x86_64", gpu=True, container=True) == ECS_AL2023.format("gpu/")
    assert default_ami("arm64", gpu=True, container=True) == DLAMI.format("arm64")
    for arch in ("x86_64", "arm64"):
        assert default_ami(arch, gpu=False, container=False) == AL2023.format(arch)
        assert default_ami(arch, gpu=True, container=False) == DLAMI.format(arch)


def test_a_machine_for_an_image_boots_the_ecs_optimized_ami_unless_ami_is_given(provider, ec2, ssm):
    def value(parameter: str) -> str:
        return ssm.get_parameter(Name=parameter)["Parameter"]["Value"]

    machines = {
        ECS_AL2023.format(""): launch(provider, image="python:3.12-slim"),
        ECS_AL2023.format("arm64/"): launch(provider, image="python:3.12-slim", arm=True),
        ECS_AL2023.format("gpu/"): launch(provider, image="python:3.12-slim", gpu="t4"),
        AL2023.format("x86_64"): launch(AWSProvider(ami=AL2023.format("x86_64")), image="python:3.12-slim"),  # the user's AMI wins
    }
    try:
        for parameter, [machine] in machines.items():
            assert instance(ec2, machine.id)["ImageId"] == value(parameter), parameter
        [gpu_image] = ec2.describe_images(ImageIds=[value(ECS_AL2023.format("gpu/"))])["Images"]
        assert gpu_image["Name"].startswith("al2023-ami-ecs-gpu-hvm-")
    finally:
        provider.terminate([machine.id for [machine] in machines.values()])


def test_bad_options():
    for options, message in [
        ({"region": "Ohio"}, "region='Ohio': expected an AWS region"),
        ({"ami": "ami-xyz"}, "ami='ami-xyz': expected an AMI id"),
        ({"subnet_id": "sn-1"}, "subnet_id='sn-1': expected an id such as 'subnet-"),
        ({"security_group_ids": ["default"]}, "security_group_ids=\\['default'\\]"),
        ({"allow_ingress_from": "my office"}, "allow_ingress_from='my office': expected 'me'"),
        ({"secrets_prefix": "/aws/x/"}, "not under /aws"),
    ]:
        with pytest.raises(ValueError, match=message):
            AWSProvider(**{"region": "us-east-2", **options})


def test_no_region(monkeypatch, tmp_path):
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    with pytest.raises(AWSError, match="no AWS region.*AWS_DEFAULT_REGION.*aws configure"):
        AWSProvider()


def test_no_credentials(aws_env, aws_sandbox, monkeypatch, tmp_path):
    writes = ("ec2:RunInstances", "ssm:PutParameter")
    before = [aws_sandbox.calls[call] for call in writes]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        (tmp_path / name).write_text("")
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance profile to fall back on here
    provider = AWSProvider()
    for attempt in (
        lambda: launch(provider, cpu=1),
        lambda: launch(provider, cpu=1, payload=BootPayload(["app"], secrets={"TOKEN": "x"})),
        lambda: provider.list(),
    ):
        with pytest.raises(AWSError, match="no AWS credentials found.*AWS_PROFILE.*aws configure"):
            attempt()
    assert [aws_sandbox.calls[call] for call in writes] == before  # nothing launched, no secret stored


# -- what it declares and hands on ----------------------------------------------------------------------


def test_declarations_and_options(provider):
    assert isinstance(get_provider("aws"), AWSProvider)
    capabilities = provider.capabilities
    assert capabilities.inbound_connections and capabilities.terminate_one and capabilities.gpus
    assert capabilities.containers and capabilities.max_lifetime is None  # image=: the boot's engine, else Docker installed
    assert AWSProvider.lease_interval == 30.0 and provider.max_boot_script == 16 * 1024
    assert provider.lease_interval == 5.0  # PREFECT_REMOTE_AWS_LEASE_INTERVAL, as the sandbox tests set it
    options = provider.client_options()
    assert options["region"] == "us-east-1" and options["allow_ingress_from"] == "me"
    assert not {key for key in json.dumps(options).lower().split('"') if "secret_access" in key or "access_key" in key}
    assert AWSProvider(**options).client_options() == options  # rebuilds the same provider elsewhere
    assert provider.runtime_options("launch-0123456789ab") == {
        "region": "us-east-1",
        "secrets_parameter": "/prefect-remote/launch-0123456789ab",
        "log_group": "/prefect-remote/machines",
        "lease_tag": "prefect-remote:lease",
        "metadata_endpoint": None,
    }


def test_keepalive_shorter_than_the_lease_interval_is_refused(aws_env):
    provider = AWSProvider(lease_interval=30)
    with pytest.raises(ValueError, match="keepalive=10s: aws machines read their lease every 30s"):
        launch(provider, cpu=1, keepalive=10)
    with pytest.raises(ValueError, match="greater than or equal to 5"):
        AWSProvider(lease_interval=1)


def test_estimated_cost():
    machine = Machine("i-0abc12345def67890", "aws", "running", "m6i.large", created=1000.0, details={"price_per_hour": 0.096})
    assert machine.estimated_cost(until=1000.0 + 2 * 3600) == pytest.approx(0.192)
    assert machine.estimated_cost(until=500.0) == 0.0  # a clock behind the launch costs nothing
    assert Machine("i-1", "aws", "running", "x.large", created=0.0, details={"price_per_hour": None}).estimated_cost() is None
    assert (
        0
        < Machine("i-2", "aws", "running", "m6i.large", created=time.time() - 60, details={"price_per_hour": 0.096}).estimated_cost()
        < 0.002
    )
    ended = Machine("i-3", "aws", "terminated", "m6i.large", created=0.0, details={"price_per_hour": 0.096, "ended": 3600.0})
    assert ended.estimated_cost() == pytest.approx(0.096)  # until its end, not now


def test_prefect_labels_become_tag_names_the_metadata_service_serves(provider, ec2):
    [machine] = launch(provider, cpu=1, tags={"prefect.io/flow-run-id": "abc", "my team": "data"})
    tags = tags_of(instance(ec2, machine.id))
    assert tags["prefect.io:flow-run-id"] == "abc" and tags["my_team"] == "data"
    listed = lambda: machine.id in [m.id for m in provider.list({"my team": "data"})]  # noqa: E731
    wait_for(listed, timeout=10, interval=0.5, message="the instance, listed")  # EC2 lists it a moment after its launch
    assert [m.id for m in provider.list({"prefect.io/flow-run-id": "abc"})] == [machine.id]  # found by the names given


@pytest.mark.parametrize("name", [".", "..", "_index"])
def test_tag_names_the_metadata_service_reserves_are_refused_before_anything_starts(provider, ec2, name, runs):
    before = runs()
    with pytest.raises(ValueError, match=f"'{re.escape(name)}' is reserved by the instance metadata service"):
        launch(provider, cpu=1, tags={name: "x"})
    assert runs() == before


def test_secrets_of_launches_whose_owner_died_are_swept(provider, ssm):
    # An owner killed -9: its machines ended themselves, and nobody renewed to see them go.
    ssm.put_parameter(Name="/prefect-remote/launch-0123456789ab", Value="{}", Type="SecureString")
    [alive] = launch(provider, cpu=1, payload=BootPayload(["sleep", "600"], secrets={"TOKEN": "x"}))
    alive_launch = provider.describe(alive.id).details["launch"]
    swept = provider.sweep_secrets(older_than=0)
    assert "launch-0123456789ab" in swept
    names = {p["Name"] for p in ssm.get_parameters_by_path(Path="/prefect-remote")["Parameters"]}
    assert "/prefect-remote/launch-0123456789ab" not in names and f"/prefect-remote/{alive_launch}" in names


def test_a_store_on_this_computer_is_refused_before_anything_starts(provider, monkeypatch, tmp_path, runs):
    from prefect_remote.errors import CapabilityError

    monkeypatch.setenv("PREFECT_REMOTE_STORE", str(tmp_path / "store"))
    before = runs()
    # This checkout is not a released prefect-remote: its machines would need its wheel from the store.
    with pytest.raises(CapabilityError, match="which aws machines cannot read; set PREFECT_REMOTE_STORE to a bucket"):
        launch(provider, cpu=1)
    assert runs() == before


def test_a_rebooted_instance_ends_itself_instead_of_running_on_with_no_agent(provider, aws_sandbox, tmp_path):
    """EC2 runs user data on the first boot only: after RebootInstances no agent would run. The boot
    left a cloud-init per-boot script that powers the instance off, which terminates it
    (InstanceInitiatedShutdownBehavior=terminate); the payload never runs twice. From a stock (cold)
    image: uv, Python and the agent's environment downloaded as on a new instance."""
    runs = tmp_path / "runs"
    with aws_sandbox.warm(False):
        [machine] = provider.launch(MachineSpec(cpu=2), BootPayload(["sh", "-c", f"echo run >> {runs}; sleep 300"]), tags={"t": "b9"})
        wait_for(lambda: runs.exists(), timeout=240, message="the payload to start")
    aws_sandbox.client("ec2").reboot_instances(InstanceIds=[machine.id])
    [ended] = provider.wait([machine.id], timeout=60)
    assert ended.state == "terminated" and runs.read_text() == "run\n"
    reason = aws_sandbox.client("ec2").describe_instances(InstanceIds=[machine.id])["Reservations"][0]["Instances"][0]["StateReason"]
    assert reason["Code"] == "Client.InstanceInitiatedShutdown"
    assert aws_sandbox.runner.machine_of(machine.id) is None  # no agent, no process of it left


def test_a_boot_with_no_way_out_fails_within_a_minute_naming_egress(aws_env, aws_sandbox, monkeypatch):
    """A subnet that maps no public IP, with no NAT gateway: the instance reaches nothing beyond the VPC
    (the sandbox drops its traffic, as a VPC does). A stock boot says so within a minute, with the
    fixes, and the machine ends (before: uv's download hung for 300 s)."""
    import random

    ec2 = aws_sandbox.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    with aws_sandbox.enforcing(False):  # (the account's owner makes it; the sandbox's IAM knows no CreateSubnet)
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"172.31.{random.randrange(200, 255)}.0/24", AvailabilityZone="us-east-1a")
    monkeypatch.setenv("PREFECT_REMOTE_AWS_SUBNET_ID", subnet["Subnet"]["SubnetId"])
    provider = AWSProvider()
    started = time.monotonic()
    with aws_sandbox.warm(False):
        [machine] = provider.launch(MachineSpec(cpu=2, allow_ingress_from="none"), BootPayload(["true"]))
        [ended] = provider.wait([machine.id], timeout=120)
    elapsed = time.monotonic() - started
    local = aws_sandbox.runner.machines.list({"sandbox-instance": machine.id}, include_terminated=True)[0]
    log = aws_sandbox.runner.machines.logs(local.id).text
    assert ended.state == "terminated" and elapsed < 60, (elapsed, log)
    assert "boot failed during 'egress'" in log and "no route to the package index" in log
    assert "public IP" in log and "NAT gateway" in log and "VPC endpoints" in log


def stock_log(aws_sandbox, instance_id: str) -> str:
    """The whole console output of the sandbox instance ``instance_id`` (boot, agent, payload)."""
    [local] = aws_sandbox.runner.machines.list({"sandbox-instance": instance_id}, include_terminated=True)
    return aws_sandbox.runner.machines.logs(local.id).text


def test_an_agent_that_cannot_start_its_runtime_ends_its_instance(aws_env, aws_sandbox, monkeypatch):
    """The instance's agent fails before its main loop (here its runtime cannot be made): the boot's
    trap powers the instance off, which terminates it (InstanceInitiatedShutdownBehavior=terminate),
    though the instance would outlive its user data, and its log says why."""
    monkeypatch.setattr(AWSProvider, "runtime", "prefect_remote.providers.aws.runtime:NoSuchRuntime")
    provider = AWSProvider()
    [machine] = launch(provider, cpu=2, payload=BootPayload(["sleep", "600"]))
    [ended] = provider.wait([machine.id], timeout=120)
    assert ended.state == "terminated"
    reason = aws_sandbox.client("ec2").describe_instances(InstanceIds=[machine.id])["Reservations"][0]["Instances"][0]["StateReason"]
    assert reason["Code"] == "Client.InstanceInitiatedShutdown"
    log = stock_log(aws_sandbox, machine.id)
    assert "has no attribute 'NoSuchRuntime'" in log
    assert "boot failed during 'agent start (the agent exited before its main loop)' (exit 1); ending this machine" in log


def test_an_agent_refused_terminateinstances_halts_its_instance(aws_env, aws_sandbox):
    """The agent ends its machine, but EC2 refuses its TerminateInstances (here an explicit deny on the
    machines' role): it falls back to ``halt()``, the OS's ``shutdown -h now``, which terminates the
    instance (InstanceInitiatedShutdownBehavior=terminate). Without it the instance would outlive its
    user data, running with nothing on it until the backstop."""
    from prefect_remote.sandbox.aws import INSTANCE_PROFILE

    deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "ec2:TerminateInstances", "Resource": "*"}]}
    iam = aws_sandbox.client("iam")
    provider = AWSProvider()
    iam.put_role_policy(RoleName=INSTANCE_PROFILE, PolicyName="test-deny-terminate", PolicyDocument=json.dumps(deny))
    try:
        with aws_sandbox.ec2.as_it_was() as strict:  # the agent tags its new instance at once: EC2 knows its id by then
            strict.unknown_seconds = 0
            [machine] = launch(provider, cpu=2, payload=BootPayload(["true"]))
            [ended] = provider.wait([machine.id], timeout=180)
    finally:
        iam.delete_role_policy(RoleName=INSTANCE_PROFILE, PolicyName="test-deny-terminate")
    log = stock_log(aws_sandbox, machine.id)
    assert ended.state == "terminated" and ended.reason == "payload finished", log
    found = instance(aws_sandbox.client("ec2"), machine.id)
    assert found["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    assert "could not reach the provider to end this machine" in log and "halting it" in log
    assert "the machine shut itself down (/usr/sbin/shutdown -h now)" in log or "the machine shut itself down" in log


def test_an_agent_whose_secret_is_gone_ends_its_instance_saying_why(aws_env, aws_sandbox, ssm):
    """The launch's secret deleted before the agent reads it (as a sweep or a teardown would): the
    instance ends, and its reason says the secrets could not be read."""
    provider = AWSProvider()
    with aws_sandbox.ec2.as_it_was() as strict:
        strict.unknown_seconds = 0
        [machine] = launch(provider, cpu=2, payload=BootPayload(["sleep", "600"], secrets={"TOKEN": "s3cret"}))
        name = tags_of(instance(ssm_ec2 := aws_sandbox.client("ec2"), machine.id))["prefect-remote:secrets"]
        with aws_sandbox.enforcing(False):
            ssm.delete_parameter(Name=name)
        [ended] = provider.wait([machine.id], timeout=120)
    assert ended.state == "terminated"
    assert "this launch's secrets could not be read" in tags_of(instance(ssm_ec2, machine.id)).get("prefect-remote:reason", "")
    assert "this launch's secrets could not be read" in stock_log(aws_sandbox, machine.id)


def test_an_instance_whose_owner_is_gone_takes_its_launch_secret_with_it(aws_env, aws_sandbox, ssm):
    """Nobody renews (its owner died): the instance ends itself after keepalive, and its launch's
    parameter goes with it, through the machine's own role, with no call of an owner's (before, only
    another launch's sweep removed it, an hour later)."""
    provider = AWSProvider(lease_interval=5)
    [machine] = launch(provider, cpu=2, keepalive=10, payload=BootPayload(["sleep", "600"], secrets={"TOKEN": "s3cret"}))
    name = tags_of(instance(aws_sandbox.client("ec2"), machine.id))["prefect-remote:secrets"]
    assert ssm.get_parameter(Name=name)
    [ended] = provider.wait([machine.id], timeout=180, poll=1)  # describe only: no owner's renewal, nor terminate
    assert (ended.reason or "").startswith("owner gone"), stock_log(aws_sandbox, machine.id)
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=name)


def test_a_killed_agent_ends_its_instance_within_keepalive_plus_one_lease_interval(aws_env, aws_sandbox, tmp_path):
    """``kill -9`` of the agent alone (its payload runs on, its owner renews the lease): no agent, no
    API call, yet the instance ends, by the shutdown the boot scheduled and the agent pushed forward,
    within keepalive plus one lease interval (10 s + 5 s: a minute of the sandbox's 15-second clock).
    Three instances, each measured."""
    from tests.providers.orphans import renewing, seconds_until_each_ends

    provider = AWSProvider(lease_interval=5)
    started = [tmp_path / f"started-{n}" for n in range(3)]
    with aws_sandbox.vms(minute=15):
        machines = [
            launch(provider, cpu=2, keepalive=10, payload=BootPayload(["sh", "-c", f"touch {marker}; sleep 600"]))[0] for marker in started
        ]
    ids = [machine.id for machine in machines]
    with renewing(lambda: provider.renew_leases(ids), every=2):
        wait_for(lambda: all(marker.exists() for marker in started), timeout=180, message="the payloads to start")
        time.sleep(6)  # past the agents' first pushes of the backstop
        agents = {machine.id: aws_sandbox.runner.machine_of(machine.id) for machine in machines}
        figures = seconds_until_each_ends(agents, lambda instance_id: aws_sandbox.runner.machine_of(instance_id) is None, timeout=60)
    print(f"\nEC2 sandbox: killed agent -> ended instance: {', '.join(f'{s:.1f} s' for s in figures)} (bound 15 s)")
    for machine, seconds in zip(machines, figures, strict=True):
        assert seconds <= 15 + 2, (seconds, stock_log(aws_sandbox, machine.id))
        log = stock_log(aws_sandbox, machine.id)
        assert "the machine shut itself down (/usr/sbin/shutdown -h +1)" in log or "shut itself down" in log
