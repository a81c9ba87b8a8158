"""A machine's payload in a container image (prefect_remote.machine.container): local machines run it
with this host's Podman, as EC2 and Compute Engine machines do with theirs."""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest
from pydantic import SecretStr

from prefect_remote.errors import CapabilityError
from prefect_remote.machine.container import LABEL, REGISTRY_PASSWORD_ENV, registry_of
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
    spec = MachineSpec(
        image=image, keepalive=None, environ={"PUBLIC": "yes", "TOKEN": SecretStr(SECRET), REGISTRY_PASSWORD_ENV: SecretStr("reg")}
    )
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
    with pytest.raises(CapabilityError, match=r"image='app:1' needs Podman or Docker on this host; install podman, or drop image"):
        LocalProvider().check_spec(MachineSpec(image="app:1"))


def test_an_image_with_a_software_environment_is_refused_saying_why():
    with pytest.raises(ValueError, match="a machine runs the image as it is, with the Python and packages built into it"):
        LocalProvider().check_spec(MachineSpec(image="app:1", software="senv-0123456789abcdef"))


def test_the_registry_an_image_names():
    assert registry_of("python:3.12-slim") == "docker.io" and registry_of("localhost:5000/app:1") == "localhost:5000"
    assert registry_of("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1") == "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def test_an_image_is_pulled_from_its_registry_as_a_boot_phase_once_per_host(images_env):
    """From the sandbox's registry (a real distribution registry): the first machine pulls, saying the
    image's size and the time taken; a second machine of the same image on this host does not pull."""
    image = images_env.image
    subprocess.run(["podman", "rmi", "--force", image], capture_output=True)  # cold: in the registry, not on this host
    provider = LocalProvider()
    payload = BootPayload(["python", "-c", "import prefect; print('prefect', prefect.__version__, 'in the image')"])
    logs = []
    for _ in range(2):
        [machine] = provider.launch(MachineSpec(image=image, keepalive=None), payload)
        [ended] = provider.wait([machine.id], timeout=300)
        logs.append(provider.logs(machine.id).text)
        assert ended.reason == "payload finished" and "in the image" in logs[-1], logs[-1]
    cold = [line for line in logs[0].splitlines() if f"image pull: pulled {image} (" in line]
    assert cold and " s" in cold[0], logs[0]
    assert f"image pull: {image} is on this machine already" in logs[1]
    print(cold[0])  # the figure: size and time of a cold pull
