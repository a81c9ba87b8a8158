"""Which code a flow run on a machine loads: the software environment's, or what the pull steps fetch."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse

from prefect_remote.deployments.steps import PACKAGE_SYNC_STEP
from prefect_remote.workers.config import ENTRYPOINT_ENV, RemoteJobConfiguration, flow_code

SOFTWARE = "senv-0123456789abcdef"


def deployment(entrypoint: str = "flows.py:hello", pull_steps: list | None = None, **fields) -> DeploymentResponse:
    return DeploymentResponse(name="d", flow_id=uuid4(), entrypoint=entrypoint, pull_steps=pull_steps, **fields)


def working_directory(directory: str, name: str = "prefect.deployments.steps.set_working_directory") -> dict:
    return {name: {"directory": directory}}


@pytest.mark.parametrize(
    "pull_steps",
    [
        None,  # `pull: []`, or a deployment made through the API
        [working_directory("/home/me/project")],  # Prefect's default: the project's path on the deploying machine
        [working_directory("/scratch/batch")],
        [working_directory(".")],
        [working_directory("src", "prefect.deployments.steps.pull.set_working_directory")],
    ],
)
def test_with_software_the_entrypoint_loads_from_the_work_folder(pull_steps):
    entrypoint, note = flow_code(deployment(pull_steps=pull_steps), SOFTWARE)
    assert entrypoint == "flows.py:hello"
    assert note.startswith(f"Flow code: flows.py:hello from software environment {SOFTWARE}, in the machine's work folder")
    for step in pull_steps or []:
        directory = next(iter(step.values()))["directory"]
        assert f"pull step set_working_directory({directory!r}) not run" in note


def test_a_module_path_entrypoint_too():
    assert flow_code(deployment("pipelines.flows.hello", [working_directory("/scratch/batch")]), SOFTWARE)[0] == "pipelines.flows.hello"


def test_pull_steps_that_fetch_code_run_as_written():
    steps = [{"prefect.deployments.steps.git_clone": {"repository": "https://example.com/r.git"}}, working_directory("r")]
    entrypoint, note = flow_code(deployment(pull_steps=steps), SOFTWARE)
    assert entrypoint is None
    assert note == (
        "Flow code: the deployment's pull steps (git_clone) run as written on the machine, "
        f"so they, not the code in software environment {SOFTWARE}, decide which code the flow loads"
    )


def test_a_storage_block_is_the_code_when_there_are_no_pull_steps():
    entrypoint, note = flow_code(deployment(storage_document_id=uuid4()), SOFTWARE)
    assert entrypoint is None and "storage block" in note
    assert flow_code(deployment(pull_steps=[working_directory(".")], storage_document_id=uuid4()), SOFTWARE)[0] == "flows.py:hello"


def test_without_software_the_pull_steps_run_as_written():
    assert flow_code(deployment(pull_steps=[working_directory("/home/me/project")]), None) == (None, None)


def test_the_run_environment_names_the_entrypoint_unless_the_deployment_does():
    run = FlowRun(flow_id=uuid4())
    configuration = RemoteJobConfiguration(software=SOFTWARE)
    configuration.prepare_for_flow_run(run, deployment(pull_steps=[working_directory("/scratch/batch")]))
    assert configuration.env[ENTRYPOINT_ENV] == "flows.py:hello" and "not run" in configuration.flow_code_note
    chosen = RemoteJobConfiguration(software=SOFTWARE, env={ENTRYPOINT_ENV: "other.py:flow"})
    chosen.prepare_for_flow_run(run, deployment())
    assert chosen.env[ENTRYPOINT_ENV] == "other.py:flow" and chosen.flow_code_note is None


def test_a_package_sync_deployments_pull_step_names_its_software_unless_a_job_variable_does():
    """PackageSync deployments carry their environment in a pull step (storage cannot set job variables):
    the run's machine gets it as ``software``, and loads the entrypoint from its work folder."""
    synced = deployment(pull_steps=[{PACKAGE_SYNC_STEP: {"software": SOFTWARE}}])
    configuration = RemoteJobConfiguration()
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid4()), synced)
    assert configuration.software == SOFTWARE and configuration.machine_spec().software == SOFTWARE
    assert configuration.env[ENTRYPOINT_ENV] == "flows.py:hello"
    assert configuration.flow_code_note == f"Flow code: flows.py:hello from software environment {SOFTWARE}, in the machine's work folder"
    other = "senv-fedcba9876543210"
    pool_default = RemoteJobConfiguration(software=other)  # the pool's template sets one: the deployment's own wins
    pool_default.prepare_for_flow_run(FlowRun(flow_id=uuid4()), synced)
    assert pool_default.software == SOFTWARE
    for chosen_by in ("deployment", "run"):  # a job variable set on purpose wins over the pull step
        chosen = RemoteJobConfiguration(software=other)
        job_variables = {"software": other}
        run = FlowRun(flow_id=uuid4(), job_variables=job_variables if chosen_by == "run" else {})
        chosen.prepare_for_flow_run(run, synced.model_copy(update={"job_variables": job_variables if chosen_by == "deployment" else {}}))
        assert chosen.software == other and f"job variable software wins over the pull step's {SOFTWARE}" in chosen.flow_code_note
    plain = RemoteJobConfiguration()
    plain.prepare_for_flow_run(FlowRun(flow_id=uuid4()), deployment(pull_steps=[working_directory(".")]))
    assert plain.software is None and ENTRYPOINT_ENV not in plain.env  # no environment named: the pull steps run as written


def test_a_flow_runs_machine_opens_no_port_to_outside_its_network_unless_asked():
    """Only a cluster's scheduler serves from outside (its Dask ports): a flow run's machine gets no
    ingress rule (allow_ingress_from "none") whatever the provider's default, unless the job variable asks."""
    assert RemoteJobConfiguration(provider="local").machine_spec().allow_ingress_from == "none"
    assert RemoteJobConfiguration(provider="local", allow_ingress_from="10.0.0.0/8").machine_spec().allow_ingress_from == "10.0.0.0/8"
