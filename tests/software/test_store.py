import pytest

from prefect_remote.software.store import LocalStore, NotInStore, StoreError, TamperedBlob
from prefect_remote.software.stores import open_store


def test_blobs_are_addressed_by_content_and_owner_only(tmp_path):
    store = LocalStore(tmp_path / "s")
    digest = store.put_bytes(b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.put_bytes(b"hello") == digest and store.blobs() == [digest]
    assert store.get_bytes(digest) == b"hello"
    assert oct(store.root.stat().st_mode & 0o777) == "0o700"
    assert oct((store.root / "blobs" / digest).stat().st_mode & 0o777) == "0o600"


def test_tampering_and_missing_keys(tmp_path):
    store = LocalStore(tmp_path / "s")
    digest = store.put_bytes(b"hello")
    (store.root / "blobs" / digest).write_bytes(b"jello")
    with pytest.raises(TamperedBlob, match="changed or corrupted"):
        store.get_bytes(digest)
    assert not store.has_blob(digest)  # the bad copy is gone: storing it again stores a good one
    assert store.put_bytes(b"hello") == digest and store.get_bytes(digest) == b"hello"
    with pytest.raises(NotInStore):
        store.get_bytes("0" * 64)


def test_envs_by_name(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.put_env("senv-0123456789abcdef", b"{}")
    assert store.envs() == ["senv-0123456789abcdef"] and store.get_env("senv-0123456789abcdef") == b"{}"
    store.delete_env("senv-0123456789abcdef")
    assert not store.has_env("senv-0123456789abcdef")


def test_open_store_urls(tmp_path, monkeypatch):
    assert open_store(f"file://{tmp_path}/x").root == tmp_path / "x"
    assert open_store(tmp_path / "y").root == tmp_path / "y"
    monkeypatch.setenv("PREFECT_REMOTE_STORE", str(tmp_path / "z"))
    assert open_store().root == tmp_path / "z"
    assert open_store("gs://bucket/prefix").url == "gs://bucket/prefix"  # opening costs nothing (tests/software/test_store_gcs.py uses it)
    with pytest.raises(StoreError, match="expected a local path"):
        open_store("ftp://host/x")
    with pytest.raises(StoreError, match="unreachable"):
        LocalStore(tmp_path / "missing").get_bytes("0" * 64)
