"""image= on Compute Engine: the VM's engine (the sandbox's instances have Podman) pulls the image as a
boot phase and runs the payload in it, on the image's Python, with the launch's secrets; the machine's
exit code is the payload's. (EC2 and Cloud Run: tests/workers/test_push_contract.py, through a flow run.)"""

from __future__ import annotations

from pydantic import SecretStr

from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.gcp import GCPProvider
from prefect_remote.spec import MachineSpec

PROGRAM = "import os, sys, prefect; print('in the image:', sys.prefix, prefect.__version__, os.environ['GREETING']); sys.exit(5)"


def test_a_vm_runs_the_payload_in_the_image_it_pulls(gcp_env, sandbox_images):
    import prefect

    gcp_env.use_images(sandbox_images)
    provider = GCPProvider(service="compute")
    spec = MachineSpec(image=sandbox_images.image, keepalive="2 minutes", environ={"GREETING": SecretStr("hello")})
    [machine] = provider.launch(spec, BootPayload(["python", "-c", PROGRAM]))
    try:
        [ended] = provider.wait([machine.id], timeout=600)
    finally:
        provider.terminate([machine.id], reason="test cleanup")
    log = provider.logs(machine.id).text
    assert (ended.reason, ended.exit_code) == ("payload exited with code 5", 5), log
    assert f"in the image: /opt/venv {prefect.__version__} hello" in log  # the image's Python, the launch's secret
    assert "engine: podman version" in log and f"image pull: pulled {sandbox_images.image} (" in log
