"""The sandbox's registry and engine, as a user's Docker tools use them: docker-py through DOCKER_HOST
builds from the ready Python image and pushes to the registry, which then lists it."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

import docker


def _registry(path: str) -> dict:
    with urllib.request.urlopen(f"http://{os.environ['PREFECT_REMOTE_SANDBOX_REGISTRY']}/v2/{path}", timeout=10) as response:
        return json.load(response)


def test_docker_py_builds_from_the_sandbox_image_and_pushes_to_its_registry(images_env, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    repository = f"{os.environ['PREFECT_REMOTE_SANDBOX_REGISTRY']}/docker-py-build"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {os.environ['PREFECT_REMOTE_SANDBOX_IMAGE']}\n"
        "RUN python -c 'import prefect, distributed; print(prefect.__version__, distributed.__version__)' > /versions\n"
        'CMD ["cat", "/versions"]\n'
    )
    client = docker.from_env()
    client.images.build(path=str(tmp_path), tag=f"{repository}:{tag}", rm=True)
    pushed = [line for line in client.images.push(repository, tag=tag, stream=True, decode=True)]
    assert not [line for line in pushed if "error" in line], pushed

    assert "docker-py-build" in _registry("_catalog")["repositories"]
    assert tag in _registry("docker-py-build/tags/list")["tags"]
    import distributed
    import prefect

    output = client.containers.run(f"{repository}:{tag}", network_mode="host", remove=True)
    assert output.decode().split() == [prefect.__version__, distributed.__version__]
