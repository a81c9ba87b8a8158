"""The push contract: the seed's flow path on each sandbox cloud, as a user would walk it. A remote:push
pool provisioned for the cloud, `prefect deploy` with package sync storing to the cloud's store, and
`prefect deployment run` completing on the cloud's machine (an EC2 instance, a Cloud Run execution,
booted from the stock-image path), its boot and payload logs in the run's logs. Runs are submitted
by `prefect-remote push serve`, started in the sandbox's environment. Every test runs on every cloud
of tests/workers/clouds.py; a new cloud passes this suite before it ships. Each cloud runs it in a
module of its own (test_push_contract_<cloud>.py, which imports this one's tests and fixtures), so
that parallel test workers (pytest-xdist gives a worker a module at a time) share the clouds out.

The pool and the project are set up once per cloud (module-scoped). A cloud's tests that have no
counterpart elsewhere live in its own module (test_push_gcp.py), but for those that need its pool
or project, which are here, run in that cloud's module only (``only``)."""

from __future__ import annotations

import re
import subprocess
import textwrap
import time

import pytest

from tests.conftest import wait_for
from tests.workers.clouds import PUSH_CLOUDS, GCPPush, PushCloud
from tests.workers.conftest import (
    assert_ran_synced_code,
    cancel_ends_machine,
    completed_run,
    completed_runs,
    deploy,
    deploy_project,
    logged,
    run_cli,
    run_logs,
    running_machine,
    sandbox_shell,
    scaled_out,
    wait_final,
)


def only(name: str):
    """A test of one cloud's own, which needs that cloud's pool or project: deselected in the other
    clouds' modules (tests/conftest.py)."""
    return pytest.mark.cloud_only(name)


@pytest.fixture(scope="module", params=list(PUSH_CLOUDS))
def cloud(request, prefect_server, tmp_path_factory) -> PushCloud:
    """A shell's environment after `prefect-remote sandbox <cloud>`, with the session's Prefect server
    reached at the sandbox host (as machines reach it), the cloud's pool provisioned and `prefect-remote
    push serve` running for it; and the project deployed to the pool."""
    kind = PUSH_CLOUDS[request.param]
    cloud = kind(request.getfixturevalue(f"{kind.name}_sandbox"))
    logs = tmp_path_factory.mktemp(f"push-serve-{kind.name}")
    with sandbox_shell(cloud.sandbox, prefect_server, kind.name, kind.pool, logs, **kind.settings) as env:
        cloud.env = env
        files = {**kind.files, "prefect.yaml": kind.prefect_yaml()}
        cloud.folder = deploy_project(env, tmp_path_factory.mktemp(f"{kind.name}-project"), files, kind.store_scheme)
        yield cloud


def test_a_deployment_runs_on_the_clouds_machine(cloud, api):
    flow_run = completed_run(api, cloud.env, cloud.folder, f"hello/on-{cloud.machine}")
    machine_id = flow_run.infrastructure_pid
    assert machine_id.startswith(cloud.id_prefix)
    logs = "\n".join(run_logs(api, flow_run.id))
    assert "hello from the flow" in logs  # the payload's own output
    assert "software environment senv-" in logs  # boot phases
    assert re.search(r"agent: ready \(\S+ on Python 3\.\d+\.\d+\)", logs), logs  # which Python the machine got
    # The cost facts at launch and at the end: type, region, market, price, and what it cost.
    for said in cloud.said(machine_id):
        assert re.search(said, logs), (said, logs)
    assert re.search(rf"Machine {machine_id} ended: payload finished; estimated cost \$\d+\.\d{{4}}", logs), logs
    wait_for(lambda: cloud.ended(machine_id), timeout=30, message="the machine ended")


def test_the_synced_code_runs_wherever_the_pull_step_points(cloud, api):
    # No pull section (the project's path on this computer), the guide's /scratch/batch, and "."; at once.
    for flow_run in completed_runs(api, cloud.env, cloud.folder, [f"located/{name}" for name in cloud.pulls()]):
        assert_ran_synced_code(api, flow_run)
        logs = "\n".join(run_logs(api, flow_run.id))
        assert all(said in logs for said in cloud.placement(flow_run.infrastructure_pid)), logs


def test_cancelling_a_run_ends_its_machine(cloud, api):
    cancel_ends_machine(api, f"sleeper/sleeping-on-{cloud.machine}", cloud.cancelled)


