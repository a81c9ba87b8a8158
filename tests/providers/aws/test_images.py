"""image= on EC2: the instance's engine (the sandbox's instances have Podman) pulls the image from a
registry, as a boot phase, and runs the payload in it; the machine's exit code is the payload's."""

from __future__ import annotations

from pydantic import SecretStr

from prefect_remote.providers.aws.provider import AWSProvider
from prefect_remote.providers.base import BootPayload
from prefect_remote.spec import MachineSpec

PROGRAM = "import os, sys, prefect; print('in the image:', sys.prefix, prefect.__version__, os.environ['GREETING']); sys.exit(5)"


def test_an_instance_runs_its_payload_in_the_image_it_pulls(aws_env, sandbox_images):
    aws_env.use_images(sandbox_images)
    provider = AWSProvider()
    spec = MachineSpec(image=sandbox_images.image, keepalive="2 minutes", environ={"GREETING": SecretStr("hello")})
    [machine] = provider.launch(spec, BootPayload(["python", "-c", PROGRAM]))
    [ended] = provider.wait([machine.id], timeout=600)
    log = provider.logs(machine.id).text
    import prefect

    assert (ended.reason, ended.exit_code) == ("payload exited with code 5", 5), log
    assert "engine: podman version" in log and f"image pull: pulled {sandbox_images.image} (" in log
    assert f"in the image: /opt/venv {prefect.__version__} hello" in log  # the image's Python, the launch's secret
