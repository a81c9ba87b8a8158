"""A machine's payload in a container image (prefect_remote.machine.container): local machines run it
with this host's Podman, as EC2 and Compute Engine machines do with theirs."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time

import pytest
from pydantic import SecretStr

from prefect_remote.errors import CapabilityError
from prefect_remote.machine.container import LABEL, REGISTRY_PASSWORD_ENV, REGISTRY_SECRETS, registry_of
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider
from prefect_remote.spec import MachineSpec
from tests.conftest import SESSION_HOME, wait_for
from tests.images import import_test_image, remove_image

SECRET = "s3cr3t-never-in-ps"
APP = """\
import hashlib, os, pathlib, sys, time
token = os.environ.get("TOKEN", "")
print("public:", os.environ.get("PUBLIC"), "token sha256:", hashlib.sha256(token.encode()).hexdigest(), flush=True)
print("registry secret:", "present" if "PREFECT_REMOTE_REGISTRY_PASSWORD" in os.environ else "absent", flush=True)
print("host PATH:", "no-power-off" in os.environ["PATH"], flush=True)
pathlib.Path("written-in-the-image").write_text(os.getcwd())
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
sys.exit(3)
"""


@pytest.fixture(scope="module")
def image():
    image = import_test_image({"/opt/app/app.py": APP})
    yield image
    remove_image(image)


def started(provider: LocalProvider, spec: MachineSpec, seconds: float):
    [machine] = provider.launch(spec, BootPayload(["python", "/opt/app/app.py", str(seconds)]))
    wait_for(lambda: "ready" in provider.logs(machine.id).text, timeout=60, message="the payload to start in its container")
    return machine


def test_the_payload_runs_in_the_image_with_its_environment_its_secrets_kept_out_of_ps_and_its_exit_code(image):
    provider = LocalProvider()
    registry_login = {name: SecretStr("reg") for name in REGISTRY_SECRETS}  # not used: the image is here already
    spec = MachineSpec(image=image, keepalive=None, environ={"PUBLIC": "yes", "TOKEN": SecretStr(SECRET), **registry_login})
    machine = started(provider, spec, 3)
    processes = subprocess.run(["ps", "-e", "-ww", "-o", "args"], capture_output=True, text=True).stdout  # every command line
    [ended] = provider.wait([machine.id], timeout=60)
    log = provider.logs(machine.id).text
    assert SECRET not in processes and "--env=TOKEN" in processes  # passed by name, its value read by the engine
    assert ended.exit_code == 3 and ended.reason == "payload exited with code 3"
    assert f"image pull: {image} is on this machine already" in log
    assert f"public: yes token sha256: {hashlib.sha256(SECRET.encode()).hexdigest()}" in log and SECRET not in log
    assert "registry secret: absent" in log and "host PATH: False" in log  # the launch's environment, not the machine's
    work = SESSION_HOME / "machines" / machine.id / "work"
    assert (work / "written-in-the-image").read_text() == str(work)  # the work folder, bind-mounted where it is


def test_stopping_the_machine_stops_and_removes_its_container(image):
    provider = LocalProvider()
    machine = started(provider, MachineSpec(image=image, keepalive=None), 300)
    provider.terminate([machine.id], reason="stopped by the test")
    stopped = time.monotonic()
    [ended] = provider.wait([machine.id], timeout=30)
    assert time.monotonic() - stopped < 15 and ended.reason == "stopped by the test"
    left = subprocess.run(["podman", "ps", "--all", "--quiet", f"--filter=label={LABEL}={machine.id}"], capture_output=True, text=True)
    assert left.returncode == 0 and left.stdout.strip() == ""


def test_without_podman_or_docker_the_local_provider_refuses_an_image_at_submit(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CapabilityError, match=r"image='app:1' needs Podman or Docker on this host; install podman, or drop image$"):
        LocalProvider().check_spec(MachineSpec(image="app:1"))
    (tmp_path / "podman").write_text("#!/bin/sh\necho 'Error: storage is broken' >&2\nexit 125\n")  # installed, not answering
    (tmp_path / "podman").chmod(0o755)
    with pytest.raises(CapabilityError, match=r"or drop image \(.*/podman does not answer: Error: storage is broken\)"):
        LocalProvider().check_spec(MachineSpec(image="app:1"))
    (tmp_path / "podman").write_text(f"#!/bin/sh\necho asked >> {tmp_path}/asked\n")  # answers
    provider = LocalProvider()
    for _ in range(3):
        provider.check_spec(MachineSpec(image="app:1"))
    assert (tmp_path / "asked").read_text() == "asked\n"  # once: not on every plan


def test_an_image_with_a_software_environment_is_refused_saying_why():
    with pytest.raises(ValueError, match="a machine runs the image as it is, with the Python and packages built into it"):
        LocalProvider().check_spec(MachineSpec(image="app:1", software="senv-0123456789abcdef"))


def test_the_registry_an_image_names():
    assert registry_of("python:3.12-slim") == "docker.io" and registry_of("localhost:5000/app:1") == "localhost:5000"
    assert registry_of("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1") == "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture
def private_registry(tmp_path, monkeypatch, image):
    """A distribution registry (Debian's docker-registry) that admits one user, on the address machines
    reach this host at, holding ``image`` as ``<registry>/private/app:1``; this host's engine is told it
    speaks plain HTTP. Yields (the image's reference there, the user, the password)."""
    import warnings

    from prefect_remote.devserver import free_port, stop_process_group

    provider = LocalProvider()
    if provider.isolation == "namespace":
        provider.bridge.ensure()
    registry = f"{provider.host_address}:{free_port()}"
    user, password = "puller", "pw-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # (the standard library's bcrypt until 3.13: the registry's htpasswd needs bcrypt)

        (tmp_path / "htpasswd").write_text(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    (tmp_path / "registry.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
        f"http:\n  addr: {registry}\nauth:\n  htpasswd:\n    realm: test\n    path: {tmp_path / 'htpasswd'}\n"
    )
    (tmp_path / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "registries.conf"))  # machines get it from this host
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "registry.yml")], stdout=log, stderr=log, start_new_session=True)
    private = f"{registry}/private/app:1"
    try:
        auth = ["--authfile", str(tmp_path / "auth.json")]
        wait_for(lambda: subprocess.run(["podman", "login", *auth, "-u", user, "--password-stdin", registry], input=password.encode(),
                 capture_output=True).returncode == 0, timeout=30, message="the registry to admit its user")  # fmt: skip
        subprocess.run(["podman", "tag", image, private], check=True)
        subprocess.run(["podman", "push", *auth, private], check=True, capture_output=True)
        subprocess.run(["podman", "rmi", private], check=True, capture_output=True)  # (the layers stay: a quick pull)
        yield private, user, password
    finally:
        remove_image(private)  # as the machines pulled it
        stop_process_group(server, grace=5)
        log.close()