def test_the_guides_scale_out_flow_launches_its_function_from_the_flows_machine(cloud, api, request):
    """The flow run's machine launches the function's cluster on the cloud, with the pool's settings
    (its provider, store and credentials' settings reached it from its launcher) and its own software
    environment. (On gcp the flow runs on Cloud Run and the cluster on Compute Engine: the task joins
    the VPC network, Direct VPC egress, to reach the VMs.)"""
    request.getfixturevalue(f"{cloud.name}_env")  # this process's provider, on the sandbox
    scaled_out(api, cloud.env, cloud.folder, f"my-flow/scale-out-on-{cloud.machine}", cloud.provider(), cloud.sandbox)


# PackageSync as the issue writes it, in a plain script beside the project's flows: no prefect.yaml.
FROM_PYTHON = textwrap.dedent(
    """
    from flows import hello
    from prefect_remote import PackageSync

    if __name__ == "__main__":
        hello.from_source(PackageSync("."), "flows.py:hello").deploy(
            name="{name}", work_pool_name="{pool}",
            job_variables={size!r},
        )
    """
)


def test_a_deployment_from_python_with_package_sync_runs_on_the_clouds_machine(cloud, api):
    """`python deploy.py` in the cloud's shell captures into the store the pool's --provision-infra
    recorded (a bucket), and the deployment's run completes on the cloud's machine, on that environment."""
    name = f"from-python-on-{cloud.machine}"
    (cloud.folder / "deploy_from_python.py").write_text(FROM_PYTHON.format(name=name, pool=cloud.pool, size=cloud.size))
    deployed = run_cli(cloud.env, "python", "deploy_from_python.py", cwd=cloud.folder)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    store = provider_block(api, cloud.pool).store
    assert store and store.startswith(cloud.store_scheme)
    software = re.search(rf"^Software environment (senv-\w+) \(\S+\):\n(?:  .*\n)*?  stored in {re.escape(store)}$", deployed.stdout, re.M)
    assert software, deployed.stdout
    flow_run = completed_run(api, cloud.env, cloud.folder, f"hello/{name}")
    logs = "\n".join(run_logs(api, flow_run.id))
    assert flow_run.infrastructure_pid.startswith(cloud.id_prefix) and "hello from the flow" in logs, logs
    assert f"Flow code: flows.py:hello from software environment {software[1]}, in the machine's work folder" in logs, logs


@only("aws")
def test_a_terminated_instance_crashes_its_run(cloud, api):
    run_id, instance_id = running_machine(api, f"sleeper/sleeping-on-{cloud.machine}")
    cloud.ec2().terminate_instances(InstanceIds=[instance_id])  # as a spot interruption or an operator would
    killed = time.monotonic()
    final = wait_final(api, run_id, timeout=30)
    assert time.monotonic() - killed <= 30 and final.state_name == "Crashed"


# -- gcp: the pool's block, exit codes, Compute Engine, and bad job variables ---------------------------------
def provider_block(api, pool: str):
    from prefect_remote.workers.config import RemoteProviderBlock

    document = api.read_block_document_by_name(f"{pool}-provider", RemoteProviderBlock.get_block_type_slug())
    return RemoteProviderBlock.model_validate(document.data)


@only("gcp")
def test_pool_records_the_project_and_service_account(cloud, api):
    block = provider_block(api, cloud.pool)
    project = cloud.sandbox.project
    assert block.provider == "gcp" and block.project == project
    assert block.service_account and block.service_account.endswith(f"@{project}.iam.gserviceaccount.com")
    assert block.store and block.store.startswith("gs://")


@only("gcp")
def test_a_failing_flow_reports_its_exit_code(cloud, api):
    run_id = api.create_flow_run_from_deployment(api.read_deployment_by_name("exiting/exiting-on-cloud-run").id).id
    final = wait_final(api, run_id, timeout=300)
    assert final.state_name in ("Crashed", "Failed"), "\n".join(run_logs(api, run_id))
    try:
        logged(api, run_id, "(exit code 3)", timeout=30)  # the engine reports before its machine has ended
    except AssertionError:
        raise AssertionError("\n".join(run_logs(api, run_id))) from None
    logs = "\n".join(run_logs(api, run_id))
    assert "about to exit" in logs
    assert re.search(rf"Machine {final.infrastructure_pid} ended: payload exited with code 3 \(exit code 3\)", logs), logs
    assert final.state_name == "Crashed" and "non-zero status code 3" in (final.state.message or ""), final.state


