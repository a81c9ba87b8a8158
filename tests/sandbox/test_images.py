"""The sandbox's registry and engine, as a user's Docker tools use them: docker-py through DOCKER_HOST
builds from the ready Python image and pushes to the registry, which then lists it."""

from __future__ import annotations

import json
import os
import shlex
import time
import urllib.request
import uuid
from pathlib import Path

import botocore.exceptions
import docker

from tests.conftest import wait_for


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


def test_an_ec2_instance_pulls_and_runs_an_image_of_the_registry_with_its_engine(aws_sandbox, images_env, tmp_path: Path):
    """An image built here from the ready one and pushed: a (warm) instance pulls its own layer, runs it
    with the image's Python, and a container it leaves running ends with it."""
    aws_sandbox.use_images(images_env)
    image = f"{images_env.registry}/for-an-instance:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(f"FROM {images_env.image}\nRUN echo built here > /built\n")
    client = docker.from_env()
    client.images.build(path=str(tmp_path), tag=image, rm=True)
    assert not [line for line in client.images.push(image, stream=True, decode=True) if "error" in line]
    out = tmp_path / "ran"
    ec2, ssm = aws_sandbox.client("ec2"), aws_sandbox.client("ssm")
    ecs_optimized = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"  # an AMI that carries an engine
    ami = ssm.get_parameter(Name=ecs_optimized)["Parameter"]["Value"]
    daemon = f"600.{uuid.uuid4().int % 10**9}"  # a container left running, which must end with its instance
    program = (
        f"import pathlib, sys, prefect; pathlib.Path({str(out)!r}).write_text("
        "' '.join([sys.prefix, prefect.__version__, pathlib.Path('/built').read_text().strip()]))"
    )
    user_data = (
        "#!/bin/bash\n"
        f"podman run --rm --network host --volume {tmp_path}:{tmp_path} {image} python -c {shlex.quote(program)} "
        f"2> {tmp_path}/engine.log || echo failed > {out}\n"
        f"podman run --detach --network host {image} sleep {daemon}\n"
    )
    [instance] = ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=user_data)["Instances"]
    try:
        wait_for(out.exists, timeout=300, message="the instance's container to run")
        import prefect

        assert out.read_text() == f"/opt/venv {prefect.__version__} built here", (tmp_path / "engine.log").read_text()
        assert f"Trying to pull {image}" in (tmp_path / "engine.log").read_text()  # pulled by the instance's engine
        wait_for(lambda: _running(f"sleep {daemon}"), timeout=120, message="the detached container to start")
    finally:
        _terminate(ec2, instance["InstanceId"])
    aws_sandbox.runner.wait_idle(timeout=60)
    assert not _running(f"sleep {daemon}")  # nothing of the instance outlives it, its containers included


def _terminate(ec2, instance_id: str, timeout: float = 10) -> None:
    """Terminates ``instance_id``, retried while EC2 does not know the new id yet (for a moment after launch)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ec2.terminate_instances(InstanceIds=[instance_id])
            return
        except botocore.exceptions.ClientError as error:
            if error.response["Error"]["Code"] != "InvalidInstanceID.NotFound" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _running(command: str) -> list[int]:
    """The processes on this host whose command line is ``command``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip() == command.encode():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _cloud_run_job(gcp_sandbox, image: str, command: list[str], args: list[str], env: dict[str, str]):
    from google.cloud import run_v2

    container = run_v2.Container(
        image=image,
        command=command,
        args=args,
        env=[run_v2.EnvVar(name=name, value=value) for name, value in env.items()],
        resources=run_v2.ResourceRequirements(limits={"cpu": "1", "memory": "2Gi"}),
    )
    template = run_v2.TaskTemplate(containers=[container], max_retries=0, timeout="300s", service_account=gcp_sandbox.machine_account)
    return run_v2.Job(template=run_v2.ExecutionTemplate(task_count=1, template=template))


def _run(google, job, timeout: float):
    """Runs ``job`` once and returns its execution once completed."""
    name = google.run("jobs").run_job(name=job.name).metadata.name
    executions = google.run("executions")
    return wait_for(lambda: (e := executions.get_execution(name=name)).completion_time and e, timeout=timeout, message=f"{name} to end")


