"""`prefect-remote doctor`'s shared checks: the work pool and its provider block, and the largest
machine a pool's runs ask for (its defaults, its deployments' job variables), on a real Prefect
server and the strict sandbox AWS."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.providers.aws.test_doctor import doctor, failed
from tests.workers.conftest import run_cli


@pytest.fixture
def api(prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        yield client


def make_pool(api, provider: str, pool_type: str = "remote:push", **defaults) -> str:
    """A pool of ``pool_type`` whose provider block names ``provider``, with job variable ``defaults``."""
    from prefect.client.schemas.actions import WorkPoolCreate

    from prefect_remote.workers.config import RemoteProviderCredentials
    from prefect_remote.workers.worker import RemotePushWorker

    name = f"doctor-{uuid.uuid4().hex[:8]}"
    block_id = RemoteProviderCredentials(provider=provider).save(f"{name}-provider", client=api)
    template = RemotePushWorker.get_default_base_job_template()
    properties = template["variables"]["properties"]
    properties["credentials"]["default"] = {"$ref": {"block_document_id": str(block_id)}}
    for key, value in defaults.items():
        properties[key]["default"] = value
    api.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
    return name


def test_a_pool_of_this_cloud_passes_and_its_largest_deployment_sets_the_quota(aws_env, api):
    pool = make_pool(api, "aws", cpu=2)
    code, rows = doctor("--pool", pool)
    assert code == 0, rows
    assert "1 deployment" not in rows["work pool"]["detail"] and "2 cpu" in rows["vCPU quota"]["detail"]
    flow_id = api.create_flow_from_name("doctor-flow")
    api.create_deployment(flow_id=flow_id, name="big", work_pool_name=pool, entrypoint="flows.py:f", job_variables={"cpu": 8})
    code, rows = doctor("--pool", pool)
    assert code == 1 and failed(rows) == ["vCPU quota"]
    assert "5 vCPUs, 8 needed" in rows["vCPU quota"]["detail"] and f"pool '{pool}'" in rows["vCPU quota"]["detail"]


def test_a_missing_pool_is_named(aws_env, api):
    code, rows = doctor("--pool", "no-such-pool")
    assert code == 1 and failed(rows) == ["work pool"]
    assert "prefect work-pool create no-such-pool --type remote:push --provision-infra" in rows["work pool"]["fix"]


def test_a_pool_of_another_type_is_named(aws_env, api):
    from prefect.client.schemas.actions import WorkPoolCreate

    name = f"doctor-process-{uuid.uuid4().hex[:8]}"
    api.create_work_pool(WorkPoolCreate(name=name, type="process"))
    code, rows = doctor("--pool", name)
    assert code == 1 and "is a 'process' pool, not remote or remote:push" in rows["work pool"]["detail"]


def test_a_pool_whose_block_names_another_cloud_is_named(aws_env, api):
    pool = make_pool(api, "gcp")
    code, rows = doctor("--pool", pool)
    assert code == 1 and failed(rows) == ["provider block"]
    assert "names 'gcp', not 'aws'" in rows["provider block"]["detail"]
    assert f"prefect-remote doctor gcp --pool {pool}" in rows["provider block"]["fix"]


def test_local_needs_no_cloud():
    result = run_cli({**os.environ, "COLUMNS": "80"}, "prefect-remote", "doctor", "local", timeout=60)
    assert result.returncode == 0 and "needs no cloud account" in result.stdout, result.stdout + result.stderr


def test_an_unknown_provider_is_named():
    result = run_cli({**os.environ, "COLUMNS": "80"}, "prefect-remote", "doctor", "azure", timeout=60)
    assert result.returncode == 1 and "provider='azure' is not known" in result.stdout.replace("\n", " ").replace("  ", " ")
