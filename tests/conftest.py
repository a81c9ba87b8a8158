"""Shared fixtures. The whole session uses its own home folder, bridge and subnet, and cleans up every
machine, namespace, cgroup and process it started, even when tests fail."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import engine_conf

# Before anything reads the settings: this session's machines live apart from the user's.
SESSION_HOME = Path(tempfile.mkdtemp(prefix="prefect-remote-tests-"))
os.environ.update(
    PREFECT_REMOTE_HOME=str(SESSION_HOME),
    PREFECT_REMOTE_LOCAL_BRIDGE="prtest0",
    PREFECT_REMOTE_LOCAL_SUBNET="10.232.0.0/16",
    PREFECT_REMOTE_LOCAL_GRACE_PERIOD="2",
    PREFECT_REMOTE_PROVIDER="local",
    # Prefect's server on SQLite answers 503 (SQLITE_BUSY_SNAPSHOT: another write landed during a
    # request's transaction) while the suite's workers, machines and CLIs write to it every second on a
    # loaded 2-core host; its clients retry a 503 with backoff, and Prefect's 5 tries (62 s) ran out on
    # CI. 7 tries wait up to 4 minutes. (Inherited by every server, worker and CLI the tests start.)
    PREFECT_CLIENT_MAX_RETRIES="7",
)

# This host is never powered off by a test: code under test that runs the OS's power commands in this
# process (a machine runtime's halt(), an agent's backstop, a boot's trap) finds these instead through
# PATH, which refuse and leave a note that fails the test (tests call a runtime's halt with a halt_command
# of their own). A sandbox instance has its own root, whose shutdown is the sandbox's model.
NO_POWER_OFF = SESSION_HOME / "no-power-off"
POWER_OFF_ATTEMPTS = NO_POWER_OFF / "attempts.log"
NO_POWER_OFF.mkdir()
for _command in ("shutdown", "poweroff", "halt", "reboot"):
    (NO_POWER_OFF / _command).write_text(
        f'#!/bin/sh\necho "$0 $*" >> {POWER_OFF_ATTEMPTS}\necho "{_command}: refused, the test host is never powered off" >&2\nexit 1\n'
    )
    (NO_POWER_OFF / _command).chmod(0o755)
os.environ["PATH"] = f"{NO_POWER_OFF}{os.pathsep}{os.environ.get('PATH', '')}"
# What this host needs of Podman (runc, ulimits), and this interpreter for test images (tests/images.py).
os.environ["CONTAINERS_CONF"] = str(engine_conf(SESSION_HOME / "containers.conf"))
SESSION_ENVIRON = dict(os.environ)  # what session-wide servers start with, whatever test starts them

from prefect_remote.devserver import local_prefect_server  # noqa: E402
from prefect_remote.on_machine import MACHINE_ID_ENV  # noqa: E402
from prefect_remote.providers.local import LocalProvider  # noqa: E402
from prefect_remote.providers.local.isolation import (  # noqa: E402
    CGROUP_CONTROLLERS,
    CGROUP_GROUP,
    RUN_DIR,
    _cgroup_v1_roots,
    _own_cgroup,
    namespace_unavailable,
    tagged_pids,
)

# Where this session's machines live: its own, the sandbox clouds' instances, and `prefect-remote sandbox aws|gcp`'s.
MACHINE_FOLDERS = (
    SESSION_HOME / "machines",
    SESSION_HOME / "aws" / "home" / "machines",
    SESSION_HOME / "sandbox" / "aws" / "home" / "machines",
    SESSION_HOME / "gcp" / "home" / "machines",
    SESSION_HOME / "sandbox" / "gcp" / "home" / "machines",
)
NAMESPACE_SKIP = namespace_unavailable()
needs_namespace = pytest.mark.skipif(NAMESPACE_SKIP is not None, reason=NAMESPACE_SKIP or "")
# The sandbox clouds enforce ingress rules with nftables in each instance's namespace (`make sandbox-host`).
needs_firewalls = pytest.mark.skipif(
    NAMESPACE_SKIP is not None or shutil.which("nft") is None, reason=NAMESPACE_SKIP or "no nft (package nftables): ingress not enforced"
)


# The modules that run longest (minutes each, machines on the sandbox clouds), queued first. pytest-xdist's
# --dist loadfile gives each worker a module at a time, by default the modules with the most tests first:
# these have few, so they started last and one worker ran on alone. `make test` passes
# --no-loadscope-reorder, so the workers take modules in the order pytest_collection_modifyitems leaves.
LONGEST_MODULES = (
    "tests/workers/test_push_contract_gcp.py",
    "tests/workers/test_push_contract_aws.py",
    "tests/cluster/test_contract_aws.py",
    "tests/cluster/test_contract_gcp.py",
    # (the examples, longest first as measured under the suite's load: 4, 2.5, 1.7, 1.6 and 1.3 minutes)
    "tests/examples/test_flows.py",
    "tests/examples/test_deployments.py",
    "tests/examples/test_local.py",
    "tests/examples/test_sandbox_aws.py",
    "tests/examples/test_sandbox_gcp.py",
)


# The modules whose tests need the Prefect server's push service (they import
# tests.push_service.prefect_server_with_push_service): one xdist worker runs them all, on one such server.
PUSH_SERVICE_MODULES = (
    "tests/workers/test_push.py",
    "tests/workers/test_push_images.py",
    "tests/workers/test_worker.py",
    "tests/deployments/test_package_sync.py",
)
PUSH_SERVICE_GROUP = "push-service"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A contract test of one cloud's own (marked ``cloud_only(name)``) runs in that cloud's module
    (where ``cloud`` is that name) and is deselected in the other clouds' modules. Then the modules
    are ordered: the push service's and LONGEST_MODULES first, then the others by their number of
    tests (as xdist would), each module's tests in their own order."""
    if missing := [module for module in (*PUSH_SERVICE_MODULES, *LONGEST_MODULES) if not (config.rootpath / module).is_file()]:
        raise pytest.UsageError(f"tests/conftest.py names modules that do not exist (renamed?): {missing}")

    def elsewhere(item: pytest.Item) -> bool:
        mark = item.get_closest_marker("cloud_only")
        return mark is not None and getattr(item, "callspec", None) is not None and item.callspec.params.get("cloud") != mark.args[0]

    deselected = [item for item in items if elsewhere(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not elsewhere(item)]
    pushing = {module_of(item) for item in items if "push_server" in getattr(item, "fixturenames", ())}
    if not pushing <= set(PUSH_SERVICE_MODULES):
        raise pytest.UsageError(f"tests/conftest.py: add {sorted(pushing - set(PUSH_SERVICE_MODULES))} to PUSH_SERVICE_MODULES")
    tests = collections.Counter(module_of(item) for item in items)

    def place(item: pytest.Item) -> tuple[int, int]:
        module = module_of(item)
        if module in PUSH_SERVICE_MODULES:
            return (0, 0)
        return (1 + LONGEST_MODULES.index(module), 0) if module in LONGEST_MODULES else (1 + len(LONGEST_MODULES), -tests[module])

    items.sort(key=place)  # stable: a module's tests stay together, in order


@pytest.hookimpl(optionalhook=True)  # (pytest-xdist's hook: unknown to a run with -p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's --dist loadfile (a worker takes a module at a time), but the push service's
    modules go to one worker together. (Not --dist loadgroup: pytest 9 ignores the group suffix it
    puts on node ids.)"""
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndThePushServiceGroup(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return PUSH_SERVICE_GROUP if module in PUSH_SERVICE_MODULES else module

    return ModulesAndThePushServiceGroup(config, log)


def module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def end_all_machines(timeout: float = 20) -> None:
    provider = LocalProvider()
    alive = provider.list()
    if alive:
        provider.terminate([m.id for m in alive], reason="test cleanup")
        provider.wait([m.id for m in alive], timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def session_cleanup():
    yield
    leftovers: set[int] = set()
    described: dict[int, str] = {}
    try:
        end_all_machines()
        LocalProvider().cleanup_host()
    finally:
        # A monitor writes its machine's end record and then exits: give it that moment.
        deadline = time.monotonic() + 5
        while hypervisors() and time.monotonic() < deadline:
            time.sleep(0.05)
        leftovers = {pid for pid in tagged_pids(f"{MACHINE_ID_ENV}=".encode(), prefix=True) if _in_session(pid)}
        leftovers |= hypervisors()
        described = {pid: _command_line(pid) for pid in leftovers}
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        if NAMESPACE_SKIP is None:
            for line in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.splitlines():
                netns = line.split()[0] if line.strip() else ""
                if netns.startswith("pr-m-") and any((folder / netns[3:]).exists() for folder in MACHINE_FOLDERS):
                    subprocess.run(["ip", "netns", "del", netns])
            roots = _cgroup_v1_roots()
            for controller in CGROUP_CONTROLLERS:
                parent = roots[controller] / _own_cgroup(controller) / CGROUP_GROUP
                for child in parent.glob("m-*"):
                    if any((folder / child.name).exists() for folder in MACHINE_FOLDERS):
                        child.rmdir()
                if parent.exists() and not any(parent.glob("m-*")):
                    parent.rmdir()
        shutil.rmtree(SESSION_HOME, ignore_errors=True)  # (the bridge: pytest_unconfigure, once every worker has ended)
    assert not leftovers, f"machine processes were left running: {described}"


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def machine_folders() -> set[str]:
    """Every machine folder of this session, launched or half-launched."""
    folder = SESSION_HOME / "machines"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def hypervisors() -> set[int]:
    """This session's machine monitors still running."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"prefect_remote.providers.local.hypervisor" in cmdline and str(SESSION_HOME).encode() in cmdline:
            found.add(int(entry.name))
    return found


def _in_session(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    ids = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(f"{MACHINE_ID_ENV}=".encode())]
    return any((folder / i).exists() for i in ids for folder in MACHINE_FOLDERS)


# What the tests' Prefect servers run with. The push service inside a server serves the test-push*
# pools (it launches their machines into its own home); the other push pools are left to the
# fallbacks under test, and test-push-guarded-* pools check what the service refuses.
SERVER_SETTINGS = {
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_REMOTE_PUSH_INTERVAL": "1",
    "PREFECT_REMOTE_PUSH_POOLS": "test-push,test-push-guarded-*",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
}
# Under pytest-xdist the controller starts one Prefect server for all its workers (each idle server
# costs CPU every second, on a 2-core host) and passes its API URL on in this variable. It runs no push
# service: the modules that need one (PUSH_SERVICE_MODULES) run in one worker, on that worker's own server.
SHARED_SERVER_ENV = "PREFECT_REMOTE_TESTS_SHARED_SERVER"
_CONTROLLER_SERVER = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return  # an xdist worker (which inherits the controller's server) or a run without workers
    api_url = _CONTROLLER_SERVER.enter_context(
        local_prefect_server(SESSION_HOME / "prefect", env={**SERVER_SETTINGS, "PREFECT_REMOTE_PUSH_SERVICE": "false"})
    )
    os.environ[SHARED_SERVER_ENV] = api_url  # the workers start after this and inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # (a worker that ran no test never set up session_cleanup)
        shutil.rmtree(SESSION_HOME, ignore_errors=True)
        return
    _CONTROLLER_SERVER.close()
    # Every worker has ended (or, without workers, the session): the bridge and its registry are
    # shared with any concurrent session, so removed only once unused (lock files stay: another
    # session may hold them open).
    if NAMESPACE_SKIP is None and LocalProvider().bridge.remove_if_unused():
        shutil.rmtree(RUN_DIR / "prtest0", ignore_errors=True)
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def push_server() -> str:
    """A real Prefect server (SQLite) of this process, bound to loopback, with prefect-remote installed,
    so that its push service runs inside and submits the test-push* pools' runs. Yields the API URL."""
    # Started by whichever test first needs it, maybe one with a sandbox's exports in os.environ: the
    # server (and the push service inside it) gets the session's environment, not that test's.
    with pytest.MonkeyPatch.context() as session_environ:
        for name in set(os.environ) - set(SESSION_ENVIRON):
            session_environ.delenv(name)
        for name, value in SESSION_ENVIRON.items():
            session_environ.setenv(name, value)
        api_url = _PUSH_SERVER.enter_context(local_prefect_server(SESSION_HOME / "prefect", env=SERVER_SETTINGS))
    with _PUSH_SERVER:
        yield api_url


_PUSH_SERVER = contextlib.ExitStack()  # push_server's, closed with the session or when the push group ends


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """Under pytest-xdist, this worker's :func:`push_server` stops once the push service's group
    (PUSH_SERVICE_MODULES) has ended here, not with the session: its push service polls its pools
    every second, CPU taken from the other workers for the rest of the run. The scheduler sends the
    group to one worker as one unit, so its tests run there one after another and none needs the
    server after the group's last (whose fixtures, its module's too, are torn down first). Without
    workers the server is the session's ``prefect_server`` and ends with the session."""
    try:
        return (yield)
    finally:
        group_ends = module_of(item) in PUSH_SERVICE_MODULES and (nextitem is None or module_of(nextitem) not in PUSH_SERVICE_MODULES)
        if group_ends and os.environ.get(SHARED_SERVER_ENV):
            _PUSH_SERVER.close()


@pytest.fixture(scope="session")
def prefect_server(request: pytest.FixtureRequest) -> str:
    """The API URL of a real Prefect server for the session: the xdist controller's, shared by all
    workers (:data:`SHARED_SERVER_ENV`), or this process's own :func:`push_server`. A module whose
    tests need the push service imports :func:`tests.push_service.prefect_server_with_push_service`."""
    return os.environ.get(SHARED_SERVER_ENV) or request.getfixturevalue("push_server")


@pytest.fixture(scope="session")
def push_pool(push_server) -> str:
    """A remote:push pool created as users create it, once per session, served by the push service of
    :func:`push_server`: here, so that the workers' and the deployments' tests share it."""
    from tests.workers.conftest import prefect_cli

    result = prefect_cli(push_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", "test-push")
    assert result.returncode == 0, result.stdout + result.stderr
    return "test-push"


@pytest.fixture(autouse=True)
def host_never_powered_off():
    """Fails the test that ran this host's power commands (refused: :data:`NO_POWER_OFF`)."""
    yield
    if POWER_OFF_ATTEMPTS.exists():
        attempts = POWER_OFF_ATTEMPTS.read_text()
        POWER_OFF_ATTEMPTS.unlink()
        pytest.fail(f"the test ran this host's power commands (refused): {attempts}")


@pytest.fixture(autouse=True)
def no_machine_outlives_its_test(request):
    seen = {id(sandbox): len(sandbox.refusals) for sandbox in _SANDBOXES}
    yield
    for sandbox in _SANDBOXES:  # what IAM refused during the test: shown with its failure, or written where asked
        refused = sandbox.refusals[seen.get(id(sandbox), 0) :]
        if refused:
            request.node.add_report_section("teardown", f"{type(sandbox).__name__} refusals", "\n".join(refused))
            if os.environ.get("PREFECT_REMOTE_TEST_REFUSALS"):
                with open(os.environ["PREFECT_REMOTE_TEST_REFUSALS"], "a") as log:
                    log.writelines(f"{request.node.nodeid}\t{line}\n" for line in refused)
    end_all_machines()
    for sandbox in _SANDBOXES:
        sandbox.end_all_instances()


@pytest.fixture(params=["process", pytest.param("namespace", marks=needs_namespace)])
def local_provider(request) -> LocalProvider:
    """The local provider at each isolation level this host supports."""
    return LocalProvider(isolation=request.param)


@pytest.fixture
def python() -> str:
    return sys.executable


def wait_for(predicate, timeout: float = 20, interval: float = 0.05, message: str = "condition"):
    """Polls ``predicate`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


_SANDBOXES: list = []  # the session's sandbox clouds, started by the first test that needs each


def share_scratch(sandbox, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mounts the tests' scratch folders (``tmp_path``) into every instance of ``sandbox``, at the same
    path, as a network share: what a test's payload writes there, the test reads (each instance's
    own root keeps everything else)."""
    sandbox.runner.shared.append(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def aws_sandbox(tmp_path_factory):
    """The session's sandbox AWS: moto in server mode on loopback (unknown EC2 instance types
    refused), reached only through the real boto3 client, whose instances boot as local machines
    under this session's home, each in a root of its own. Their image is warm (a uv cache and agent
    environments shared, as a baked image's) where boot time matters; ``aws_sandbox.warm(False)``
    gives a test stock (cold) boots. Yields its ``SandboxAWS``."""
    from prefect_remote.sandbox.aws import SandboxAWS

    with SandboxAWS(region="us-east-1", home=SESSION_HOME / "aws", validate_instance_types=True, warm_cache=True) as sandbox:
        share_scratch(sandbox, tmp_path_factory)
        _SANDBOXES.append(sandbox)
        try:
            yield sandbox
        finally:
            _SANDBOXES.remove(sandbox)


def use_aws_sandbox(monkeypatch: pytest.MonkeyPatch, sandbox, identity: str = "launcher") -> None:
    """Points boto3 and the aws provider at ``sandbox``, as a user's shell after `prefect-remote
    sandbox aws` (the default provider stays local; leases are read every 5 s), with the keys of a
    user that has exactly the docs' ``identity`` list (launcher, provisioning or teardown)."""
    for name, value in {**sandbox.exports(), **sandbox.keys(identity)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", "local")
    monkeypatch.setenv("PREFECT_REMOTE_AWS_LEASE_INTERVAL", "5")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@contextlib.contextmanager
def iam_as_marked(sandbox, request: pytest.FixtureRequest) -> Iterator[None]:
    """IAM off in ``sandbox`` for the test if it is marked ``no_iam`` (a test that needs it off), else as it is."""
    with sandbox.enforcing(False) if request.node.get_closest_marker("no_iam") else contextlib.nullcontext():
        yield


@pytest.fixture
def aws_env(aws_sandbox, monkeypatch, request):
    """The session's sandbox for one test (:func:`use_aws_sandbox`), as the docs' launcher."""
    use_aws_sandbox(monkeypatch, aws_sandbox)
    with iam_as_marked(aws_sandbox, request):
        yield aws_sandbox


@pytest.fixture(scope="session")
def gcp_sandbox(tmp_path_factory):
    """The session's sandbox GCP: the Google APIs prefect-remote calls on one loopback endpoint,
    GCS on another, reached only through the real google-cloud clients; Cloud Run tasks and Compute
    Engine instances run as local machines under this session's home, each in a root of its own,
    from a warm image as :func:`aws_sandbox`'s. Yields its ``SandboxGCP``."""
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP

    # IAM enforced, as everywhere (a test marked no_iam: off)
    with SandboxGCP(home=SESSION_HOME / "gcp", warm_cache=True) as sandbox:
        share_scratch(sandbox, tmp_path_factory)
        _SANDBOXES.append(sandbox)
        try:
            yield sandbox
        finally:
            _SANDBOXES.remove(sandbox)


def use_gcp_sandbox(monkeypatch: pytest.MonkeyPatch, sandbox) -> None:
    """Points Google's clients and the gcp provider at ``sandbox``, as a user's shell after
    `prefect-remote sandbox gcp` (the default provider stays local; leases are read every 5 s)."""
    for name, value in sandbox.exports().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", "local")
    monkeypatch.setenv("PREFECT_REMOTE_GCP_LEASE_INTERVAL", "5")
    monkeypatch.delenv("CLOUDSDK_CONFIG", raising=False)


@pytest.fixture(scope="session")
def sandbox_images():
    """The session's container registry (Debian's docker-registry on loopback), engine API (Podman's
    Docker-compatible socket) and ready Python image in that registry, built once and cached across
    sessions (``~/.cache/prefect-remote-sandbox``). Skipped only where this host lacks podman and the
    rest (`make sandbox-host` installs them). Yields its ``SandboxImages``."""
    from prefect_remote.sandbox.images import SandboxImages, images_unavailable

    unavailable = images_unavailable()
    if unavailable:
        pytest.skip(unavailable)
    with SandboxImages(SESSION_HOME / "images") as images:
        yield images


@pytest.fixture
def images_env(sandbox_images, monkeypatch):
    """A user's shell with the sandbox's images (``DOCKER_HOST``, ``PREFECT_REMOTE_SANDBOX_REGISTRY``,
    ``PREFECT_REMOTE_SANDBOX_IMAGE`` and the engine's configuration) for one test."""
    for name, value in sandbox_images.exports().items():
        monkeypatch.setenv(name, value)
    return sandbox_images


@pytest.fixture
def gcp_env(gcp_sandbox, monkeypatch, request):
    """The session's sandbox GCP for one test (:func:`use_gcp_sandbox`), as the docs' launcher."""
    use_gcp_sandbox(monkeypatch, gcp_sandbox)
    with iam_as_marked(gcp_sandbox, request):
        yield gcp_sandbox
