"""A sandbox instance is a stock machine: its boot starts in ``/`` with cloud-init's (or Google's
startup-script runner's) environment, no HOME, a minimal PATH and no warm uv cache unless the
sandbox is warm; it writes to a root of its own, never to this host's; and it reboots as its cloud
does (EC2: user data on the first boot only, cloud-init's per-boot scripts on every boot; GCE: the
startup script on every boot).

What each instance writes to ``tmp_path`` (the tests' scratch folders, shared with every instance
as a network share) the test reads; anything else it writes stays on its own disk
(:meth:`InstanceRunner.disk_of`).

Anchors: cloud-init's docs ("Boot stages", modules ``scripts_per_boot`` and ``scripts_user``, which
run user data once per instance), EC2's user guide ("Run commands when you launch an EC2 instance
with user data input": by default, user data scripts run only during the first boot cycle), Compute
Engine's "About startup scripts" (run on every boot) and the ``google-startup-scripts.service`` unit.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.conftest import wait_for

IMAGE = "ami-12c6146b"
MACHINE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def probe(out: Path, marker: str) -> str:
    """A boot script that records where and with what it started, writes ``marker`` to ``/``, then runs on."""
    return (
        "#!/bin/bash\n"
        f"echo {marker} > /{marker}\n"
        'python3 -c \'import json, os, sys; json.dump({"cwd": os.getcwd(), "env": dict(os.environ)}, sys.stdout)\''
        f" > {out}.part && mv {out}.part {out}\n"
        "sleep 300\n"
    )


def run_instance(aws_sandbox, user_data: str, on_shutdown: str | None = "terminate") -> str:
    """An instance booting ``user_data``, whose own shutdown terminates it (as the product launches
    them) or, with ``on_shutdown="stop"`` or None (not given: EC2's default, stop), stops it."""
    ec2 = aws_sandbox.client("ec2")
    [instance] = ec2.run_instances(
        ImageId=IMAGE,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        UserData=user_data,  # boto3 encodes it
        **({"InstanceInitiatedShutdownBehavior": on_shutdown} if on_shutdown else {}),
    )["Instances"]
    return instance["InstanceId"]


def ended(aws_sandbox, instance_id: str, state: str = "terminated") -> bool:
    instance = next(i for i in aws_sandbox._instances() if i.id == instance_id)
    return instance.state == state and aws_sandbox.runner.machine_of(instance_id) is None


@pytest.fixture
def end_instances(aws_sandbox):
    """The ids of the instances a test runs, terminated after it; new ids are known to EC2 at once
    meanwhile (its eventual consistency is tests/sandbox/test_aws_strict_ec2.py's)."""
    made: list[str] = []
    with aws_sandbox.ec2.as_it_was() as strict:
        strict.unknown_seconds = 0
        yield made
        if made:
            aws_sandbox.client("ec2").terminate_instances(InstanceIds=made)
        aws_sandbox.runner.wait_idle(60)


def test_an_ec2_instance_boots_in_its_own_root_with_cloud_inits_environment_and_a_cold_image(aws_sandbox, end_instances, tmp_path):
    out, marker = tmp_path / "booted.json", f"stock-{secrets.token_hex(4)}"
    with aws_sandbox.warm(False):  # the default of `prefect-remote sandbox aws`
        instance_id = run_instance(aws_sandbox, probe(out, marker))
        end_instances.append(instance_id)
        booted = json.loads(wait_for(lambda: out.exists() and out.read_text(), timeout=60, message="the user data to run"))
    assert booted["cwd"] == "/"
    env = booted["env"]
    assert "HOME" not in env and env["PATH"] == MACHINE_PATH
    assert not {"UV_CACHE_DIR", "PREFECT_REMOTE_ROOT", "TMPDIR", "PYTHONUNBUFFERED"} & set(env)
    # What the boot wrote to / is on the instance's own disk, not on this host.
    assert not Path(f"/{marker}").exists()
    assert (aws_sandbox.runner.disk_of(instance_id) / "upper" / marker).read_text() == f"{marker}\n"


def test_a_warm_image_shares_the_uv_cache_and_the_root(aws_sandbox, end_instances, tmp_path):
    out = tmp_path / "booted.json"
    with aws_sandbox.warm(True):
        end_instances.append(run_instance(aws_sandbox, probe(out, "warm")))
        env = json.loads(wait_for(lambda: out.exists() and out.read_text(), timeout=60, message="the user data to run"))["env"]
    assert env["UV_CACHE_DIR"] and env["PREFECT_REMOTE_ROOT"] == str(aws_sandbox._root)


def test_an_ec2_reboot_runs_per_boot_scripts_but_not_the_user_data_again(aws_sandbox, end_instances, tmp_path):
    """The user data installs a per-boot script; after RebootInstances only that one runs, and the
    instance stays up, running nothing else (as on EC2), until it is terminated."""
    log = tmp_path / "boots.log"
    user_data = (
        "#!/bin/bash\n"
        "mkdir -p /var/lib/cloud/scripts/per-boot\n"
        f"printf '#!/bin/sh\\necho per-boot >> {log}\\n' > /var/lib/cloud/scripts/per-boot/record\n"
        "chmod +x /var/lib/cloud/scripts/per-boot/record\n"
        f"echo user-data >> {log}\n"
        "sleep 300\n"
    )
    instance_id = run_instance(aws_sandbox, user_data)
    end_instances.append(instance_id)
    wait_for(lambda: log.exists(), timeout=60, message="the user data to run")
    first_machine = aws_sandbox.runner.machine_of(instance_id)
    aws_sandbox.client("ec2").reboot_instances(InstanceIds=[instance_id])
    wait_for(lambda: log.read_text().count("per-boot") == 1, timeout=60, message="the per-boot script after the reboot")
    assert log.read_text() == "user-data\nper-boot\n"
    machine = aws_sandbox.runner.machine_of(instance_id)
    assert machine and machine != first_machine and not ended(aws_sandbox, instance_id)


def test_an_instances_own_shutdown_ends_it(aws_sandbox, end_instances):
    """The image's shutdown powers the machine off: with InstanceInitiatedShutdownBehavior=terminate
    (as the product launches), the instance is terminated."""
    instance_id = run_instance(aws_sandbox, "#!/bin/bash\nshutdown -h now\nsleep 300\n")
    end_instances.append(instance_id)
    wait_for(lambda: ended(aws_sandbox, instance_id), timeout=60, message="the instance to end")
    [instance] = [i for i in aws_sandbox.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]]
    assert instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    assert not aws_sandbox.runner.disk_of(instance_id).exists()  # its disk went with it


