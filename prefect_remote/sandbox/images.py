"""Container images for the sandbox clouds: a real OCI registry and a real engine, offline.

:class:`SandboxImages` starts, on this host's loopback, with processes it stops by PID:

* Debian's ``docker-registry`` (the distribution registry), plain HTTP on ``127.0.0.1:<free port>``,
  its storage in the sandbox's home;
* Podman's Docker-compatible API (``podman system service``) on a unix socket in the same home, so
  that docker-py (Prefect's ``DockerImage``) builds and pushes through ``DOCKER_HOST`` as with Docker;
* the engine's configuration, written there and selected by environment variables
  (``CONTAINERS_CONF``, ``CONTAINERS_REGISTRIES_CONF``, ``CONTAINERS_STORAGE_CONF``): runtime runc
  (crun refuses this host's hybrid cgroups), default ulimits within this host's hard limits, the
  sandbox registry marked insecure (plain HTTP). Product code never sees any of this;
* a ready Python image in the registry: a Debian root file system from ``mmdebstrap`` (no Docker Hub
  base: the sandbox is offline but for Debian's archive and PyPI), imported with ``podman import``,
  with this project's locked dependencies installed over it by ``uv`` from this host's uv cache.

Both builds are cached under :data:`CACHE` (``~/.cache/prefect-remote-sandbox``), keyed by what goes
into them: the root file system by its suite and packages, the Python image by the root file system,
its requirements and its Containerfile. A warm start copies the cached registry storage (as pushed
by the cold build) into the new registry's, and builds nothing.

The registry is published to the sandbox's instances at the host's address as they reach it (the
local provider's gateway forwards it onto the bridge, as it does a Prefect API's port):
:attr:`registry` is ``<that address>:<port>``, which this host reaches too, so one image reference
serves the build, the push and the instances' pull. Instances get the engine's configuration for
them through :meth:`instance_env`.

>>> with SandboxImages(home) as images:             # doctest: +SKIP
...     os.environ.update(images.exports())          # DOCKER_HOST, PREFECT_REMOTE_SANDBOX_REGISTRY, ...IMAGE
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from prefect_remote.devserver import free_port, stop_process_group
from prefect_remote.filelock import file_lock
from prefect_remote.providers.local import LocalProvider
from prefect_remote.providers.local.isolation import host_trust_env

# What the host needs, from Debian's packages (`make sandbox-host` installs them).
HOST_TOOLS = {"podman": "podman", "runc": "runc", "docker-registry": "docker-registry", "mmdebstrap": "mmdebstrap"}
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefect-remote-sandbox"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "curl")
IMAGE_NAME = "prefect-remote/python"  # the ready Python image's repository in the sandbox registry
START_TIMEOUT = 30.0  # seconds for the registry and the engine's API to answer
NOFILE_MAX, NPROC_MAX = 1048576, 32768  # conmon runs with at most 32768 processes: a container cannot be given more
# Its layers in the registry: zstd, which instances unpack several times faster than gzip (each fresh
# instance pulls the image, and gunzip was most of its time).
COMPRESSION = "zstd"
INSTANCE_STORAGE = "/var/lib/prefect-remote-sandbox/containers/storage"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
KEEP_FORWARD_EVERY = 3.0  # seconds between renewals of the gateway's forward of the registry
# The Python image: the project's locked requirements into a venv on the path, installed by uv from
# this host's uv cache (mounted at build time, so nothing is downloaded twice), compiled (a container
# starts from a fresh copy: without .pyc files every start compiles prefect again), trusting what this host
# trusts (its SSL_CERT_FILE, for the build only: not kept in the image).
CONTAINERFILE = """\
FROM {base}
COPY . /tmp/build/
RUN python3 -m venv /opt/venv \\
 && if [ -f /tmp/build/ca.crt ]; then export SSL_CERT_FILE=/tmp/build/ca.crt; fi \\
 && UV_CACHE_DIR=/uv-cache UV_LINK_MODE=copy /tmp/build/uv pip install --quiet --compile-bytecode --python /opt/venv/bin/python \\
      --no-deps -r /tmp/build/requirements.txt \\
 && rm -rf /tmp/build
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin VIRTUAL_ENV=/opt/venv
CMD ["python3"]
"""


def images_unavailable() -> str | None:
    """None where this host can run the sandbox's registry and engine, else why not and how to get them
    (one line: Debian's packages, which `make sandbox-host` installs)."""
    missing = [package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return f"no images: no {', '.join(missing)} here (`make sandbox-host`)"
    if os.geteuid() != 0:
        return "no images: the sandbox's engine and image builds need root"
    return None


class ImagesError(RuntimeError):
    """The sandbox's registry, engine or base image could not be set up (the message says why)."""


class SandboxImages:
    """The sandbox's registry, engine API and ready Python image, under ``home`` (see the module's doc)."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        self.port = 0
        self.build_seconds = 0.0  # what the last start spent getting the Python image into the registry
        self._gateway = LocalProvider(self.home / "gateway")  # (only its bridge and gateway: it launches nothing)
        self._processes: list[subprocess.Popen[bytes]] = []
        self._run: Path | None = None  # the engine's run state (a short path in the temporary folder)
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- what users and instances see --------------------------------------------------------------
    @property
    def host_address(self) -> str:
        """This host's address as the sandbox's instances reach it (and this host too)."""
        return self._gateway.host_address

    @property
    def registry(self) -> str:
        """The registry's ``host:port``, as the instances reach it."""
        return f"{self.host_address}:{self.port}"

    @property
    def image(self) -> str:
        """The ready Python image's full reference in the registry."""
        return f"{self.registry}/{IMAGE_NAME}:{self._python_key()}"

    @property
    def socket(self) -> Path:
        return self.home / "podman.sock"

    @property
    def warm(self) -> bool:
        """Whether the ready Python image is cached (a start builds nothing)."""
        return self._cached_registry().exists() and self.layers.exists()

    def exports(self) -> dict[str, str]:
        """What a shell (or a test) sets to build, push and pull with the sandbox's engine and registry."""
        return {
            "DOCKER_HOST": f"unix://{self.socket}",
            "PREFECT_REMOTE_SANDBOX_REGISTRY": self.registry,
            "PREFECT_REMOTE_SANDBOX_IMAGE": self.image,
            **self._config_env("host"),
        }

    def instance_env(self, warm: bool = False) -> dict[str, str]:
        """What the sandbox's instances' image sets for its engine: the same registry, insecure, and
        storage of the instance's own, empty; a ``warm`` image's (baked after a pull of the ready Python
        image, as an AMI for containers is) also reads that image's layers from a store shared read-only,
        so that it and images built from it pull only their own layers."""
        return self._config_env("instance-warm" if warm else "instance")

    def holds(self, image: str) -> bool:
        """Whether ``image`` names this sandbox's registry (as the instances or this host reach it)."""
        return image.split("/", 1)[0] in {self.registry, f"127.0.0.1:{self.port}"}

    def has(self, image: str) -> bool:
        """Whether the registry holds ``image`` (a reference into it), as a pull would find it."""
        repository, _, reference = image.split("/", 1)[1].partition("@")
        if reference:  # (a digest pins it; a tag beside it is ignored, as by a pull)
            repository = repository.rpartition(":")[0] if ":" in repository.rsplit("/", 1)[-1] else repository
        else:
            name, _, tag = repository.rpartition(":") if ":" in repository.rsplit("/", 1)[-1] else (repository, "", "latest")
            repository, reference = name, tag
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v2/{repository}/manifests/{reference}", method="HEAD")
        request.add_header("Accept", ", ".join(MANIFEST_TYPES))
        try:
            with urllib.request.urlopen(request, timeout=10):
                return True
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise

    @staticmethod
    def run_script(image: str, command: list[str], args: list[str], folders: list[str]) -> str:
        """A boot script that runs ``image`` with the instance's engine as a container runtime does: its
        ``command`` in place of the image's entrypoint and ``args`` of its command (either empty: the
        image's own), with every variable of the instance's environment but PATH passed by name (no value
        in ``ps``), the instance's network, and ``folders`` (the sandbox's shared folders) mounted."""
        mounts = [f"--volume={folder}:{folder}" for folder in folders]
        entrypoint = [f"--entrypoint={json.dumps(command)}"] if command else []
        return (
            'names=(); for name in $(compgen -e); do case "$name" in PATH|PWD|OLDPWD|SHLVL|_) ;; *) names+=(--env "$name") ;; esac; done\n'
            f'exec podman run --rm --quiet --network=host "${{names[@]}}" {shlex.join([*mounts, *entrypoint, image, *args])}\n'
        )

    def _config_env(self, side: str) -> dict[str, str]:
        folder = self.home / side
        return {
            "CONTAINERS_CONF": str(folder / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(folder / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf"),
        }

    # -- life cycle ---------------------------------------------------------------------------------
    def __enter__(self) -> SandboxImages:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()

    def start(self) -> str:
        """Starts the registry and the engine's API, and puts the ready Python image in the registry
        (from the cache when warm); returns the registry's ``host:port``. A failure stops what started."""
        unavailable = images_unavailable()
        if unavailable:
            raise ImagesError(unavailable)
        self.home.mkdir(parents=True, exist_ok=True)
        self._run = Path(tempfile.mkdtemp(prefix="prsi-"))  # (podman refuses a run folder's path over 50 characters)
        try:
            self.port = free_port()
            self._gateway.reachable_url(f"http://127.0.0.1:{self.port}")  # (the forward's address, before configs name it)
            self._keeper = threading.Thread(target=self._keep_forward, name="sandbox-registry-forward", daemon=True)
            self._keeper.start()
            self._write_configs()
            started = time.monotonic()
            warm = self.warm
            if warm:
                _copy_registry(self._cached_registry(), self.home / "registry")
            self._start_registry()
            self._start_engine_api()
            if not warm:
                self._build_python_image()
                self._pull_layers()
            self.build_seconds = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self.registry

    def stop(self) -> None:
        """Stops the engine's API and the registry (by PID); the home folder keeps their files."""
        self._stopping.set()
        if self._keeper is not None:
            self._keeper.join()
        for process in reversed(self._processes):
            stop_process_group(process, grace=10)
        self._processes.clear()
        _unmount_under(self.home)  # the storage driver's own mounts (layers of builds that failed)
        if self._run is not None:
            _unmount_under(self._run)
            shutil.rmtree(self._run, ignore_errors=True)
            self._run = None

    def _keep_forward(self) -> None:
        """Keeps the gateway's forward of the registry up while the images serve (it lapses when unused)."""
        while not self._stopping.wait(KEEP_FORWARD_EVERY):
            try:
                self._gateway.reachable_url(f"http://127.0.0.1:{self.port}")
            except Exception:  # the next round tries again
                pass

    # -- configuration --------------------------------------------------------------------------------
    def _write_configs(self) -> None:
        """The engine's configuration for this host's API and for the instances: the same registry and
        runtime, each with its own storage (an instance's on its own disk, its run state on its /run)."""
        ulimits = self._ulimits()
        insecure = sorted({self.registry, f"127.0.0.1:{self.port}"})
        # What this host trusts (its certificate authorities), which its instances' containers trust too:
        # on this host, reaching the package index may depend on them.
        trusted = sorted({path for path in host_trust_env().values() if Path(path).exists()})
        sides = {
            # This host's API: everything under the sandbox's home, file locks (no shared-memory lock
            # segment that another store on this host would share).
            "host": {"graphroot": self.home / "storage", "runroot": self._run, "tmp_dir": self._run / "libpod"},
            # An instance's: on its own disk, in a folder this host's root (the instances' image) lacks, so
            # that it starts empty, as a new VM's engine (the usual /var/lib/containers is this host's
            # own store, seen through the image); its run state on its own /run (a tmpfs).
            "instance": {"graphroot": Path(INSTANCE_STORAGE), "runroot": Path("/run/containers/storage"), "tmp_dir": None},
        }
        sides["instance-warm"] = {**sides["instance"], "layers": self.layers}
        for side, paths in sides.items():
            folder = self.home / side
            folder.mkdir(parents=True, exist_ok=True)
            engine = ['runtime = "runc"', 'cgroup_manager = "cgroupfs"', 'events_logger = "file"']
            containers = [f"default_ulimits = {json.dumps(ulimits)}"]
            if side.startswith("instance") and trusted:
                containers.append(f"volumes = {json.dumps([f'{path}:{path}:ro' for path in trusted])}")
            if paths["tmp_dir"] is not None:
                engine += [f'tmp_dir = "{paths["tmp_dir"]}"', 'lock_type = "file"']
            (folder / "containers.conf").write_text(
                "# prefect-remote sandbox: the engine's configuration (podman, through CONTAINERS_CONF)\n"
                "[containers]\n" + "\n".join(containers) + "\n\n[engine]\n" + "\n".join(engine) + "\n"
            )
            (folder / "registries.conf").write_text(
                "# prefect-remote sandbox: its registry speaks plain HTTP; short names are not searched\n"
                "unqualified-search-registries = []\n"
                + "".join(f'\n[[registry]]\nlocation = "{location}"\ninsecure = true\n' for location in insecure)
            )
            (folder / "storage.conf").write_text(
                f'[storage]\ndriver = "overlay"\ngraphroot = "{paths["graphroot"]}"\nrunroot = "{paths["runroot"]}"\n'
                + (f'\n[storage.options]\nadditionalimagestores = ["{paths["layers"]}"]\n' if "layers" in paths else "")
            )

    @staticmethod
    def _ulimits() -> list[str]:
        """Containers' default open files and processes: this host's hard limits, processes no more than
        the engine's container monitor (conmon) holds (podman's own default, the kernel's maximum, is
        refused where these are lower)."""
        nofile, nproc = (resource.getrlimit(limit)[1] for limit in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC))
        nofile, nproc = _bounded(nofile, NOFILE_MAX), _bounded(nproc, NPROC_MAX)
        return [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]

    def _engine_env(self) -> dict[str, str]:
        return {**os.environ, **self._config_env("host")}

    # -- processes ----------------------------------------------------------------------------------------
    def _start_registry(self) -> None:
        config = self.home / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.home / 'registry'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        process = self._spawn(["docker-registry", "serve", str(config)], "registry.log")
        _wait_until(lambda: _http_ok(f"http://127.0.0.1:{self.port}/v2/"), process, "the registry", self.home / "registry.log")

    def _start_engine_api(self) -> None:
        self.socket.unlink(missing_ok=True)
        command = ["podman", "system", "service", "--time=0", f"unix://{self.socket}"]
        process = self._spawn(command, "podman.log", env=self._engine_env())
        _wait_until(self.socket.exists, process, "podman's Docker-compatible API", self.home / "podman.log")

    def _spawn(self, command: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.home / log, "ab") as output:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=env, start_new_session=True)
        self._processes.append(process)
        return process

    def _podman(self, *arguments: str) -> str:
        result = subprocess.run(["podman", *arguments], capture_output=True, text=True, env=self._engine_env())
        if result.returncode != 0:
            raise ImagesError(f"podman {arguments[0]} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
        return result.stdout

    # -- the ready Python image ---------------------------------------------------------------------------
    @functools.cached_property
    def _requirements(self) -> str:
        """This project's locked dependencies (not the project itself: its code changes more often than
        its lock), pinned: from uv.lock in a source checkout, else as installed in this environment."""
        import uv

        root = Path(__file__).resolve().parents[2]
        if (root / "uv.lock").exists() and (root / "pyproject.toml").exists():
            command = [
                uv.find_uv_bin(),
                "export",
                "--frozen",
                "--no-dev",
                "--no-emit-project",
                "--no-hashes",
                "--extra",
                "aws",
                "--extra",
                "gcp",
            ]
            result = subprocess.run([*command, "--project", str(root), "--quiet"], capture_output=True, text=True)
        else:
            import sys

            result = subprocess.run(
                [uv.find_uv_bin(), "pip", "freeze", "--exclude-editable", "--python", sys.executable], capture_output=True, text=True
            )
        if result.returncode != 0:
            raise ImagesError(f"could not list this project's requirements for the sandbox's Python image: {result.stderr.strip()}")
        return "".join(line + "\n" for line in result.stdout.splitlines() if line and not line.startswith(("#", "-e", "prefect-remote")))

    def _base_key(self) -> str:
        return _digest(BASE_SUITE, *BASE_PACKAGES)

    def _python_key(self) -> str:
        return _digest(self._base_key(), CONTAINERFILE, COMPRESSION, self._requirements)

    def _cached_registry(self) -> Path:
        return CACHE / f"python-{self._python_key()}" / "registry"

    @property
    def layers(self) -> Path:
        """The ready Python image pulled into a store of its own, which warm instances read."""
        return CACHE / f"python-{self._python_key()}" / "layers"

    def _pull_layers(self) -> None:
        with file_lock(CACHE / "python.lock"):
            if self.layers.exists():  # pulled meanwhile by another session
                return
            partial = self.layers.with_name("layers.partial")
            shutil.rmtree(partial, ignore_errors=True)
            try:
                pulled = f"127.0.0.1:{self.port}/{IMAGE_NAME}:{self._python_key()}"
                self._podman("--root", str(partial), "--runroot", str(self._run / "layers"), "pull", "--quiet", pulled)
            finally:
                _unmount_under(partial)
            partial.rename(self.layers)

    def _base_rootfs(self) -> Path:
        """The Debian root file system (a tar), built by mmdebstrap once per package list."""
        tar = CACHE / f"rootfs-{BASE_SUITE}-{self._base_key()}.tar"
        with file_lock(CACHE / "rootfs.lock"):
            if not tar.exists():
                partial = tar.with_suffix(".partial")
                command = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "--format=tar"]
                result = subprocess.run([*command, BASE_SUITE, str(partial)], capture_output=True, text=True)
                if result.returncode != 0:
                    partial.unlink(missing_ok=True)
                    raise ImagesError(f"mmdebstrap could not build the sandbox's base root file system: {result.stderr.strip()[-2000:]}")
                partial.rename(tar)
        return tar

    def _build_python_image(self) -> None:
        """The cold path: root file system -> ``podman import`` -> the Python image -> pushed to the
        registry, whose storage is then kept in the cache for the next start."""
        import uv

        from prefect_remote.software.rebuild import uv_cache_dir

        with file_lock(CACHE / "python.lock"):
            if self._cached_registry().exists():  # built meanwhile by another session
                _copy_registry(self._cached_registry(), self.home / "registry")
                return
            base = f"localhost/prefect-remote/debian:{self._base_key()}"
            self._podman("import", "--quiet", str(self._base_rootfs()), base)
            with tempfile.TemporaryDirectory(dir=self.home) as context:
                shutil.copy(uv.find_uv_bin(), Path(context, "uv"))
                Path(context, "requirements.txt").write_text(self._requirements)
                if os.environ.get("SSL_CERT_FILE") and Path(os.environ["SSL_CERT_FILE"]).is_file():
                    shutil.copy(os.environ["SSL_CERT_FILE"], Path(context, "ca.crt"))
                Path(context, "Containerfile").write_text(CONTAINERFILE.format(base=base))
                cache = uv_cache_dir() or str(self.home / "uv-cache")
                pushed = f"127.0.0.1:{self.port}/{IMAGE_NAME}:{self._python_key()}"
                ulimits = [f"--ulimit={limit}" for limit in self._ulimits()]
                self._podman("build", "--quiet", "--network=host", *ulimits, f"--volume={cache}:/uv-cache", "--tag", pushed, context)
            self._podman("push", "--quiet", f"--compression-format={COMPRESSION}", pushed)
            partial = self._cached_registry().with_name("registry.partial")
            shutil.rmtree(partial, ignore_errors=True)
            _copy_registry(self.home / "registry", partial)
            partial.rename(self._cached_registry())


def _copy_registry(source: Path, target: Path) -> None:
    """Copies a registry's storage; its blobs, which the registry never writes again (content-addressed,
    moved in whole from its uploads), as hard links where the two folders share a file system."""

    def link_or_copy(src: str, dst: str) -> None:
        if f"{os.sep}blobs{os.sep}" in src:
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, dirs_exist_ok=True)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _bounded(limit: int, most: int) -> int:
    return most if limit == resource.RLIM_INFINITY else min(limit, most)


def _unmount_under(folder: Path) -> None:
    """Unmounts every mount point under ``folder``, deepest first."""
    prefix = f"{folder.resolve()}/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_until(ready, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Waits for ``ready()``; a ``process`` that exits first, or a wait past START_TIMEOUT, fails with its log's end."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            exited = process.returncode is not None
            problem = f"exited with code {process.returncode}" if exited else f"did not start within {START_TIMEOUT:.0f} s"
            raise ImagesError(f"{what} {problem}; its log ends: {tail}")
        time.sleep(0.05)