def test_cloud_run_pulls_and_runs_an_image_of_the_registry_and_fails_one_it_lacks(google, gcp_sandbox, sandbox_images, tmp_path: Path):
    gcp_sandbox.use_images(sandbox_images)
    out = tmp_path / "ran"
    jobs, parent = google.run("jobs"), f"projects/{google.project}/locations/{gcp_sandbox.region}"
    program = (
        "import os, pathlib, sys, prefect\n"
        f"pathlib.Path({str(out)!r}).write_text(' '.join([sys.prefix, prefect.__version__, os.environ['CLOUD_RUN_TASK_INDEX'], "
        "os.environ['GREETING']]))\nprint('ran in the image')"
    )
    job = _cloud_run_job(gcp_sandbox, sandbox_images.image, ["python", "-c"], [program], {"GREETING": "hello"})
    execution = _run(google, jobs.create_job(parent=parent, job=job, job_id=f"img-{uuid.uuid4().hex[:8]}").result(), timeout=120)
    assert execution.succeeded_count == 1
    import prefect

    assert out.read_text() == f"/opt/venv {prefect.__version__} 0 hello"

    missing = f"{sandbox_images.registry}/no-such-image:1"
    job = _cloud_run_job(gcp_sandbox, missing, ["true"], [], {})
    execution = _run(google, jobs.create_job(parent=parent, job=job, job_id=f"img-{uuid.uuid4().hex[:8]}").result(), timeout=30)
    [completed] = [c for c in execution.conditions if c.type_ == "Completed"]
    assert execution.failed_count == 1 and f"Image '{missing}' not found" in completed.message


FLOW = """\
import os

from prefect import flow
from prefect.docker import DockerImage


@flow
def my_flow():
    print("hello from the image")


if __name__ == "__main__":
    image = DockerImage(name=f"{os.environ['PREFECT_REMOTE_SANDBOX_REGISTRY']}/my-flow", tag="TAG", dockerfile="Dockerfile")
    my_flow.deploy(name="in-an-image", work_pool_name="POOL", image=image, push=True, print_next_steps=False)
"""


def test_flow_deploy_builds_and_pushes_its_image_to_the_sandbox_registry(images_env, prefect_server, tmp_path: Path):
    """`flow.deploy(image=DockerImage(...), push=True)` as a user's script runs it: Prefect builds through
    DOCKER_HOST and pushes to the registry, and the deployment names the image pushed."""
    from tests.workers.conftest import prefect_cli, run_cli

    tag, pool = uuid.uuid4().hex[:8], f"images-{uuid.uuid4().hex[:6]}"
    template = json.loads(prefect_cli(prefect_server, "work-pool", "get-default-base-job-template", "--type", "remote:push").stdout)
    template["variables"]["properties"].setdefault("image", {"type": "string", "title": "Image"})  # (Prefect's name for it)
    (tmp_path / "template.json").write_text(json.dumps(template))
    options = ["--type", "remote:push", "--base-job-template", str(tmp_path / "template.json")]
    created = prefect_cli(prefect_server, "work-pool", "create", *options, pool)
    assert created.returncode == 0, created.stdout + created.stderr
    (tmp_path / "flow.py").write_text(FLOW.replace("TAG", tag).replace("POOL", pool))
    (tmp_path / "Dockerfile").write_text(f"FROM {os.environ['PREFECT_REMOTE_SANDBOX_IMAGE']}\nCOPY flow.py /opt/prefect/flow.py\n")

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "COLUMNS": "80"}
    deployed = run_cli(env, "python", "flow.py", cwd=tmp_path)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    assert tag in _registry("my-flow/tags/list")["tags"]
    shown = prefect_cli(prefect_server, "deployment", "inspect", "my-flow/in-an-image")
    pushed = f"{os.environ['PREFECT_REMOTE_SANDBOX_REGISTRY']}/my-flow:{tag}"
    assert pushed in shown.stdout, shown.stdout  # the image job variable
    # Created, started and waited for with a timeout (docker-py's run() waits with none: Podman's API
    # once left it hanging on a container that had already exited), then removed.
    client = docker.from_env(timeout=60)
    container = client.containers.create(pushed, ["cat", "/opt/prefect/flow.py"])
    try:
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert "hello from the image" in container.logs().decode()
    finally:
        container.remove(force=True)