def test_an_instances_own_shutdown_only_stops_it_by_default(aws_sandbox, end_instances):
    """EC2's default InstanceInitiatedShutdownBehavior is stop: a shutdown from inside stops the
    instance, which stays (its volume billing on, its disk kept) until it is terminated."""
    instance_id = run_instance(aws_sandbox, "#!/bin/bash\nshutdown -h now\nsleep 300\n", on_shutdown=None)  # not given
    end_instances.append(instance_id)
    wait_for(lambda: ended(aws_sandbox, instance_id, "stopped"), timeout=60, message="the instance to stop")
    [instance] = aws_sandbox.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["State"]["Name"] == "stopped" and instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    disk = aws_sandbox.runner.disk_of(instance_id)
    assert disk.exists()  # its volume stays with it, as a stopped instance's EBS volume does
    aws_sandbox.client("ec2").terminate_instances(InstanceIds=[instance_id])
    wait_for(lambda: not disk.exists(), timeout=30, message="the terminated instance's disk to go")


@pytest.fixture
def quick_minutes(aws_sandbox):
    """The sandbox image's minute lasts 2 s (a scheduled `shutdown +N` fires after 2N s) for the
    instances a test boots."""
    runner = aws_sandbox.runner
    before, runner.shutdown_minute = runner.shutdown_minute, 2
    yield 2
    runner.shutdown_minute = before


def test_a_scheduled_shutdown_fires_on_time_a_new_one_replaces_it_and_shutdown_c_cancels_it(
    aws_sandbox, end_instances, quick_minutes, tmp_path
):
    """As systemd's: `shutdown -h +N` returns at once and powers off N minutes later; a second call
    replaces the pending one; `shutdown -c` cancels it. (Here a minute lasts 2 s.)"""
    import time

    log = tmp_path / "log"
    user_data = (
        "#!/bin/bash\n"
        f"shutdown -h +30 && echo scheduled-30 >> {log}\n"
        f"shutdown -c && echo cancelled >> {log}\n"
        "sleep 4\n"  # past when +1 would have fired
        f"echo still-up >> {log}\n"
        f"shutdown -h +2 && echo scheduled-2 >> {log}\n"
        "sleep 300\n"
    )
    instance_id = run_instance(aws_sandbox, user_data)
    end_instances.append(instance_id)
    wait_for(lambda: log.exists() and "scheduled-2" in log.read_text(), timeout=60, message="the second schedule")
    scheduled = time.monotonic()
    assert log.read_text().split() == ["scheduled-30", "cancelled", "still-up", "scheduled-2"]
    wait_for(lambda: ended(aws_sandbox, instance_id), timeout=30, message="the scheduled shutdown")
    assert 3.0 <= time.monotonic() - scheduled <= 4 + 2  # 2 minutes of 2 s, and the runner's rounds
    [instance] = aws_sandbox.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"