def test_a_private_image_is_pulled_with_credentials_from_the_secret_channel_only_once_per_host(private_registry):
    """Without credentials the pull fails, naming the image; with them (secrets of the launch) the first
    machine pulls, as a boot phase with size and time, and a second one on this host does not."""
    private, user, password = private_registry
    provider = LocalProvider()
    payload = BootPayload(["python", "/opt/app/app.py", "0"])
    [refused] = provider.wait([m.id for m in provider.launch(MachineSpec(image=private, keepalive=None), payload)], timeout=60)
    assert refused.reason.startswith(f"image pull: image {private} could not be pulled:"), refused.reason
    secrets = {"PREFECT_REMOTE_REGISTRY_USERNAME": SecretStr(user), REGISTRY_PASSWORD_ENV: SecretStr(password)}
    logs = []
    for _ in range(2):
        [machine] = provider.launch(MachineSpec(image=private, keepalive=None, environ=secrets), payload)
        [ended] = provider.wait([machine.id], timeout=60)
        logs.append(provider.logs(machine.id).text)
        assert ended.exit_code == 3 and "registry secret: absent" in logs[-1]  # the payload does not get them
        assert password not in logs[-1] and not list((SESSION_HOME / "machines" / machine.id / "work").glob("prefect-remote-auth-*"))
    assert re.search(rf"image pull: pulled {re.escape(private)} \([0-9.]+ MiB\) in [0-9.]+ s", logs[0]), logs[0]
    assert f"image pull: {private} is on this machine already" in logs[1]


def test_a_busy_container_is_not_idle(image):
    """idle_timeout counts a container's CPU use (its processes are the engine's children, not the agent's)."""
    provider = LocalProvider()
    busy = "import time\nend = time.monotonic() + 8\nwhile time.monotonic() < end: pass\nraise SystemExit(4)"
    [machine] = provider.launch(MachineSpec(image=image, keepalive=None, idle_timeout=3), BootPayload(["python", "-c", busy]))
    [ended] = provider.wait([machine.id], timeout=60)
    assert (ended.reason, ended.exit_code) == ("payload exited with code 4", 4), provider.logs(machine.id).text


def test_the_on_stop_command_runs_in_a_container_of_its_own_name():
    """on_stop runs once the payload's container is stopped, whose removal may still be under way:
    its own name, never the payload's, and the machine's label (removed with the machine)."""
    from prefect_remote.machine.container import Container

    container = Container("/usr/bin/podman", "app:1", "m-1")
    payload, on_stop = container.command(["run"], ["A"], "/w"), container.command(["report"], ["A"], "/w", purpose="on-stop")
    assert "--name=prefect-remote-m-1" in payload and "--name=prefect-remote-m-1-on-stop" in on_stop
    assert f"--label={LABEL}=m-1" in on_stop and "--rm" in on_stop


def test_a_machine_with_gpus_gives_them_to_its_container_as_its_engine_asks(tmp_path):
    """Docker asks NVIDIA's toolkit for the GPUs (``--gpus``); Podman takes them as a CDI device. A
    machine has GPUs when NVIDIA's driver made its control device (the GPU images' default)."""
    from prefect_remote.machine.container import GPUS_DOCKER, GPUS_PODMAN, Container, machine_has_gpus

    docker = Container("/usr/bin/docker", "app:1", "m-1", gpus=True).command(["run"], [], "/w")
    podman = Container("/usr/bin/podman", "app:1", "m-1", gpus=True).command(["run"], [], "/w")
    plain = Container("/usr/bin/podman", "app:1", "m-1").command(["run"], [], "/w")
    assert GPUS_DOCKER in docker and GPUS_PODMAN not in docker
    assert GPUS_PODMAN in podman and GPUS_DOCKER not in podman
    assert not {GPUS_DOCKER, GPUS_PODMAN} & set(plain)
    assert docker.index(GPUS_DOCKER) < docker.index("app:1")  # an engine option, not the payload's argument
    device = tmp_path / "nvidiactl"
    assert not machine_has_gpus(str(device))
    device.touch()
    assert machine_has_gpus(str(device))
