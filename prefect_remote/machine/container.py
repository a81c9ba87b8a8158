"""A machine's payload in a container image, with the machine's engine: Podman or Docker.

Every provider whose machines are VMs or this host (EC2, Compute Engine, local) runs ``image=`` the
same way, from the agent (:mod:`prefect_remote.machine.agent`); Cloud Run runs the image itself. The
policy, in one place:

* **Engine**: the first of :data:`ENGINES` on ``PATH`` that answers (:func:`find_engine`): Podman
  needs no daemon; a ``docker`` whose daemon does not answer does not count.
* **Pull**: a phase of its own in the machine log, with the image's size and the time it took
  (:meth:`Container.prepare`). An image the engine already has is not pulled again: a warm
  instance, or a second machine of the same image on the same host, starts at once. Credentials
  for a private registry come from the machine's secret channel only (:data:`REGISTRY_USERNAME_ENV`
  and :data:`REGISTRY_PASSWORD_ENV` among the payload's secrets, or the provider runtime's own:
  ECR through the instance role, Artifact Registry through the VM's service account); they go to
  the engine's ``login --password-stdin`` and an auth file of this pull's own, removed after it,
  and never reach the payload.
* **Run** (:meth:`Container.command`): ``--network host`` (the machine's own network: what the
  payload reaches and what reaches it are the machine's), the machine's work folder bind-mounted at
  the same path and the working directory (the code bundle is unpacked there, and the activity file
  lives there), ``--init`` so that the payload gets the stop signal, and the payload's environment
  by name only (``--env NAME``: the engine reads each value from its own environment, so neither a
  value nor a secret appears in ``ps`` or in a log).
* **Agent code**: a payload that imports prefect-remote (a cluster's scheduler and workers) gets
  the agent's own ``prefect_remote`` package bind-mounted read-only at :data:`AGENT_CODE_MOUNT`
  (:func:`agent_code_mounts`), which :func:`agent_code_command` puts first on the image Python's
  import path (not through ``PYTHONPATH``, which the image's own may set): the image need carry only
  what that code imports (Python and Dask), and the code is the creator's version, as on any other
  machine of the launch.
* **Stop** (:meth:`Container.stop`): the engine's ``stop`` (SIGTERM, then SIGKILL after the grace
  period); the ``run`` client then exits with the payload's code, which is the machine's.

Standard library only: the agent imports it on every machine boot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prefect_remote.on_machine import REGISTRY_PASSWORD_ENV, REGISTRY_SECRETS, REGISTRY_USERNAME_ENV  # noqa: F401 (public here too)
from prefect_remote.units import format_size

ENGINES = ("podman", "docker")
LABEL = "prefect-remote.machine"  # on each container: the machine it belongs to
PULL_TIMEOUT = 1800.0  # seconds a pull may take (a multi-GB image on a slow link); the agent's limits still apply
_CHECK_TIMEOUT = 30.0
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
DOCKER_HUB = "docker.io"
# Where a payload's container sees the agent's prefect_remote package (BootPayload.agent_code): a
# folder of its own, so that its PYTHONPATH entry brings no other package over the image's.
AGENT_CODE_MOUNT = "/opt/prefect-remote"


def agent_code_command(module: str) -> list[str]:
    """``python -m <module>`` with the agent's ``prefect_remote`` (mounted at :data:`AGENT_CODE_MOUNT`)
    first on the import path, and the image's own import path, ``PYTHONPATH`` included, after it.

    >>> agent_code_command("prefect_remote.cluster.node")[:2]
    ['python', '-c']
    """
    run = f"import runpy, sys; sys.path.insert(0, {AGENT_CODE_MOUNT!r}); runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return ["python", "-c", run]


def agent_code_mounts() -> list[tuple[str, str]]:
    """(host folder, container folder) of the agent's ``prefect_remote`` package, for :meth:`Container.command`."""
    import prefect_remote

    return [(os.path.dirname(os.path.abspath(prefect_remote.__file__)), f"{AGENT_CODE_MOUNT}/prefect_remote")]


class ContainerError(RuntimeError):
    """The engine could not pull or start the image; the message names the image and says why."""