def test_an_instance_outlives_its_user_data_until_it_is_terminated(aws_sandbox, end_instances, tmp_path):
    """An EC2 instance whose user data exits keeps running (and billing), as its OS runs on after
    cloud-init: the sandbox's default. It ends when it is terminated."""
    import time

    log = tmp_path / "log"
    instance_id = run_instance(aws_sandbox, f"#!/bin/bash\necho done >> {log}\nexit 3\n")
    end_instances.append(instance_id)
    wait_for(lambda: log.exists(), timeout=60, message="the user data to run")
    time.sleep(2)  # many runner rounds
    assert not ended(aws_sandbox, instance_id) and aws_sandbox.runner.machine_of(instance_id)
    [instance] = aws_sandbox.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["State"]["Name"] == "running"
    local = aws_sandbox.runner.machine_of(instance_id)
    assert "boot script exited with code 3; the machine stays up" in aws_sandbox.runner.machines.logs(local).text
    aws_sandbox.client("ec2").terminate_instances(InstanceIds=[instance_id])
    wait_for(lambda: ended(aws_sandbox, instance_id), timeout=30, message="the instance to end")


def test_a_test_can_make_instances_end_with_their_user_data(aws_sandbox, end_instances, tmp_path):
    """The sandbox's switch (``vms(outlive_boot=False)``, kinder than EC2) for a test that needs it:
    the instances booted within end when their user data exits."""
    log = tmp_path / "log"
    with aws_sandbox.vms(outlive_boot=False):
        instance_id = run_instance(aws_sandbox, f"#!/bin/bash\necho done >> {log}\n")
        end_instances.append(instance_id)
        wait_for(lambda: log.exists(), timeout=60, message="the user data to run")
    assert aws_sandbox.runner.outlives_boot  # back to the default
    wait_for(lambda: ended(aws_sandbox, instance_id), timeout=30, message="the instance to end with its user data")


def test_only_an_ecs_optimized_image_has_an_engine_and_dnf_installs_one_that_a_reboot_keeps(aws_sandbox, end_instances, tmp_path):
    """Stock Amazon Linux 2023 has no Podman or Docker, as on EC2, until ``dnf install docker`` (the
    sandbox's dnf copies this host's Podman into place); what it installed is on the instance's disk,
    so a reboot keeps it. The ECS-optimized AMI has its engine from the start."""
    ec2, ssm = aws_sandbox.client("ec2"), aws_sandbox.client("ssm")
    logs = {}
    for name, parameter in (
        ("stock", "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"),
        ("ecs", "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"),
    ):
        log = logs[name] = tmp_path / f"{name}.log"
        user_data = (
            "#!/bin/bash\n"
            f"{{ command -v podman || echo no podman; command -v docker || echo no docker; }} >> {log}\n"
            "mkdir -p /var/lib/cloud/scripts/per-boot\n"
            f"printf '#!/bin/sh\\ncommand -v podman >> {log}\\n' > /var/lib/cloud/scripts/per-boot/engine\n"
            "chmod +x /var/lib/cloud/scripts/per-boot/engine\n"
            + (f"dnf install -y -q docker && podman --version >> {log}\n" if name == "stock" else "")
            + f"echo done >> {log}\nsleep 300\n"
        )
        ami = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        [instance] = ec2.run_instances(
            ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=user_data, InstanceInitiatedShutdownBehavior="terminate"
        )["Instances"]
        end_instances.append(instance["InstanceId"])
    for log in logs.values():
        wait_for(lambda log=log: log.exists() and "done" in log.read_text(), timeout=120, message="the user data to run")
    assert logs["ecs"].read_text().splitlines()[0] == "/usr/bin/podman"
    stock = logs["stock"].read_text().splitlines()
    assert stock[:2] == ["no podman", "no docker"] and stock[2].startswith("podman version "), stock
    ec2.reboot_instances(InstanceIds=[end_instances[0]])
    wait_for(lambda: logs["stock"].read_text().splitlines()[-1] == "/usr/bin/podman", timeout=60, message="the per-boot script")
