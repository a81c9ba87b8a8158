"""What a cluster is asked to be, validated before anything starts: worker spec, worker count,
threads, lifetime and provider. Shared by :class:`RemoteCluster`, ``prefect_remote.function`` and
:class:`RemoteTaskRunner`, so each rejects bad input the same way.

>>> options = ClusterOptions.build(cpu=2, n_workers=[0, 20], keepalive="5 minutes")
>>> options.minimum, options.maximum, options.adaptive, options.spec.keepalive
(0, 20, True, 300.0)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import inspect
import json
import os
import re
import secrets
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from prefect_remote.atomic_files import create_once
from prefect_remote.errors import RemoteError
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers import get_provider, require
from prefect_remote.providers.base import Provider
from prefect_remote.spec import MachineSpec, SpotPolicy, as_spec, image_choice

DEFAULT_N_WORKERS = (0, 500)
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
F = TypeVar("F", bound=Callable[..., Any])


class ClusterOptionError(RemoteError, ValueError):
    """A cluster argument is invalid; the message says which and what is accepted."""


class ClusterArguments(TypedDict, total=False):
    """The keyword arguments that say what a cluster is: its workers' machine spec (see
    :class:`~prefect_remote.spec.MachineSpec`), their number and threads, its lifetime, provider and
    software. ``prefect_remote.function``, :class:`~prefect_remote.cluster.remote.RemoteCluster`
    and :class:`~prefect_remote.task_runner.RemoteTaskRunner` take them, and :meth:`ClusterOptions.build`
    validates them; this is the one list of them (defaults: :data:`CLUSTER_DEFAULTS`, else None)."""

    software: str | None
    """A software environment (``senv-…``) the workers run; with none, see ``package_sync``."""
    image: str | None
    """A container image the cluster's scheduler and workers run in (Prefect's name), such as
    ``"ghcr.io/org/app:1"``: it carries Python on ``PATH`` as ``python``, ``distributed`` at the
    client's version and the code its tasks import (the machine's agent mounts prefect-remote's own
    code into it). A different ``distributed`` or Python minor version is refused before any worker
    starts (:class:`~prefect_remote.cluster.remote.ClusterVersionError`). Not with ``software``."""
    container: str | None
    """The older name of ``image``; give only one."""
    vm_type: str | list[str] | None
    """An instance type (``"m6i.xlarge"``), or a list to choose the cheapest of, instead of ``cpu``/``memory``."""
    cpu: int | list[int] | None
    """CPUs per worker machine: a number or a ``[min, max]`` range."""
    memory: int | str | list[int | str] | None
    """Memory per worker machine: ``"16 GiB"``, ``"512 GB"``, bytes, or a ``[min, max]`` range."""
    gpu: bool | int | str | None
    """``True``, a number of GPUs, a GPU type (``"t4"``), or ``{"count": 2, "type": "a100"}``."""
    region: str | None
    """The provider's region (``"us-east-2"``, ``"europe-west1"``); its default when not given."""
    arm: bool | None
    """ARM (aarch64) machines instead of x86_64."""
    disk_size: int | str | None
    """The boot disk: GiB as a number, or a size such as ``"200 GiB"``."""
    spot_policy: SpotPolicy | None
    """``"on-demand"`` (the default), ``"spot"``, or ``"spot_with_fallback"`` (on demand when no spot capacity)."""
    idle_timeout: str | float | None
    """How long the cluster may go without work before it ends (``"2 hours"``, seconds); None: never."""
    keepalive: str | float
    """How long the cluster outlives its last client, warm for the next process to attach to."""
    n_workers: int | list[int] | None
    """A fixed number of workers, or ``[min, max]`` bounds for adaptive scaling (default ``[0, 500]``)."""
    threads_per_worker: int | None
    """Threads per worker; None or -1: one per CPU of its machine."""
    environ: dict[str, Any] | None
    """Environment variables for the workers; values wrapped in ``pydantic.SecretStr`` are secrets,
    which travel through the provider's secret channel only."""
    package_sync_ignore: list[str] | None
    """Distributions automatic package sync leaves out, such as ``["torch", "jupyterlab*"]``."""
    tags: dict[str, str] | None
    """Tags (labels) for every machine of the cluster."""
    allow_ingress_from: str | None
    """Who may reach the scheduler from outside its network: ``"me"``, ``"everyone"``, ``"none"`` or a CIDR."""
    provider: str | Provider | None
    """A provider's name (or a :class:`~prefect_remote.providers.base.Provider`); default: the
    ``PREFECT_REMOTE_PROVIDER`` setting (``local``)."""
    package_sync: bool | None
    """Capture this environment for the workers: True always, False never, None (default) when the
    provider's machines do not share this interpreter (every cloud)."""


