"""The infra contract: ``--provision-infra`` and `prefect-remote <cloud> teardown` on each sandbox
cloud, through the cloud's real clients. Provisioning twice makes once and then finds everything;
`prefect work-pool create --provision-infra` records what it made in the pool's provider block;
teardown removes everything (the bucket, which holds data, only when asked), refuses while a
machine uses it (``--force`` ends the machine first), and wants ``--yes`` without a terminal.

Runs on every cloud of tests/providers/infra_clouds.py; each test starts and ends with nothing
provisioned. What only one cloud has (its machines' policy and the docs' copy of it, its own
refusals) is in tests/providers/<cloud>/test_infra.py."""

from __future__ import annotations

import pytest


# -- provisioning ---------------------------------------------------------------------------------
def test_provisioning_twice_makes_once(infra):
    setup, first = infra.provision()
    made = [line for line in first if line.startswith(infra.made)]
    assert len(made) == infra.made_count, first
    again, second = infra.provision()
    assert again == setup
    assert not any(line.startswith(infra.changed) for line in second), second
    assert sum(line.startswith("found") for line in second) == infra.made_count
    infra.check_provisioned(setup)


def test_work_pool_create_provisions_and_records_it(infra, prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_remote.workers.config import RemoteProviderBlock
    from tests.workers.conftest import prefect_cli

    pool = f"{infra.name}-pool"
    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", infra.name)
    create = ("work-pool", "create", "--type", "remote:push", "--provision-infra", pool, "--overwrite")
    with infra.identity("provisioning"):
        created, again = prefect_cli(prefect_server, *create), prefect_cli(prefect_server, *create)
    assert created.returncode == 0, created.stdout + created.stderr
    assert "| WARNING |" not in created.stdout + created.stderr  # e.g. urllib3's, for google-auth's lookups of Google
    principal = infra.principal(pool)
    assert f"created {principal}" in created.stdout and f"created provider block '{pool}-provider'" in created.stdout
    assert f"PREFECT_REMOTE_STORE={infra.block_data()['store']}" in created.stdout.replace("\n", "")
    assert again.returncode == 0 and f"reusing provider block '{pool}-provider' ({infra.name})" in again.stdout, again.stdout + again.stderr
    assert f"found {principal}" in again.stdout and "created" not in again.stdout
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as api:
        block = api.read_block_document_by_name(f"{pool}-provider", "prefect-remote-provider")
        work_pool = api.read_work_pool(pool)
    assert {k: v for k, v in block.data.items() if v} == infra.block_data()
    defaults = {key: value.get("default") for key, value in work_pool.base_job_template["variables"]["properties"].items()}
    assert defaults["credentials"] == {"$ref": {"block_document_id": str(block.id)}}
    assert defaults["provider"] == infra.name and defaults["region"] == infra.block_data()["region"]
    infra.check_pool_provider(RemoteProviderBlock.model_validate(block.data).get_provider())  # what runs of the pool launch with


# -- teardown -------------------------------------------------------------------------------------
def test_teardown_removes_what_provisioning_made_and_is_idempotent(infra):
    infra.provision()
    said: list[str] = []
    removed = infra.teardown(say=said.append)
    assert set(removed) >= infra.removed()
    assert sum(item.startswith(infra.network_item) for item in removed) == infra.network_count
    assert infra.nothing_left()
    assert infra.bucket_exists() and any(infra.kept_bucket_said in line and "--delete-bucket" in line for line in said)  # it holds data
    assert infra.teardown(delete_bucket=True, say=said.append) == [infra.bucket_item]
    assert not infra.bucket_exists()
    assert infra.teardown(delete_bucket=True, say=said.append) == []
    assert said[-1] == infra.nothing_said


def test_teardown_refuses_while_a_machine_runs(infra):
    setup, _ = infra.provision()
    machine_id = infra.start_machine(setup)
    refused = infra.cli("teardown", *infra.teardown_pool)
    assert refused.returncode == 1 and machine_id in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert infra.untouched(setup)  # nothing removed
    with pytest.raises(infra.refusal, match=machine_id):
        infra.teardown()
    forced = infra.cli("teardown", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert all(said in forced.stdout for said in infra.forced_said(machine_id, setup)), forced.stdout
    assert infra.machine_ended(machine_id) and infra.nothing_left()
    assert infra.nothing_said in infra.cli("teardown", "--yes").stdout


def test_teardown_needs_yes_without_a_terminal(infra):
    result = infra.cli("teardown")
    assert result.returncode == 2 and "--yes" in result.stderr
