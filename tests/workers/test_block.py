"""The provider block: renamed from RemoteProviderCredentials (it holds no credentials), under the same
slug, so blocks saved by earlier versions load; its option fields come from the providers."""

from __future__ import annotations

import pytest

from prefect_remote.workers.config import RemoteJobConfiguration, RemoteProviderBlock


def optional(title: str, position: int) -> dict:
    return {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": title, "position": position}


# The schema RemoteProviderCredentials registered (prefect-remote before the rename), descriptions left out.
OLD_SCHEMA = {
    "block_schema_references": {},
    "block_type_slug": "prefect-remote-provider",
    "properties": {
        "provider": {"default": "local", "title": "Provider", "type": "string", "position": 0},
        "options": {"title": "Options", "type": "object", "position": 1},
        **{
            name: optional(name.replace("_", " ").title(), position)
            for position, name in enumerate(("region", "instance_profile", "log_group", "project", "service_account", "store"), 2)
        },
    },
    "secret_fields": [],
    "title": "RemoteProviderCredentials",
    "type": "object",
}


def test_a_block_saved_under_the_old_class_loads_under_the_new_one(api, prefect_server, monkeypatch):
    from prefect.client.schemas.actions import BlockDocumentCreate, BlockSchemaCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL, temporary_settings

    RemoteProviderBlock.register_type_and_schema(client=api)  # the block type, as the old class made it too
    block_type = api.read_block_type_by_slug("prefect-remote-provider")
    try:
        schema = api.create_block_schema(BlockSchemaCreate(fields=OLD_SCHEMA, block_type_id=block_type.id, capabilities=[]))
    except ObjectAlreadyExists:
        schema = api.read_block_schema_by_checksum(BlockSchemaCreate(fields=OLD_SCHEMA, block_type_id=block_type.id).checksum)
    data = {
        "provider": "aws",
        "options": {"ami": "ami-0123456789abcdef0"},
        "region": "us-east-2",
        "instance_profile": "prefect-remote-old-pool",
        "log_group": "/prefect-remote/machines",
        "project": None,
        "service_account": None,
        "store": "s3://old-bucket/store",
    }
    name = "saved-by-an-old-version"
    try:
        api.delete_block_document(api.read_block_document_by_name(name, "prefect-remote-provider").id)
    except Exception:  # not there yet
        pass
    document = api.create_block_document(BlockDocumentCreate(name=name, data=data, block_schema_id=schema.id, block_type_id=block_type.id))

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        loaded = RemoteProviderBlock.load(name)
    assert type(loaded) is RemoteProviderBlock and loaded.model_dump(include=set(data)) == data
    # As a pool's flow run gets it: the job template's $ref resolved to the document's data.
    configuration = RemoteJobConfiguration(credentials=api.read_block_document(document.id).data)
    assert configuration.credentials is not None and configuration.credentials.model_dump(include=set(data)) == data

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # a provider is made without calling AWS
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    provider = loaded.get_provider()
    assert provider.name == "aws" and provider.options.region == "us-east-2" and provider.options.ami == "ami-0123456789abcdef0"
    assert provider.options.instance_profile == "prefect-remote-old-pool"


def test_the_old_name_is_the_new_class_with_a_deprecation_warning():
    import prefect_remote.workers
    import prefect_remote.workers.config

    for module in (prefect_remote.workers, prefect_remote.workers.config):
        with pytest.warns(DeprecationWarning, match="RemoteProviderCredentials is now RemoteProviderBlock"):
            assert module.RemoteProviderCredentials is RemoteProviderBlock
    assert RemoteProviderBlock.get_block_type_slug() == "prefect-remote-provider"
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        prefect_remote.workers.NoSuchName  # noqa: B018


def test_a_provider_records_only_its_own_fields():
    block = RemoteProviderBlock(provider="local", options={"isolation": "process"}, project="not-local")
    assert block.get_provider().isolation == "process"  # project is gcp's: the local provider is not given it


def test_a_providers_job_variable_is_refused_for_another_provider():
    from prefect_remote.workers.config import JobVariablesError

    configuration = RemoteJobConfiguration(provider="local", gcp_service="compute")
    with pytest.raises(JobVariablesError, match="gcp_service='compute' is a job variable of the gcp provider; this flow run's is local"):
        configuration.machine_request()


def test_the_provider_a_block_makes_reads_the_store_the_block_records_and_keeps_it_when_moved():
    """The pool's store (PackageSync's, --provision-infra's) is the one its provider's machines read,
    whatever the process's PREFECT_REMOTE_STORE; a pickled provider (a cluster's) and one made for
    another region keep it."""
    import pickle

    provider = RemoteProviderBlock(
        provider="gcp", options={"project": "pool-project", "region": "us-central1"}, store="gs://pool-bucket/envs"
    ).get_provider()
    assert provider.store_url == "gs://pool-bucket/envs" and provider.machine_environ()["PREFECT_REMOTE_STORE"] == "gs://pool-bucket/envs"
    assert pickle.loads(pickle.dumps(provider)).store_url == provider.in_region("europe-west1").store_url == "gs://pool-bucket/envs"
    assert RemoteProviderBlock(provider="local").get_provider().store_url is None  # none recorded: the configured one