def find_engine(path: str | None = None, problems: list[str] | None = None) -> str | None:
    """The path of the first engine of :data:`ENGINES` on ``path`` (default ``$PATH``) that answers,
    or None. A Docker CLI without a running daemon does not answer; why each one found does not is
    appended to ``problems``, when given."""
    for name in ENGINES:
        found = shutil.which(name, path=path)
        if found is None:
            continue
        check = [found, "version"] if name == "podman" else [found, "version", "--format", "{{.Server.Version}}"]
        try:
            answer = subprocess.run(check, capture_output=True, text=True, timeout=_CHECK_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as error:
            why = str(error)
        else:
            if answer.returncode == 0:
                return found
            why = _last_line(answer)
        if problems is not None:
            problems.append(f"{found} does not answer: {why}")
    return None


def no_engine_message(image: str, problems: list[str] | None = None) -> str:
    """What a host without an engine that answers says to ``image=`` (``problems``: :func:`find_engine`'s)."""
    found = f" ({'; '.join(problems)})" if problems else ""
    return f"image={image!r} needs Podman or Docker on this host; install podman, or drop image{found}"


def image_with_software(image: str, software: str) -> str:
    """Why a machine that runs ``image`` with its engine refuses ``software`` too."""
    return (
        f"image={image!r} and software={software!r}: a machine runs the image as it is, with the Python and packages "
        "built into it, and rebuilds a software environment only outside it; give one of them: image (build your "
        "packages into it) or software (package sync on the provider's stock machine)"
    )


def registry_of(image: str) -> str:
    """The registry host an image reference names, Docker Hub when it names none.

    >>> registry_of("python:3.12-slim"), registry_of("localhost:5000/app:1"), registry_of("ghcr.io/org/app")
    ('docker.io', 'localhost:5000', 'ghcr.io')
    """
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


GPUS_DOCKER = "--gpus=all"
GPUS_PODMAN = "--device=nvidia.com/gpu=all"
NVIDIA_DEVICE = "/dev/nvidiactl"  # made by NVIDIA's driver once loaded: the machine has a GPU it can use


def machine_has_gpus(device: str = NVIDIA_DEVICE) -> bool:
    """Whether this machine has NVIDIA GPUs with their driver loaded (the GPU images' default)."""
    return os.path.exists(device)


@dataclass(frozen=True)
class Container:
    """``image`` run by ``engine`` (a path, from :func:`find_engine`) for machine ``machine_id``.

    Example::

        container = Container(find_engine(), "python:3.12-slim", "i-0abc")
        container.prepare(print)
        subprocess.Popen(container.command(["python", "-V"], ["MY_VAR"], "/work"), env={"MY_VAR": "1", **os.environ})
    """

    engine: str
    image: str
    machine_id: str
    prefix: tuple[str, ...] = ()  # what the engine's commands run behind (MachineRuntime.engine_prefix)
    gpus: bool = False  # the machine's GPUs go into the container (:func:`machine_has_gpus`)

    @property
    def name(self) -> str:
        """The container's name: one per machine."""
        return "prefect-remote-" + _NAME_UNSAFE.sub("-", self.machine_id)

    @property
    def kind(self) -> str:
        """``podman`` or ``docker`` (a ``docker`` that is Podman's shim behaves as Docker's CLI)."""
        return os.path.basename(self.engine)

    def _engine(self, *arguments: str, env: Mapping[str, str] | None = None, timeout: float = _CHECK_TIMEOUT, text: str | None = None):
        # Without ``prefix``: inspect, login, pull, stop and rm need no cgroup mounts (only ``run``
        # does), and the pull's auth file is in this machine's own temporary folder, which another
        # mount namespace may not show at the same path.
        return subprocess.run([self.engine, *arguments], capture_output=True, text=True, input=text, timeout=timeout, env=env, check=False)

    def size(self) -> int | None:
        """The image's size on this machine in bytes, or None when the engine does not have it."""
        found = self._engine("image", "inspect", "--format", "{{.Size}}", self.image)
        try:
            return int(found.stdout.split()[0]) if found.returncode == 0 else None
        except (IndexError, ValueError):
            return None

    def prepare(self, say: Callable[[str], None], credentials: tuple[str, str] | None = None) -> None:
        """Makes sure the engine has the image: pulled (with ``credentials``, a registry user name and
        password, when given) unless it is here already, saying which, its size and the time taken.
        Raises :class:`ContainerError` naming the image when the pull fails."""
        size = self.size()
        if size is not None:
            say(f"image pull: {self.image} is on this machine already ({format_size(size)}), not pulled")
            return
        say(f"image pull: pulling {self.image} with {self.kind}")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="prefect-remote-auth-") as auth:  # this pull's credentials only, then gone
            env = None  # without credentials, the engine's own configuration
            if credentials is not None:
                env = {**os.environ, "REGISTRY_AUTH_FILE": os.path.join(auth, "auth.json"), "DOCKER_CONFIG": auth}
                user, password = credentials
                registry = registry_of(self.image)
                login = self._engine("login", "--username", user, "--password-stdin", registry, env=env, text=password)
                if login.returncode != 0:
                    raise ContainerError(f"image {self.image}: {self.kind} could not log in to {registry}: {_last_line(login)}")
            try:
                pulled = self._engine("pull", self.image, env=env, timeout=PULL_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise ContainerError(f"image {self.image}: the pull took longer than {PULL_TIMEOUT:.0f} s") from None
        if pulled.returncode != 0:
            raise ContainerError(f"image {self.image} could not be pulled: {_last_line(pulled)}")
        size = self.size()
        took = time.monotonic() - started
        say(f"image pull: pulled {self.image} ({format_size(size) if size is not None else 'size unknown'}) in {took:.1f} s")

    def command(
        self,
        command: Iterable[str],
        env_names: Iterable[str],
        workdir: str,
        *,
        purpose: str = "",
        read_only: Iterable[tuple[str, str]] = (),
    ) -> list[str]:
        """The engine's ``run`` of ``command`` in the image, in ``workdir`` (bind-mounted at its own
        path), on the machine's network, with the variables ``env_names`` from the ``run`` client's
        own environment (by name only: no value on its command line). A ``purpose`` (``on-stop``)
        names a container of its own, beside the payload's, which may not be removed yet.
        ``read_only``: more (host folder, container folder) bind mounts, read-only."""
        names = [f"--env={name}" for name in sorted(set(env_names))]
        mounts = [f"--volume={host}:{inside}:ro" for host, inside in read_only]
        # Docker asks NVIDIA's container toolkit for every GPU; Podman names them as a CDI device (the
        # toolkit's `nvidia-ctk cdi generate`, which the boot runs when it finds the toolkit).
        gpus = ([GPUS_DOCKER if self.kind == "docker" else GPUS_PODMAN]) if self.gpus else []
        return [
            *self.prefix,
            self.engine,
            "run",
            "--rm",
            "--init",
            f"--name={self.name}-{purpose}" if purpose else f"--name={self.name}",
            f"--label={LABEL}={self.machine_id}",
            "--network=host",
            *gpus,
            f"--volume={workdir}:{workdir}",
            *mounts,
            f"--workdir={workdir}",
            *names,
            self.image,
            *command,
        ]

    def stop(self, grace: float) -> None:
        """Stops the container (SIGTERM to the payload, SIGKILL after ``grace`` seconds) and removes
        it; one that is gone already is fine."""
        try:
            self._engine("stop", "-t", str(max(1, round(grace))), self.name, timeout=grace + _CHECK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        try:
            self._engine("rm", "--force", self.name)
        except subprocess.TimeoutExpired:
            pass


def remove_machine_containers(machine_id: str) -> None:
    """Removes the containers of machine ``machine_id`` left on this host (its agent killed before it
    could stop them), as a VM's end takes its containers with it: a machine monitor's last step."""
    engine = find_engine()
    if engine is None:
        return
    try:
        listed = subprocess.run(
            [engine, "ps", "--all", "--quiet", f"--filter=label={LABEL}={machine_id}"],
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT,
        )
        if listed.stdout.split():
            subprocess.run([engine, "rm", "--force", *listed.stdout.split()], capture_output=True, timeout=_CHECK_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        pass


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in f"{done.stdout}\n{done.stderr}".splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


__all__ = [
    "AGENT_CODE_MOUNT",
    "ENGINES",
    "REGISTRY_SECRETS",
    "Container",
    "ContainerError",
    "agent_code_command",
    "agent_code_mounts",
    "find_engine",
    "image_with_software",
    "no_engine_message",
    "registry_of",
    "remove_machine_containers",
]