@only("gcp")
def test_gcp_service_compute_runs_on_a_vm(cloud, api, gcp_env):
    flow_run = completed_run(api, cloud.env, cloud.folder, "hello/on-compute")
    logs = "\n".join(run_logs(api, flow_run.id))
    machine_id = flow_run.infrastructure_pid
    assert machine_id.startswith("vm-")
    assert "hello from the flow" in logs and re.search(r"booting machine on gcp Compute Engine e2-\S+ in us-central1-a", logs), logs
    assert re.search(rf"Machine {machine_id} launched on gcp: e2-\S+ in us-central1, on-demand, \$\d+\.\d{{4}}/hour", logs), logs
    assert f"Machine {machine_id} runs on Compute Engine, because gcp_service='compute'" in logs
    assert re.search(rf"Machine {machine_id} ended: payload finished; estimated cost \$\d+\.\d{{4}}", logs), logs
    wait_for(lambda: not cloud.provider().describe(machine_id).alive, timeout=30, message="the VM deleted")


# -- bad input: a clear error naming the fix, before anything starts ------------------------------
@only("gcp")
@pytest.mark.parametrize(
    ("job_variables", "fragment"),
    [
        (
            {"cpu": 1, "memory": "8 GiB", "gcp_service": "cloud-run"},
            "is not a shape Cloud Run allows (1 vCPU takes 512 MiB to 4 GiB); the nearest it allows is 2 vCPU with 8 GiB",
        ),
        ({"gpu": "a100", "gcp_service": "cloud-run"}, "Cloud Run offers one nvidia-l4 GPU per task"),
        ({"vm_type": "n2-standard-3"}, "vm_type=['n2-standard-3']: not a machine type in zone us-central1-a; did you mean n2-standard-"),
        (
            {"container": "python:3.12", "software": "senv-0123456789abcdef", "gcp_service": "compute"},
            "a machine runs the image as it is, with the Python and packages built into it",
        ),
        ({"region": "europe-west1"}, "this gcp provider launches in us-central1"),
    ],
    ids=["cloud-run-shape", "cloud-run-gpu", "unknown-vm-type", "image-and-software-on-compute", "other-region"],
)
def test_bad_job_variables_fail_the_run_clearly_and_start_nothing(cloud, project, api, gcp_env, job_variables, fragment):
    run = api.create_flow_run_from_deployment(deploy(api, project, GCPPush.pool, **job_variables))
    final = wait_final(api, run.id, timeout=60)
    assert final.state_name in ("Crashed", "Failed")
    assert fragment in (final.state.message or ""), final.state.message
    assert cloud.provider().list({"prefect.io/flow-run-id": str(run.id)}, include_terminated=True) == []


def test_a_deployment_with_an_image_runs_in_it_on_the_clouds_machine(cloud, api, images_env, tmp_path):
    """The ``image`` job variable (what ``flow.deploy(image=...)`` sets) on the cloud's pool: an image of
    the sandbox's registry with the project's code in it, as Prefect builds one; the run completes in
    it, and on a machine that pulls it (EC2) the pull is a boot phase in the run's logs."""
    from tests.workers.conftest import FLOWS

    cloud.sandbox.use_images(images_env)
    image = f"{images_env.registry}/contract-{cloud.name}:{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / "flows.py").write_text(FLOWS)
    (tmp_path / "Containerfile").write_text(f"FROM {images_env.image}\nCOPY flows.py /opt/prefect/project/flows.py\n")
    for command in (["build", "--tag", image, "--file", str(tmp_path / "Containerfile"), str(tmp_path)], ["push", image]):
        done = subprocess.run(["podman", *command], capture_output=True, text=True)  # (the sandbox's engine configuration)
        assert done.returncode == 0, done.stdout + done.stderr
    deployment = api.create_deployment(
        flow_id=api.create_flow_from_name("hello"),
        name=f"in-an-image-on-{cloud.machine}",
        work_pool_name=cloud.pool,
        entrypoint="flows.py:hello",
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/prefect/project"}}],  # Prefect's, for an image
        job_variables={**cloud.size, "image": image},
    )
    run = api.create_flow_run_from_deployment(deployment)
    final = wait_final(api, run.id, timeout=600)
    logs = "\n".join(run_logs(api, run.id))
    assert final.state_name == "Completed", logs
    logged(api, run.id, "hello from the flow")
    if cloud.name == "aws":  # an instance's engine pulls it; a Cloud Run task is the image
        logged(api, run.id, f"image pull: pulled {image} (")
