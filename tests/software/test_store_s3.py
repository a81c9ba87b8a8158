"""The S3 store against an emulated S3 (moto in server mode), through the real boto3 client; the
behaviours every store shares run on the local store too."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from botocore.awsrequest import AWSResponse

from prefect_remote.machine.boot import AgentSource, render_boot_script
from prefect_remote.software.s3store import S3Store
from prefect_remote.software.store import LocalStore, NotInStore, Store, StoreError, TamperedBlob
from prefect_remote.software.stores import open_store

HELLO = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256(b"hello")


@dataclass
class Case:
    store: Store
    tamper: Callable[[str, bytes], None]  # overwrites a blob's content behind the store's back


def new_bucket(aws) -> str:
    """A bucket made by the sandbox's account owner, named as the launcher's store buckets are
    (the sandbox's launcher may use ``prefect-remote-*``)."""
    name = f"prefect-remote-test-{uuid.uuid4().hex[:12]}"
    aws.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def case(request, tmp_path) -> Case:
    if request.param == "local":
        store = LocalStore(tmp_path / "store")
        return Case(store, lambda digest, data: (store.root / "blobs" / digest).write_bytes(data))
    aws = request.getfixturevalue("aws_env")
    bucket = new_bucket(aws)
    store = open_store(f"s3://{bucket}/team/envs")

    def tamper(digest: str, data: bytes) -> None:
        aws.client("s3").put_object(Bucket=bucket, Key=f"team/envs/blobs/{digest}", Body=data)

    return Case(store, tamper)


def test_blobs_are_addressed_by_content(case):
    store = case.store
    digest = store.put_bytes(b"hello")
    assert digest == HELLO
    assert store.put_bytes(b"hello") == digest and store.blobs() == [digest] and store.has_blob(digest)
    assert store.get_bytes(digest) == b"hello"
    store.delete_blob(digest)
    assert not store.has_blob(digest) and store.blobs() == []


def test_large_files_round_trip(case, tmp_path):
    # Past boto3's 8 MiB multipart threshold: uploaded and downloaded in parts, verified whole.
    data = bytes(range(256)) * (40 * 1024 + 7)
    source = tmp_path / "big.whl"
    source.write_bytes(data)
    digest = case.store.put_file(source)
    assert digest == hashlib.sha256(data).hexdigest()
    assert case.store.get_file(digest, tmp_path / "out" / "big.whl").read_bytes() == data


def test_tampered_blobs_are_refused_and_removed(case):
    store = case.store
    digest = store.put_bytes(b"hello")
    case.tamper(digest, b"jello")
    with pytest.raises(TamperedBlob, match="changed or corrupted"):
        store.get_bytes(digest)
    assert not store.has_blob(digest)  # the bad copy is gone: storing it again stores a good one
    assert store.put_bytes(b"hello") == digest and store.get_bytes(digest) == b"hello"


def test_missing_keys(case):
    case.store.put_bytes(b"hello")  # the store exists; the keys asked for do not
    with pytest.raises(NotInStore):
        case.store.get_bytes("0" * 64)
    with pytest.raises(NotInStore, match="senv-0000000000000000' is not in the store .*prefect-remote env build"):
        case.store.get_env("senv-0000000000000000")
    assert not case.store.has_blob("0" * 64)


def test_envs_by_name(case):
    store = case.store
    store.put_env("senv-0123456789abcdef", b"{}")
    store.put_bytes(b"a blob is not an env")
    assert store.envs() == ["senv-0123456789abcdef"] and store.get_env("senv-0123456789abcdef") == b"{}"
    store.delete_env("senv-0123456789abcdef")
    assert not store.has_env("senv-0123456789abcdef") and store.envs() == []


def boot_fetch(store: Store, digest: str) -> str:
    """The stock-image boot's wheel fetch (its Python part, as the machine runs it) of the blob ``digest``."""
    agent = AgentSource("prefect-remote", python="3.11.7", wheel="w.whl", digest=digest, store=store.url, fetch=store.machine_fetch(digest))
    script = render_boot_script({}, agent=agent)
    return re.search(r"\"\$BUILD/bin/python\" - .*?<<'PY'\n(.*?)\nPY\n", script, re.S).group(1)


def test_boot_fetches_the_agent_wheel_and_verifies_it(case, tmp_path):
    """The store's own lines fetch the agent's wheel with the machine's credentials (here the sandbox's,
    through the environment as a sandbox machine has it), and the boot script verifies it."""
    store = case.store
    wheel = b"PK\x03\x04 a wheel's bytes"
    digest = store.put_bytes(wheel)
    fetch = boot_fetch(store, digest)
    target = tmp_path / "prefect_remote-0.1.0-py3-none-any.whl"
    run = subprocess.run([sys.executable, "-c", fetch, store.url, digest, str(target)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert target.read_bytes() == wheel and hashlib.sha256(wheel).hexdigest() == digest
    case.tamper(digest, b"changed")
    run = subprocess.run([sys.executable, "-c", fetch, store.url, digest, str(target)], capture_output=True, text=True)
    assert run.returncode == 1 and f"the agent wheel {digest[:12]} in {store.url} does not match its SHA-256" in run.stderr


# -- S3 only ------------------------------------------------------------------------------------


def test_s3_urls_and_layout(aws_env, monkeypatch):
    bucket = new_bucket(aws_env)
    store = open_store(f"s3://{bucket}/a/b/")
    assert isinstance(store, S3Store) and store.url == f"s3://{bucket}/a/b"
    digest = store.put_bytes(b"hello")
    store.put_env("senv-0123456789abcdef", b"{}")
    keys = sorted(o["Key"] for o in aws_env.client("s3").list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"a/b/blobs/{digest}", "a/b/envs/senv-0123456789abcdef.json"]
    bare = open_store(f"s3://{bucket}")
    assert bare.url == f"s3://{bucket}" and bare.blobs() == []  # a/b/… is another store's
    bare.put_bytes(b"hello")
    assert f"blobs/{digest}" in {o["Key"] for o in aws_env.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    monkeypatch.setenv("PREFECT_REMOTE_STORE", f"s3://{bucket}/a/b")
    assert open_store().get_bytes(digest) == b"hello"
    with pytest.raises(StoreError, match="not a valid S3 bucket name"):
        open_store("s3://Not_A_Bucket/x")


def test_missing_bucket_says_how_to_make_it(aws_env):
    store = open_store("s3://prefect-remote-test-no-such-bucket/envs")
    expected = r"bucket prefect-remote-test-no-such-bucket does not exist in region us-east-1 .*provision-infra"
    for action in (lambda: store.put_bytes(b"x"), lambda: store.get_bytes(HELLO), lambda: store.has_blob(HELLO), store.envs):
        with pytest.raises(StoreError, match=expected):
            action()


def test_no_credentials(aws_env, monkeypatch, tmp_path):
    # Nothing in boto3's chain: no variables, empty config files, no instance metadata.
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        empty = tmp_path / name.lower()
        empty.write_text("")
        monkeypatch.setenv(name, str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store("s3://pr-test-any-bucket/envs")
    with pytest.raises(StoreError, match="no AWS credentials found .* set AWS_PROFILE"):
        store.put_bytes(b"hello")
    with pytest.raises(StoreError, match="no AWS credentials found"):
        store.get_bytes(HELLO)


def refuse(store: S3Store, operation: str, code: str = "AccessDenied") -> None:
    """Makes S3 answer ``operation`` with a 403 ``code``, as it does for an identity without the permission."""

    def answer(**_):
        return AWSResponse(store.client.meta.endpoint_url, 403, {}, None), {
            "Error": {"Code": code, "Message": "Access Denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    store.client.meta.events.register(f"before-call.s3.{operation}", answer)


def test_access_denied_names_the_permissions(aws_env):
    bucket = new_bucket(aws_env)
    store = open_store(f"s3://{bucket}/envs")
    refuse(store, "PutObject")
    with pytest.raises(
        StoreError, match=rf"access denied: s3:PutObject .* s3:PutObject and s3:DeleteObject on arn:aws:s3:::{bucket}/envs/\*"
    ):
        store.put_bytes(b"hello")
    refuse(store, "ListObjectsV2")
    with pytest.raises(StoreError, match=rf"access denied: s3:ListBucket .* s3:ListBucket on arn:aws:s3:::{bucket}"):
        store.blobs()
    refuse(store, "HeadObject", code="InvalidAccessKeyId")
    with pytest.raises(StoreError, match="AWS refused the credentials .* AWS_PROFILE"):
        store.has_blob(HELLO)


def test_without_boto3_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the aws extra were not installed
    store = open_store("s3://pr-test-any-bucket/envs")  # opening costs nothing…
    with pytest.raises(StoreError, match=r"need boto3.*: pip install 'prefect-remote\[aws\]'"):
        store.put_bytes(b"hello")  # …using it says what to install
