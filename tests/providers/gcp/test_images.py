"""image= on GCP: a Compute Engine VM's engine (the sandbox's instances have Podman) pulls the image as a
boot phase and runs the payload in it; a Cloud Run task boots in the image itself. Either way the
payload runs on the image's Python, and the machine's exit code is the payload's."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.gcp import GCPProvider
from prefect_remote.spec import MachineSpec

PROGRAM = "import os, sys, prefect; print('in the image:', sys.prefix, prefect.__version__, os.environ['GREETING']); sys.exit(5)"


@pytest.mark.parametrize("service", ["compute", "cloud-run"])
def test_the_payload_runs_in_the_image(gcp_env, sandbox_images, service):
    import prefect

    gcp_env.use_images(sandbox_images)
    provider = GCPProvider(service=service)
    spec = MachineSpec(image=sandbox_images.image, keepalive="2 minutes", environ={"GREETING": SecretStr("hello")})
    [machine] = provider.launch(spec, BootPayload(["python", "-c", PROGRAM]))
    try:
        [ended] = provider.wait([machine.id], timeout=600)
    finally:
        provider.terminate([machine.id], reason="test cleanup")
    log = provider.logs(machine.id).text
    assert (ended.reason, ended.exit_code) == ("payload exited with code 5", 5), log
    assert f"in the image: /opt/venv {prefect.__version__} hello" in log  # the image's Python, the launch's secret
    if service == "compute":  # the VM's engine pulled it; a Cloud Run task is the image
        assert "engine: podman version" in log and f"image pull: pulled {sandbox_images.image} (" in log
    else:
        assert "image pull" not in log
