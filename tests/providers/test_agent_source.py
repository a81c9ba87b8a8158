"""Where a stock image's agent comes from: this checkout's wheel, put in the store the machines read."""

from __future__ import annotations

from prefect_remote.providers.agent_source import agent_source
from prefect_remote.software.stores import open_store


def test_a_wheel_deleted_from_the_store_is_put_back_by_the_next_launch(tmp_path):
    """A long-lived launcher (a worker, the push service) outlives the blobs it once put: a teardown,
    `env gc` or the bucket's lifecycle rule may delete the agent's wheel, and every later machine
    would then fail its boot fetching it. Each launch's source puts it back if it is gone."""
    store = open_store(tmp_path / "store")
    first = agent_source(lambda: store, extras=(), requirements=(), full=False)
    assert first.wheel and first.digest and store.has_blob(first.digest)  # (this checkout is not a released version)
    store.delete_blob(first.digest)
    again = agent_source(lambda: store, extras=(), requirements=(), full=False)
    assert again.digest == first.digest and store.has_blob(again.digest)


def test_a_wheel_whose_cache_folder_was_removed_is_built_again(tmp_path, monkeypatch):
    """A process that outlives its home (a benchmark's sandboxes, one after another) builds the
    wheel again rather than name a file that has gone."""
    import shutil

    store = open_store(tmp_path / "store")
    for home in (tmp_path / "first", tmp_path / "second"):
        monkeypatch.setenv("PREFECT_REMOTE_HOME", str(home))
        source = agent_source(lambda: store, extras=(), requirements=(), full=False)
        assert store.has_blob(source.digest)
        shutil.rmtree(home)
