"""image= on EC2: by default the machine boots AWS's ECS-optimized Amazon Linux 2023 AMI, whose engine
runs the payload with nothing installed at boot; on stock Amazon Linux 2023 (a user's ``ami``) the
boot installs the engine first, as a timed boot phase. The sandbox's stock AL2023 has no engine until
its ``dnf install docker`` (prefect_remote.providers.local.own_root). (Flow runs in an image:
tests/workers/test_push_contract.py.)"""

from __future__ import annotations

from pydantic import SecretStr

from prefect_remote.providers.aws.provider import AWSProvider
from prefect_remote.providers.base import BootPayload
from prefect_remote.spec import MachineSpec
from tests.providers.aws.test_provider import stock_log

PROGRAM = "import os, sys, prefect; print('in the image:', sys.prefix, prefect.__version__, os.environ['GREETING'])"
ECS_AL2023 = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
STOCK_AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def _run_in_image(sandbox, provider: AWSProvider, image: str) -> tuple[str, str | None]:
    """The instance's whole console output and its AMI, for a payload run in ``image``."""
    spec = MachineSpec(image=image, keepalive="2 minutes", environ={"GREETING": SecretStr("hello")})
    [machine] = provider.launch(spec, BootPayload(["python", "-c", PROGRAM]))
    try:
        [ended] = provider.wait([machine.id], timeout=600)
    finally:
        provider.terminate([machine.id], reason="test cleanup")
    log = stock_log(sandbox, machine.id)
    assert ended.state == "terminated", (ended, log)
    return log, machine.details.get("image_id")


def test_an_image_machine_boots_the_ecs_optimized_ami_and_installs_no_engine(aws_env, sandbox_images):
    import prefect

    aws_env.use_images(sandbox_images)
    log, ami = _run_in_image(aws_env, AWSProvider(), sandbox_images.image)
    assert ami == aws_env.client("ssm").get_parameter(Name=ECS_AL2023)["Parameter"]["Value"]
    assert f"in the image: /opt/venv {prefect.__version__} hello" in log, log
    assert "engine: podman version" in log and "installing Docker" not in log, log
    assert f"image pull: pulled {sandbox_images.image} (" in log


def test_on_stock_amazon_linux_the_boot_installs_the_engine_as_a_timed_phase(aws_env, sandbox_images):
    import prefect

    aws_env.use_images(sandbox_images)
    log, ami = _run_in_image(aws_env, AWSProvider(ami=STOCK_AL2023), sandbox_images.image)
    assert ami == aws_env.client("ssm").get_parameter(Name=STOCK_AL2023)["Parameter"]["Value"]
    assert "engine: no Podman or Docker that answers on this image; installing Docker" in log, log
    assert "engine: Docker installed and started in " in log and "engine: podman version" in log
    assert f"in the image: /opt/venv {prefect.__version__} hello" in log, log