CLUSTER_DEFAULTS: ClusterArguments = {"keepalive": "30 seconds", "idle_timeout": "24 hours"}
"""The :class:`ClusterArguments` whose default is not None."""


def takes_cluster_arguments(*, bind: bool = True, **defaults: Any) -> Callable[[F], F]:
    """Lists :class:`ClusterArguments` in the decorated function's signature in place of its
    ``**arguments: Unpack[ClusterArguments]``, each a keyword-only parameter with its default from
    ``defaults``, then :data:`CLUSTER_DEFAULTS`, else None: the signature ``help()`` and ``inspect``
    show (type checkers and IDEs read the ``Unpack`` itself).

    With ``bind``, calls are bound to that signature, as a function's own would be: an unknown keyword
    is a ``TypeError``, and the arguments left out get those defaults. Without, the call goes on as
    it is (unknown names reach :meth:`ClusterOptions.build`, which says what to use instead)."""

    def decorate(func: F) -> F:
        own = inspect.signature(func, eval_str=True)
        chosen: dict[str, Any] = {**CLUSTER_DEFAULTS, **defaults}
        keywords = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=chosen.get(name), annotation=annotation)
            for name, annotation in typing.get_type_hints(ClusterArguments).items()
        ]
        parameters = [parameter for parameter in own.parameters.values() if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
        signature = own.replace(parameters=[*parameters, *keywords])
        if not bind:
            func.__signature__ = signature  # type: ignore[attr-defined]
            return func

        @functools.wraps(func)
        def bound(*args: Any, **kwargs: Any) -> Any:
            try:
                call = signature.bind(*args, **kwargs)
            except TypeError as error:  # worded as Python words it: "f() got an unexpected keyword argument 'x'"
                raise TypeError(f"{func.__name__}() {error}") from None
            call.apply_defaults()
            return func(*call.args, **call.kwargs)

        bound.__signature__ = signature  # type: ignore[attr-defined]
        return bound  # type: ignore[return-value]

    return decorate


def parse_n_workers(value: Any) -> tuple[int, int, bool]:
    """``(minimum, maximum, adaptive)`` from ``n_workers``: an int (fixed) or ``[min, max]`` (adaptive)."""
    if value is None:
        return (*DEFAULT_N_WORKERS, True)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ClusterOptionError(f"n_workers={value!r}: expected 0 or more workers, or [min, max] such as [0, 20]")
        return value, value, False
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        low, high = value
        if low < 0 or high < 1:
            raise ClusterOptionError(f"n_workers={list(value)!r}: expected 0 <= min <= max and max >= 1, such as [0, 20]")
        if low > high:
            raise ClusterOptionError(
                f"n_workers={list(value)!r}: the minimum ({low}) is larger than the maximum ({high}); expected [min, max] such as "
                f"[{high}, {low}]"
            )
        return low, high, True
    raise ClusterOptionError(
        f"n_workers={value!r}: expected a whole number of workers (e.g. 10) or [min, max] bounds for adaptive scaling (e.g. [0, 20])"
    )


def check_package_sync(package_sync: Any, package_sync_ignore: Any, software: str | None, image: str | None = None) -> tuple[str, ...]:
    """Validates the package sync arguments; returns ``package_sync_ignore`` as a tuple of names.
    With a named ``software`` environment or an ``image``, nothing is synced: asking for it is refused."""
    if package_sync is not None and not isinstance(package_sync, bool):
        raise ClusterOptionError(
            f"package_sync={package_sync!r}: expected True (always capture this environment), False (never) or None (when the "
            "provider's machines need it)"
        )
    if package_sync_ignore is None:
        ignore: tuple[str, ...] = ()
    elif isinstance(package_sync_ignore, (list, tuple)) and all(isinstance(name, str) and name.strip() for name in package_sync_ignore):
        ignore = tuple(name.strip() for name in package_sync_ignore)
    else:
        raise ClusterOptionError(
            f"package_sync_ignore={package_sync_ignore!r}: expected a list of distribution names, such as ['torch', 'jupyterlab*']"
        )
    named = f"software={software!r}" if software is not None else f"image={image!r}" if image is not None else None
    if named and (package_sync or ignore):
        given = "package_sync=True" if package_sync else f"package_sync_ignore={list(ignore)!r}"
        what = "a named environment" if software is not None else "an image"
        raise ClusterOptionError(f"{named} and {given}: {what} is used as it is; drop one of them")
    return ignore


def launcher_python_path() -> list[str]:
    """The folders user code imports from (not the interpreter's own): machines that run the launcher's
    interpreter get them on ``PYTHONPATH`` so functions defined in local modules unpickle there."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    found = []
    for entry in sys.path:
        folder = os.path.realpath(entry or os.getcwd())
        if os.path.isdir(folder) and not any(folder == p or folder.startswith(p + os.sep) for p in prefixes) and folder not in found:
            found.append(folder)
    return found


def _name_key(home: Path) -> bytes:
    """This home's key for the secret part of cluster names: made once, owner-only, and put in place
    whole (a link made only if none is there), so that concurrent first uses agree on it."""
    path = home / "clusters" / "name.key"
    if not path.exists():
        create_once(path, secrets.token_bytes(32), make_folder=True)  # another process's, if it was first: that one is the key
    return path.read_bytes()


@dataclass(frozen=True)
class ClusterOptions:
    """A validated cluster request. ``spec`` is the worker machines' spec and carries ``keepalive``
    and ``idle_timeout``, which the scheduler's machine enforces. ``package_sync`` and
    ``package_sync_ignore`` say whether and how :meth:`with_software` captures this environment."""

    spec: MachineSpec
    provider: Provider
    minimum: int
    maximum: int
    adaptive: bool
    threads_per_worker: int | None
    name: str | None
    start_workers: int
    package_sync: bool | None = None
    package_sync_ignore: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        name: str | None = None,
        start_workers: int | None = None,
        spec: MachineSpec | dict[str, Any] | None = None,
        **arguments: Unpack[ClusterArguments],
    ) -> ClusterOptions:
        """Validates every argument (raising :class:`ClusterOptionError`, ``ValueError`` subclasses, or
        :class:`~prefect_remote.errors.ProviderNotFound`) without starting anything, the provider's
        capabilities included. Nothing is captured yet: see :meth:`with_software`.

        The :class:`ClusterArguments` that are not the machine's spec are the cluster's own; the rest
        (and any unknown name, which the spec refuses saying what it accepts) go to the workers' spec,
        over ``spec`` when given."""
        spec_fields: dict[str, Any] = {**CLUSTER_DEFAULTS, **arguments}
        n_workers = spec_fields.pop("n_workers", None)
        threads_per_worker = spec_fields.pop("threads_per_worker", None)
        provider = spec_fields.pop("provider", None)
        image = image_choice(spec_fields.pop("image", None), spec_fields.pop("container", None))
        package_sync = spec_fields.pop("package_sync", None)
        package_sync_ignore = spec_fields.pop("package_sync_ignore", None)
        keepalive = spec_fields["keepalive"]
        minimum, maximum, adaptive = parse_n_workers(n_workers)
        if threads_per_worker is not None and (
            not isinstance(threads_per_worker, int)
            or isinstance(threads_per_worker, bool)
            or threads_per_worker == 0
            or threads_per_worker < -1
        ):
            raise ClusterOptionError(
                f"threads_per_worker={threads_per_worker!r}: expected a whole number of threads (1 or more), or -1 for one per CPU"
            )
        if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
            raise ClusterOptionError(
                f"name={name!r}: expected lowercase letters, digits and '-' (up to 63 characters), such as 'nightly-etl'"
            )
        if keepalive is None:
            raise ClusterOptionError(
                "keepalive=None: a cluster needs a keepalive (how long it outlives its last client), e.g. '30 seconds'"
            )
        if start_workers is not None and (not isinstance(start_workers, int) or start_workers < 0):
            raise ClusterOptionError(f"start_workers={start_workers!r}: expected 0 or more workers")
        if image is not None:
            spec_fields["image"] = image
        # A cluster's machines accept connections from each other (workers dial the scheduler and their peers).
        machine_spec = as_spec(spec, **spec_fields).model_copy(update={"inbound": True})
        ignore = check_package_sync(package_sync, package_sync_ignore, machine_spec.software, machine_spec.image)
        if machine_spec.timeout:
            raise ClusterOptionError("timeout: a cluster's machines have no maximum run time; use idle_timeout and keepalive")
        chosen = provider if isinstance(provider, Provider) else get_provider(provider)
        require(chosen, "inbound_connections", "a Dask cluster needs (its workers connect to its scheduler)")
        require(chosen, "terminate_one", "a Dask cluster needs to scale down")
        if image is not None:
            require(chosen, "containers", f"image={image!r} needs")
        chosen.check_spec(machine_spec)  # a spec no machine can meet fails now, not at the first scale-up
        chosen.choose_instance_type(machine_spec)
        start = minimum if start_workers is None else min(max(start_workers, minimum), maximum)
        return cls(machine_spec, chosen, minimum, maximum, adaptive, threads_per_worker, name, start, package_sync, ignore)

    @property
    def syncs_packages(self) -> bool:
        """Whether the workers run this environment captured by package sync: no ``software`` or ``image`` named,
        and ``package_sync=True``, or (by default) a provider whose machines do not share this host's
        interpreter (``Provider.shares_host_software``)."""
        if self.spec.software is not None or self.spec.image is not None or self.package_sync is False:
            return False
        return bool(self.package_sync) or not self.provider.shares_host_software

    def with_software(self) -> ClusterOptions:
        """These options with ``spec.software`` naming what the workers run: when :attr:`syncs_packages`,
        this environment (and the code under the working directory) captured by automatic package
        sync, without ``package_sync_ignore``; otherwise these options as they are. The capture is
        made once per process and found again by fingerprint in later ones
        (:mod:`prefect_remote.software.auto`)."""
        return self._synced if self.syncs_packages else self

    @functools.cached_property
    def _synced(self) -> ClusterOptions:
        from prefect_remote.software.auto import synced_environment

        try:
            env = synced_environment(ignore=self.package_sync_ignore, arm=self.spec.arm, gpu=self.spec.gpu is not None)
        except Exception as error:
            why = "package_sync=True" if self.package_sync else f"provider {self.provider.name!r} machines do not share this interpreter"
            error.add_note(
                f"(automatic package sync: {why}. Leave packages out with package_sync_ignore=[...], or name an "
                "environment built with `prefect-remote env build` as software=...)"
            )
            raise
        return dataclasses.replace(self, spec=self.spec.model_copy(update={"software": env.name}))

    @functools.cached_property
    def software_identity(self) -> str:
        """What the workers run: an image, a package-synced environment, or this interpreter and its import path."""
        if self.spec.image or self.spec.software:
            return self.spec.image or self.spec.software
        return f"{sys.executable}:{os.pathsep.join(launcher_python_path())}"

    @functools.cached_property  # read on every call of a function: hashed once
    def cluster_name(self) -> str:
        """``name``, or one derived from the spec and software environment: the same request made from
        another process finds the same cluster while it is warm. On a machine (a flow run's), the
        machine is part of it: a cluster's credentials live in its creator's home, which no other
        machine shares, so each machine (each flow run) has its own cluster. So are this user, host
        and home (a teammate's identical request gets a cluster of its own, not a 30 s wait and a
        refusal), and ``environ``'s values: public ones as they are, secret ones keyed with this
        home's own key (the name is a tag anyone listing machines reads)."""
        if self.name:
            return self.name
        from prefect_remote.lease import default_user
        from prefect_remote.settings import get_settings

        home = get_settings().home
        shape = self.spec.model_dump(mode="json", exclude={"keepalive", "idle_timeout", "environ"})
        shape["environ"] = self.spec.public_environ
        hidden = json.dumps(sorted(self.spec.secret_environ.items())).encode()
        shape["secret_environ"] = hmac.new(_name_key(home), hidden, hashlib.sha256).hexdigest()
        identity = {"spec": shape, "provider": self.provider.name, "threads": self.threads_per_worker, "software": self.software_identity}
        identity["creator"] = f"{default_user()}:{home}"
        if machine := os.environ.get(MACHINE_ID_ENV):
            identity["machine"] = machine
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        return f"prefect-remote-{digest}"

    def nthreads(self, cpu: int) -> int:
        """Threads per worker on a machine with ``cpu`` CPUs: ``threads_per_worker``, or one per CPU."""
        return cpu if self.threads_per_worker in (None, -1) else self.threads_per_worker
