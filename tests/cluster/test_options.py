"""Cluster arguments are validated before anything starts, with messages that say what to fix."""

from __future__ import annotations

import inspect
import pydoc
import re

import pytest

import prefect_remote
from prefect_remote.cluster.options import ClusterOptionError, ClusterOptions, parse_n_workers
from prefect_remote.errors import CapabilityError, CapacityError, ProviderNotFound
from prefect_remote.providers.base import Capabilities
from prefect_remote.providers.local import LocalProvider
from tests.conftest import machine_folders


def test_n_workers_forms():
    assert parse_n_workers(None) == (0, 500, True)
    assert parse_n_workers(3) == (3, 3, False)
    assert parse_n_workers([1, 4]) == (1, 4, True)
    assert parse_n_workers((0, 1)) == (0, 1, True)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_workers": [5, 2]}, r"minimum \(5\) is larger than the maximum \(2\)"),
        ({"n_workers": -1}, "0 or more"),
        ({"n_workers": "many"}, "whole number of workers"),
        ({"n_workers": [1, 2, 3]}, r"\[min, max\]"),
        ({"threads_per_worker": 0}, "threads_per_worker=0"),
        ({"threads_per_worker": -2}, "threads_per_worker=-2"),
        ({"keepalive": "never"}, "keepalive"),
        ({"keepalive": None}, "keepalive=None"),
        ({"idle_timeout": "soon"}, "idle_timeout"),
        ({"name": "Bad Name!"}, "name='Bad Name!'"),
        ({"cpu": "lots"}, "cpu"),
    ],
)
def test_bad_arguments_raise_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        ClusterOptions.build(**arguments)


def test_unknown_provider_and_impossible_spec():
    with pytest.raises(ProviderNotFound, match="nowhere"):
        ClusterOptions.build(provider="nowhere")
    with pytest.raises(CapacityError, match="cpu=512"):
        ClusterOptions.build(cpu=512)


def test_bad_decorator_arguments_start_nothing():
    before = machine_folders()
    for arguments in (
        {"n_workers": [5, 2]},
        {"threads_per_worker": 0},
        {"keepalive": "never"},
        {"provider": "nowhere"},
        {"container": "img:1", "image": "img:2"},
        {"image": "-img"},
    ):
        with pytest.raises((ValueError, LookupError)):

            @prefect_remote.function(**arguments)
            def f(x):
                return x

    with pytest.raises(ValueError, match="n_workers"):
        prefect_remote.RemoteCluster(n_workers=[3, 1])
    with pytest.raises(ValueError, match="threads_per_worker"):
        prefect_remote.RemoteTaskRunner(threads_per_worker=0)
    assert machine_folders() == before


def test_the_keyword_arguments_of_function_and_remote_cluster_are_listed_with_their_defaults():
    """``prefect_remote.function``'s keywords and defaults are a contract (DESIGN.md): its signature,
    which help() shows, lists exactly them, and binds calls as a function's own would."""
    contract = {
        "func": None,
        "software": None,
        "image": None,
        "container": None,
        "vm_type": None,
        "cpu": None,
        "memory": None,
        "gpu": None,
        "region": None,
        "arm": None,
        "disk_size": None,
        "spot_policy": None,
        "idle_timeout": "24 hours",
        "keepalive": "30 seconds",
        "n_workers": None,
        "threads_per_worker": 1,
        "environ": None,
        "package_sync_ignore": None,
        "tags": None,
        "name": None,
        "local": False,
        "allow_ingress_from": None,
        "provider": None,
        "package_sync": None,
    }
    parameters = inspect.signature(prefect_remote.function).parameters
    assert {name: parameter.default for name, parameter in parameters.items()} == contract
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in contract if name != "func")
    assert "cpu: int | list[int] | None = None" in pydoc.render_doc(prefect_remote.function)
    with pytest.raises(TypeError, match=r"^function\(\) got an unexpected keyword argument 'start_workers'$"):
        prefect_remote.function(start_workers=1)
    cluster = inspect.signature(prefect_remote.RemoteCluster).parameters
    assert contract.keys() - {"func", "local"} <= cluster.keys() and cluster["threads_per_worker"].default is None
    assert cluster["keepalive"].default == "30 seconds" and cluster["cpu"].kind is inspect.Parameter.KEYWORD_ONLY


def test_names_follow_spec_and_software():
    a = ClusterOptions.build(cpu=1, keepalive="1 minute")
    assert a.cluster_name == ClusterOptions.build(cpu=1, keepalive="5 minutes").cluster_name  # lifetime is not identity
    assert a.cluster_name != ClusterOptions.build(cpu=2).cluster_name
    assert a.cluster_name != ClusterOptions.build(cpu=1, software="senv-0123456789abcdef").cluster_name
    assert a.cluster_name != ClusterOptions.build(cpu=1, threads_per_worker=2).cluster_name
    assert ClusterOptions.build(name="nightly").cluster_name == "nightly"
    assert a.cluster_name.startswith("prefect-remote-")


def test_names_follow_the_creator_and_environ_values_with_secret_values_keyed(monkeypatch, tmp_path):
    """A teammate's identical request (another user or home) gets its own cluster; so does one with
    other environ values, public or secret; a secret value is not recoverable from the name (keyed
    with this home's own key, made owner-only)."""
    from pydantic import SecretStr

    from prefect_remote.settings import get_settings

    base = ClusterOptions.build(cpu=1, environ={"DB": "dev", "TOKEN": SecretStr("s1")})
    assert base.cluster_name == ClusterOptions.build(cpu=1, environ={"DB": "dev", "TOKEN": SecretStr("s1")}).cluster_name
    assert base.cluster_name != ClusterOptions.build(cpu=1, environ={"DB": "prod", "TOKEN": SecretStr("s1")}).cluster_name
    assert base.cluster_name != ClusterOptions.build(cpu=1, environ={"DB": "dev", "TOKEN": SecretStr("s2")}).cluster_name
    key = get_settings().home / "clusters" / "name.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    monkeypatch.setattr("prefect_remote.lease.getpass.getuser", lambda: "a-teammate")
    assert base.cluster_name != ClusterOptions.build(cpu=1, environ={"DB": "dev", "TOKEN": SecretStr("s1")}).cluster_name
    monkeypatch.undo()
    monkeypatch.setenv("PREFECT_REMOTE_HOME", str(tmp_path / "another-home"))
    other_home = ClusterOptions.build(cpu=1, environ={"DB": "dev", "TOKEN": SecretStr("s1")})
    assert other_home.cluster_name != base.cluster_name and (tmp_path / "another-home" / "clusters" / "name.key").exists()


def test_threads_follow_cpu_unless_given():
    assert ClusterOptions.build().nthreads(4) == 4
    assert ClusterOptions.build(threads_per_worker=-1).nthreads(4) == 4
    assert ClusterOptions.build(threads_per_worker=2).nthreads(4) == 2


class NoInbound(LocalProvider):
    """A provider whose machines cannot connect to each other (as some serverless ones)."""

    name = "no-inbound"
    capabilities = Capabilities(inbound_connections=False)


def test_a_provider_without_inbound_connections_is_refused_before_anything_starts():
    before = machine_folders()
    message = (
        "provider 'no-inbound' does not accept inbound connections between machines, which a Dask cluster "
        "needs (its workers connect to its scheduler); use a provider that does: aws, gcp, local"
    )
    with pytest.raises(CapabilityError, match=re.escape(message)):
        prefect_remote.RemoteCluster(n_workers=1, provider=NoInbound(isolation="process"))
    with pytest.raises(CapabilityError, match="does not accept inbound connections"):
        prefect_remote.function(provider=NoInbound(isolation="process"))(len)
    with pytest.raises(CapabilityError, match="does not end machines one at a time, which a Dask cluster needs to scale down"):
        ClusterOptions.build(
            provider=type("NoSingleEnd", (LocalProvider,), {"name": "x", "capabilities": Capabilities(terminate_one=False)})()
        )
    assert machine_folders() == before


def test_an_image_is_the_whole_clusters_and_is_never_package_synced():
    """``image=`` (or ``container=``) is what the scheduler and workers run: the same for RemoteCluster,
    ``prefect_remote.function`` and RemoteTaskRunner, which build the same options."""
    for options in (
        ClusterOptions.build(container="img:1", provider="local"),
        prefect_remote.function(container="img:1", provider="local")(len)._options,
    ):
        assert options.spec.image == "img:1" and not options.syncs_packages and options.with_software() is options
    assert prefect_remote.RemoteTaskRunner(image="img:1").cluster_arguments == {"image": "img:1"}
    with pytest.raises(ClusterOptionError, match=r"^image='img:1' and package_sync=True: an image is used as it is; drop one of them$"):
        ClusterOptions.build(image="img:1", package_sync=True)
    with pytest.raises(ValueError, match="image='img:1' and software='senv-0123456789abcdef': a machine runs the image as it is"):
        ClusterOptions.build(image="img:1", software="senv-0123456789abcdef", provider="local")
    with pytest.raises(ValueError, match="disagree: container is the older name of image"):
        ClusterOptions.build(image="img:1", container="img:2")
